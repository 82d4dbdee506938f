"""A simulated fleet against gunicorn + PostgreSQL + Redis on this machine.

`--devices` simulated devices (`devices.agent.simulate`, one process) are
enrolled first with one enrollment token (through `devices.services.enroll`
in this process, not timed: the measured window is the steady state), then
poll `GET /api/v1/device/update` every
`--poll-interval-s` and post telemetry every `--telemetry-interval-s` for
`--duration-s`. Devices start with a factory model (`--preinstalled`), so
they report telemetry without a deployment; no update is assigned, so
check-ins answer 204/304. Afterwards: requests by endpoint, failed requests
(target: zero), check-in latency p50/p95/p99 as the devices saw it,
telemetry points sent vs rows stored (target: equal), CPU by process, and
the schedule lag: how late the simulator started device steps after they were
due (telemetry ticks run on each device's clock, so a simulator or server
that cannot keep up shows as lag and missed ticks, not as quietly fewer
requests).

Loopback only. It uses a database of its own next to `DATABASE_URL`'s, cache keys
under a prefix of its own in `REDIS_URL` (unset: local memory) and a broker in a
temporary directory, and removes all three at exit. Bounded in time: the
simulator is killed `--duration-s` + 300 s after it starts.

    .venv/bin/python benchmarks/simulated_fleet.py [--devices 10000] [--duration-s 600]
        [--workers N] [--threads N] [--concurrency 8]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Run as a script: this checkout's packages (and `benchmarks`) come first on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402 - after the sys.path fix above
import atexit  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from benchmarks import _harness as h  # noqa: E402

UID_PREFIX = "fleetbench"
ENDPOINTS = ("enroll", "checkin", "telemetry", "logs", "status")


def failures(stats: dict) -> dict[str, int]:
    """Counters of the simulator summary that mean a request failed."""
    ok = {"checkin_200", "checkin_204", "checkin_304"}
    return {
        k: v
        for k, v in stats.items()
        if isinstance(v, int)
        and v
        and k not in ok
        and (k.startswith(("checkin_", "enroll_", "report_")) or k == "step_errors")
    }


def main() -> None:
    from fleet import gunicorn as production

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--duration-s", type=float, default=600)
    parser.add_argument("--poll-interval-s", type=float, default=30)
    parser.add_argument("--telemetry-interval-s", type=float, default=10)
    h.add_gunicorn_args(parser)
    # Few simulator threads: they share one GIL, and with 16-32 the latency they
    # measured was mostly their own queueing (10k devices, 120 s: p99 59 ms with
    # 32, 26 ms with 16, 14 ms with 8, the same ~1,150 requests/s from 8 and 16).
    parser.add_argument("--concurrency", type=int, default=8, help="simulator worker threads")
    parser.add_argument(
        "--ramp-s", type=float, default=10, help="spread the devices' first steps over this"
    )
    parser.add_argument("--timeout-s", type=float, default=15, help="per request, as the agent")
    args = parser.parse_args()
    ramp_s = args.ramp_s

    scratch = h.Scratch("fleet")  # this run's database and cache keys, removed at exit
    atexit.register(scratch.close)
    var_dir = tempfile.mkdtemp(prefix="fleetbench-var-")  # no worker: queued tasks end here
    atexit.register(shutil.rmtree, var_dir, True)
    env = {
        **os.environ,
        **scratch.env(),
        "CELERY_BROKER_URL": "filesystem://",
        "EDGEFLEET_VAR_DIR": var_dir,
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "THROTTLE_DEVICE": "1000000/min",
        "DEVICE_MAX_INFLIGHT_INGEST": "64",
        "OTA_POLL_INTERVAL_S": str(round(args.poll_interval_s)),
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
    }
    env.pop("MQTT_URL", None)
    os.environ.update(env)
    subprocess.run(
        [h.PYTHON, "manage.py", "migrate", "-v", "0"], cwd=h.ROOT, env=env, check=True, timeout=600
    )
    import django

    django.setup()
    from django.db import connection

    from devices import services
    from devices.models import Device, TelemetryPoint
    from ota import keys

    _token, enrollment = services.create_enrollment_token(
        name="fleet benchmark", max_uses=args.devices
    )
    state = Path(tempfile.mkdtemp(prefix="fleetbench-")) / "fleet.json"
    enroll_began = time.perf_counter()
    server_key = keys.active_key().public_key_b64
    saved = {}
    for index in range(args.devices):
        device, token = services.enroll(enrollment, {"uid": f"{UID_PREFIX}-{index:05d}"})
        saved[str(index)] = {"uid": device.uid, "token": token, "keys": [server_key]}
    state.write_text(json.dumps({"devices": saved}))
    enroll_s = time.perf_counter() - enroll_began
    connection.close()

    port = h.free_port()
    server = h.start_gunicorn(env, port, args.workers, args.threads)
    roles = {
        "web (gunicorn)": lambda c: "gunicorn" in c and f"127.0.0.1:{port}" in c,
        "simulator": lambda c: "devices.agent.simulate" in c,
        # Backends that exit before the second snapshot (connections recycled
        # after DB_CONN_MAX_AGE) are not counted: a lower bound.
        "postgres (lower bound)": lambda c: c.startswith("postgres"),
        "redis": lambda c: "redis-server" in c,
    }
    command = [
        h.PYTHON,
        "-m",
        "devices.agent.simulate",
        "--server",
        f"http://127.0.0.1:{port}",
        "--enrollment-token",
        enrollment,
        "--devices",
        str(args.devices),
        "--duration-s",
        str(args.duration_s),
        "--poll-interval-s",
        str(args.poll_interval_s),
        "--telemetry-interval-s",
        str(args.telemetry_interval_s),
        "--concurrency",
        str(args.concurrency),
        "--ramp-s",
        str(ramp_s),
        "--timeout-s",
        str(args.timeout_s),
        "--uid-prefix",
        UID_PREFIX,
        "--preinstalled",
        "factory:1",
        "--state-file",
        str(state),
    ]
    cpu_before, busy_before, began = (
        h.process_cpu_seconds(roles),
        h.machine_cpu_seconds(),
        time.time(),
    )
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            command,
            cwd=h.ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.duration_s + 300,
            check=False,
        )
    finally:
        wall = time.time() - began
        cpu_after, busy_after = h.process_cpu_seconds(roles), h.machine_cpu_seconds()
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        h.stop(server)
    if done.returncode:
        raise SystemExit(f"simulator failed ({done.returncode}): {done.stderr[-3000:]}")
    stats = json.loads(done.stdout)
    stored = TelemetryPoint.objects.filter(device__uid__startswith=UID_PREFIX + "-").count()
    registered = Device.objects.filter(uid__startswith=UID_PREFIX + "-").count()
    sent = stats.get("telemetry_sent", 0)
    failed = failures(stats)
    latency = stats.get("latency", {})
    cpu = h.cpu_delta(cpu_before, cpu_after)
    # The simulator has exited by the second snapshot: its CPU comes from rusage.
    cpu["simulator"] = (
        children_after.ru_utime
        + children_after.ru_stime
        - children_before.ru_utime
        - children_before.ru_stime
    )
    cores = os.cpu_count()

    print(
        f"# EdgeFleet fleet benchmark · {cores} CPUs shared by server, PostgreSQL, Redis, "
        f"the simulator and anything else running · PostgreSQL {scratch.name} · cache "
        f"{scratch.redis_url or 'local memory (no REDIS_URL)'}"
    )
    print(
        f"{args.devices:,} simulated devices ({registered:,} registered, enrolled "
        f"beforehand in {enroll_s:.0f} s), poll every {args.poll_interval_s:g} s, telemetry "
        f"every {args.telemetry_interval_s:g} s, {args.duration_s:g} s (wall "
        f"{wall:.0f} s, first steps spread over {ramp_s:g} s); gunicorn "
        f"{production.worker_class} {args.workers} workers × {args.threads} threads; "
        f"simulator {args.concurrency} threads, new connection per request, as the agent"
    )
    nominal = {
        "checkin": args.devices * args.duration_s / (args.poll_interval_s * 1.1),
        "telemetry": args.devices * args.duration_s / args.telemetry_interval_s,
    }
    print("\n| endpoint | requests | requests/s | nominal/s | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ENDPOINTS:
        row = latency.get(name)
        if not row:
            continue
        expected = nominal.get(name)
        print(
            f"| {name} | {row['count']:,} | {row['count'] / wall:,.1f} | "
            f"{f'{expected / args.duration_s:,.1f}' if expected else '–'} | "
            f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['max_ms']:.1f} |"
        )
    lag = stats.get("schedule_lag") or {}
    if lag.get("count"):
        print(
            f"\nschedule lag (a device's step started after it was due, the simulator's own "
            f"queueing): p50 {lag['p50_ms']:.1f} ms, p95 {lag['p95_ms']:.1f}, p99 "
            f"{lag['p99_ms']:.1f}, max {lag['max_ms']:.1f}; telemetry ticks missed "
            f"{stats.get('telemetry_ticks_missed', 0):,}"
        )
    statuses = {k: v for k, v in stats.items() if k.startswith("checkin_")}
    print(f"\ncheck-in statuses: {json.dumps(statuses)}")
    print(f"failed requests: {sum(failed.values())} {json.dumps(failed) if failed else ''}")
    print(
        f"telemetry points sent {sent:,} · rows stored {stored:,} → "
        f"{'EQUAL' if sent == stored else 'MISMATCH'}"
    )
    busy = busy_after - busy_before
    print(
        f"\nCPU seconds over {wall:.0f} s wall ({cores} cores = {wall * cores:.0f} "
        f"core-seconds): "
        + ", ".join(f"{k} {v:.0f} ({v / wall * 100:.0f} % of one core)" for k, v in cpu.items())
        + f"; whole machine busy {busy:.0f} ({busy / (wall * cores) * 100:.0f} %)"
    )
    requests = sum(row["count"] for row in latency.values())
    if requests:
        print(
            f"web CPU per request: {cpu['web (gunicorn)'] * 1000 / requests:.2f} ms "
            f"({requests:,} requests)"
        )
    p99 = latency.get("checkin", {}).get("p99_ms", float("inf"))
    ok = not failed and sent == stored and sent > 0
    print(
        f"\ntargets: zero failed requests, points stored = points sent: "
        f"{'MET' if ok else 'NOT MET'}; check-in p99 {p99:.1f} ms "
        f"({'<' if p99 < 50 else '≥'} 50 ms, the issue 6 target)"
    )


if __name__ == "__main__":
    main()
