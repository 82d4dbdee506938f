"""`make run`'s supervisor: web, worker (with beat) and the simulated devices.

Each child runs in its own process group, so nothing it forks can outlive it
(Celery's prefork pool and embedded beat included). Ctrl-C or SIGTERM to this
process stops every child: SIGTERM to its leader, then SIGKILL to the whole
group after `--grace-s`. A child that dies takes the others down, so
`make run` never leaves a half-running platform. The children's pids are kept
in EDGEFLEET_VAR_DIR/run.pids: a second start first stops any stray group left
by a run that was itself killed with SIGKILL.

    python -m fleet.devrun --host 127.0.0.1 --port 8000 --devices 5 --token T
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def var_dir() -> Path:
    path = Path(os.environ.get("EDGEFLEET_VAR_DIR") or ROOT / "var")
    path.mkdir(parents=True, exist_ok=True)
    return path


def commands(args) -> dict[str, list[str]]:
    from fleet.celery import worker_queues

    py, var = sys.executable, var_dir()
    # + the training queue where the train extra is installed
    worker = ["-m", "celery", "-A", "fleet", "worker", "-B", "-Q", worker_queues(),
              "--loglevel", "INFO"]  # fmt: skip
    cmds = {
        "worker": [
            py,
            *worker,
            "--concurrency",
            str(args.concurrency),
            "-s",
            str(var / "celerybeat-schedule"),
        ],
        "web": [py, "manage.py", "runserver", f"{args.host}:{args.port}", "--noreload"],
    }
    if args.devices > 0 and args.token:
        cmds["devices"] = [
            py, "-m", "devices.agent.simulate", "--server", f"http://{args.host}:{args.port}",
            "--enrollment-token", args.token, "--devices", str(args.devices),
            "--state-file", str(var / "sim-fleet.json"), "--uid-prefix", "demo",
            "--preinstalled", args.preinstalled, "--hardware-profile", args.hardware_profile,
            "--fault", "bad-variant", "--bad-variant", "slow-demo",
            # the factory model has no manifest estimate: the digits CNN's fp32 p95 there
            "--base-latency-ms", str(args.base_latency_ms), *args.sim_args,
        ]  # fmt: skip
        # Once the devices enrolled, the demo rollout (exits when done; a no-op later on).
        cmds["rollout"] = [py, "manage.py", "demo_rollout", "--devices", str(args.devices)]
    return cmds


ONE_SHOT = {"rollout"}  # children that may end without stopping the run


def alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still exists (a zombie counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_groups(pgids: list[int], grace_s: float, children=()) -> None:
    """SIGTERM each group's leader, SIGKILL what is left after `grace_s`.

    `children`: our own Popen leaders. They must be reaped while waiting: an exited
    but unreaped leader is a zombie, and a zombie keeps its process group "alive" for
    killpg(pgid, 0) -- the wait then always ran into the SIGKILL after the full grace.
    """
    # SIGTERM to each group's leader only: Celery's main process stops its pool and
    # beat itself; a pool child killed under it first leaves it waiting on the corpse.
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        for child in children:
            child.poll()
        if not any(alive(p) for p in pgids):
            return
        time.sleep(0.1)
    left = [p for p in pgids if alive(p)]
    print(
        f"devrun: {len(left)} process group(s) still running after {grace_s:g} s; killing",
        flush=True,
    )
    for pgid in left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def stop_strays(pid_file: Path, grace_s: float) -> list[int]:
    """Stop the process groups a previous run recorded and left behind."""
    try:
        recorded = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return []
    strays = [int(p) for p in recorded.get("pgids", []) if alive(int(p))]
    if strays:
        print(f"devrun: stopping {len(strays)} process group(s) left by an earlier run", flush=True)
        stop_groups(strays, grace_s)
    pid_file.unlink(missing_ok=True)
    return strays


def run(args) -> int:
    pid_file = var_dir() / "run.pids"
    stop_strays(pid_file, args.grace_s)
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: dict[str, subprocess.Popen] = {}
    for name, cmd in commands(args).items():
        children[name] = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        tmp = pid_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"supervisor": os.getpid(), "pgids": [c.pid for c in children.values()]})
        )
        tmp.replace(pid_file)
    code = 0
    while not stopping:
        ended = [n for n, c in children.items() if c.poll() is not None and n not in ONE_SHOT]
        if ended:
            print(f"devrun: {', '.join(ended)} exited; stopping the rest", flush=True)
            code = 1
            break
        time.sleep(0.2)
    stop_groups([c.pid for c in children.values()], args.grace_s, children.values())
    for child in children.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    pid_file.unlink(missing_ok=True)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fleet.devrun", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--token", default="", help="enrollment token of the demo group")
    p.add_argument("--preinstalled", default="digits-cnn:1")
    p.add_argument(
        "--base-latency-ms",
        type=float,
        default=0.08,
        help="latency of the preinstalled (factory) model on the simulated devices",
    )
    p.add_argument(
        "--hardware-profile",
        default="x86-gateway-1c",
        help="the simulated devices' profile (the demo job measures on this one)",
    )
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument(
        "--grace-s",
        type=float,
        # the worker's warm shutdown alone takes ~10 s on a loaded 2-core machine
        default=30.0,
        help="after SIGTERM, SIGKILL what still runs after this long",
    )
    p.add_argument("sim_args", nargs="*", help="after --: extra simulator arguments")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
