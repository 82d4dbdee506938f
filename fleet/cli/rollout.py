"""`release create`, `deploy`, `status`, `logs`: from a compression job to the fleet."""

from __future__ import annotations

import time
import urllib.parse

from . import BAD_INPUT, MISSED, OK, TIMEOUT, CliError
from .output import dump_json, note, table

DEPLOYMENT_LIVE = {"draft", "scheduled", "running"}
GATE_FLAGS = (
    "max_failure_rate",
    "min_successful",
    "max_latency_ratio",
    "min_soak_s",
    "min_latency_samples",
    "max_confidence_drop",
)


def release_create(client, args) -> int:
    job = client.get(
        f"/api/v1/jobs/{args.from_job}/", not_found=f"unknown compression job {args.from_job}"
    )
    if job["status"] != "succeeded":
        raise CliError(
            f"job {job['id']} is {job['status']}; only a finished job's variants can be released",
            BAD_INPUT,
        )
    candidates = job.get("candidates") or []
    if args.recipe:
        candidate = next((c for c in candidates if c["recipe"] == args.recipe), None)
        if candidate is None or not candidate.get("version"):
            raise CliError(f"job {job['id']} has no stored variant {args.recipe!r}", BAD_INPUT)
    else:
        candidate = next((c for c in candidates if c.get("chosen")), None)
        if candidate is None:
            raise CliError(
                f"no variant of job {job['id']} meets its KPIs: nothing to release "
                "(or pick one with --recipe)",
                MISSED,
            )
    version = client.get(f"/api/v1/versions/{candidate['version']}/")
    name = args.name or (
        f"{version['model_name']} v{version['number']} ({candidate['recipe']}, job {job['id']})"
    )
    variant = {"name": "default", "model_version": version["id"]}
    if args.pin_profile and job.get("hardware_profile"):
        variant["hardware_profile"] = job["hardware_profile"]
    release = client.post(
        "/api/v1/releases/",
        {
            "name": name,
            "slot": args.slot,
            "notes": args.notes or f"From compression job {job['id']} ({candidate['recipe']}).",
            "variants": [variant],
        },
    )
    if args.json:
        dump_json(release)
    else:
        note(
            f"release {release['id']} {release['name']!r}: {version['model_name']} "
            f"v{version['number']}"
        )
        print(release["id"])
    return OK


def parse_phases(text: str) -> list[float]:
    try:
        phases = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise CliError(
            f"--phases: comma-separated percentages like 1,10,50,100, not {text!r}", BAD_INPUT
        ) from None
    if not phases:
        raise CliError("--phases: at least one percentage", BAD_INPUT)
    return [int(p) if p.is_integer() else p for p in phases]


def _gates(args) -> dict:
    gates = {}
    for name in GATE_FLAGS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if isinstance(value, str):  # --max-latency-ratio off / --max-confidence-drop off
            if value.lower() in ("off", "none"):
                gates[name] = None
                continue
            try:
                value = float(value)
            except ValueError:
                raise CliError(
                    f"--{name.replace('_', '-')}: a number or 'off', not {value!r}", BAD_INPUT
                ) from None
        gates[name] = value
    return gates


def deploy(client, args) -> int:
    target = {
        key: values
        for key, values in (("groups", args.group), ("tags", args.tag), ("devices", args.device))
        if values
    }
    if not target:
        raise CliError("say where to deploy: --group, --tag or --device", BAD_INPUT)
    body = {
        "release": args.release,
        "target": target,
        "phases": parse_phases(args.phases),
        "gates": _gates(args),
    }
    deployment = client.post("/api/v1/deployments/", body)
    note(
        f"deployment {deployment['id']} of {deployment['release_name']!r}: "
        f"{deployment['target_count']} devices in phases {deployment['phases']}"
    )
    if args.wait:
        deployment = follow_deployment(client, deployment, args.timeout)
    if args.json:
        dump_json(deployment)
    else:
        print(deployment["id"])
    return _deployment_code(deployment) if args.wait else OK


def follow_deployment(client, deployment: dict, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        state = (deployment["status"], deployment["current_phase"], _waiting(deployment))
        if state != seen:
            seen = state
            phases = deployment["phases"]
            note(
                f"deployment {deployment['id']}: {deployment['status']}, phase "
                f"{deployment['current_phase'] + 1}/{len(phases)} "
                f"({phases[deployment['current_phase']]} %)"
                f"{' — ' + state[2] if state[2] else ''}"
            )
        if deployment["status"] not in DEPLOYMENT_LIVE:
            return deployment
        if time.monotonic() > deadline:
            raise CliError(
                f"deployment {deployment['id']} still {deployment['status']} after "
                f"{timeout:.0f} s; it goes on on the server",
                TIMEOUT,
            )
        time.sleep(2.0)
        deployment = client.get(f"/api/v1/deployments/{deployment['id']}/")


def _waiting(deployment: dict) -> str:
    report = deployment.get("gate_report") or {}
    if report.get("verdict") == "wait" and report.get("phase") == deployment["current_phase"]:
        return "; ".join(report.get("reasons") or [])
    return ""


def _deployment_code(deployment: dict) -> int:
    if deployment["status"] == "completed":
        note(f"deployment {deployment['id']} completed")
        return OK
    reason = deployment.get("pause_reason") or deployment["status"]
    note(f"deployment {deployment['id']} {deployment['status']}: {reason}")
    return MISSED


def status(client, args) -> int:
    me = client.get("/api/v1/me/")
    counts = {
        s: client.get("/api/v1/devices/", {"status": s, "page_size": 1})["count"]
        for s in ("online", "offline")
    }
    deployments = client.get("/api/v1/deployments/", {"page_size": args.limit})["results"]
    if args.json:
        dump_json({"server": client.url, "user": me, "devices": counts, "deployments": deployments})
        return OK
    print(f"{client.url}  signed in as {me['username']} ({me['role'] or 'no role'})")
    print(f"devices: {counts['online']} online, {counts['offline']} offline")
    rows = [
        [
            d["id"],
            d["release_name"],
            d["status"],
            f"{d['current_phase'] + 1}/{len(d['phases'])}",
            d["target_count"],
            d.get("pause_reason") or "",
        ]
        for d in deployments
    ]
    if rows:
        table(["deployment", "release", "status", "phase", "devices", "reason"], rows)
    else:
        print("no deployments")
    return OK


def logs(client, args) -> int:
    uid = urllib.parse.quote(args.device, safe="")
    page = client.get(
        f"/api/v1/devices/{uid}/logs/",
        {"page_size": args.limit, "level": args.level},
        not_found=f"unknown device {args.device}",
    )
    lines = list(reversed(page.get("results", [])))  # the API answers newest first
    if args.json:
        dump_json(lines)
        return OK
    for line in lines:
        print(f"{line['ts']}  {line['level']:<7}  {line['message']}")
    if not lines:
        note(f"no log lines from {args.device}")
    return OK
