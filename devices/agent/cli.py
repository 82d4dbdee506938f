"""`edgefleet-agent`: enroll this device, run the agent, show its state.

edgefleet-agent enroll --server https://fleet.example.com --token ENROLLMENT_TOKEN
edgefleet-agent run [--once]
edgefleet-agent status
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from datetime import UTC, datetime

from . import __version__
from .client import Client, Unreachable
from .state import DEFAULT_DIR, State

ENROLL_PATH = "/api/v1/device/enroll"


def state_dir(args) -> str:
    return args.state_dir or os.environ.get("EDGEFLEET_AGENT_STATE_DIR") or DEFAULT_DIR


def enroll(args) -> int:
    from .runtime import hardware_facts

    state = State(state_dir(args)).ensure()
    if state.enrolled and not args.force:
        print(f"already enrolled as {state.uid}; use --force to enroll again", file=sys.stderr)
        return 1
    facts = hardware_facts(args.hardware_profile)
    if args.uid:
        facts["uid"] = args.uid
    if args.name:
        facts["name"] = args.name
    # `token` is what the devices app reads; `enrollment_token` names it unambiguously.
    body = {"token": args.token, "enrollment_token": args.token, "facts": facts}
    if args.name:
        body["name"] = args.name
    try:
        response = Client(args.server, timeout=30).post(ENROLL_PATH, body)
    except Unreachable as exc:
        print(f"cannot reach {args.server}: {exc}", file=sys.stderr)
        return 2
    if response.status not in (200, 201):
        print(
            f"enrollment refused: HTTP {response.status} {response.body[:300]!r}", file=sys.stderr
        )
        return 1
    try:
        answer = response.json() or {}
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        print("unexpected enrollment answer: not a JSON object", file=sys.stderr)
        return 1
    uid = answer.get("uid") or answer.get("device_id") or answer.get("device")
    token = answer.get("token") or answer.get("device_token")
    public = answer.get("server_public_key") or answer.get("public_key")
    if not (uid and token and public):
        print(f"unexpected enrollment answer: {sorted(answer)}", file=sys.stderr)
        return 1
    state.save_credential(str(uid), token)
    state.pin_key(public)
    state.save_config(
        {
            **state.config,
            "server": args.server.rstrip("/"),
            "uid": str(uid),
            "enrolled_key_id": answer.get("key_id"),
        }
    )
    print(json.dumps({"uid": uid, "state_dir": str(state.root)}))
    return 0


def run(args) -> int:
    from .agent import Agent, load_settings

    state = State(state_dir(args)).ensure()
    if not state.enrolled:
        print("not enrolled: run `edgefleet-agent enroll` first", file=sys.stderr)
        return 1
    settings = load_settings(args.config)
    logging.basicConfig(
        level=settings.get("log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    agent = Agent(state, settings)
    # systemd stops with SIGTERM: leave through `finally` (any stage is crash-safe anyway).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        agent.run(once=args.once)
    except KeyboardInterrupt:
        pass
    finally:
        agent.close()
    return 0


def status(args) -> int:
    from .freshness import Freshness

    state = State(state_dir(args))
    freshness = Freshness(state)
    slots = {}
    for name in state.slot_names():
        pointer = state.pointer(name) or {}
        slot = state.slot(name)
        slots[name] = {
            "active": pointer.get("active"),
            "version": pointer.get("version"),
            "sha256": ((pointer.get("variants") or {}).get(pointer.get("active")) or {}).get(
                "sha256"
            ),
            "previous_version": (pointer.get("previous") or {}).get("version"),
            "trusted_version": slot.get("trusted_version"),
            "result": slot.get("result"),
            "pending_version": (slot.get("pending") or {}).get("version"),
        }
    print(
        json.dumps(
            {
                "uid": state.uid,
                "server": state.config.get("server"),
                "enrolled": state.enrolled,
                "agent_version": __version__,
                "keys": [k["key_id"] for k in state.pinned_keys()],
                "slots": slots,
                "metadata": {
                    "fresh_until": freshness.record.get("expires_at"),
                    "stale_s": freshness.stale_s(datetime.now(UTC)),
                },
            },
            indent=2,
        )
    )
    return 0


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="edgefleet-agent", description="EdgeFleet device agent"
    )
    main_parser.add_argument("--version", action="version", version=__version__)
    sub = main_parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("enroll", help="enroll this device with an enrollment token")
    p.add_argument("--server", required=True)
    p.add_argument("--token", required=True, help="enrollment token from an admin")
    p.add_argument("--name")
    p.add_argument("--uid", help="device id to ask for (default: the server picks)")
    p.add_argument("--hardware-profile", help="hardware profile slug, e.g. rpi4")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=enroll)
    p = sub.add_parser("run", help="run the agent loop")
    p.add_argument("--once", action="store_true", help="one check-in and report, then exit")
    p.add_argument("--config", help="TOML or JSON settings (deploy/agent.example.toml)")
    p.set_defaults(func=run)
    p = sub.add_parser("status", help="print the device's state as JSON")
    p.set_defaults(func=status)
    for sp in sub.choices.values():
        sp.add_argument("--state-dir", help=f"default {DEFAULT_DIR} or $EDGEFLEET_AGENT_STATE_DIR")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
