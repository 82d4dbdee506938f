"""A simulated fleet against gunicorn + PostgreSQL + Redis on this machine.

`--devices` simulated devices (`devices.agent.simulate`, `--shards` processes
of `--concurrency` threads each, their summaries merged) are
enrolled first with one enrollment token (through `devices.services.enroll`
in this process, not timed: the measured window is the steady state), then
poll `GET /api/v1/device/update` every `--poll-interval-s`, sample a point
every `--telemetry-interval-s` and upload the buffered points every
`--upload-interval-s` (the server advises it, `DEVICE_UPLOAD_INTERVAL_S`; an
upload answer's unchanged ETag stands for a poll) for `--duration-s`.
Devices start with a factory model (`--preinstalled`), so they report
telemetry without a deployment; no update is assigned, so check-ins answer
204/304. Afterwards: requests by endpoint, failed requests
(target: zero), check-in latency p50/p95/p99 as the devices saw it,
telemetry points sent vs rows stored (target: equal), CPU by process (the
server's per request and per point, the simulator's apart), devices per
server core and what 100,000 devices polling every 60 s would take, the load
average meanwhile (the machine may be shared), and the schedule lag: how late
the simulator started device steps after they were due (telemetry ticks run
on each device's clock, so a simulator or server that cannot keep up shows as
lag and missed ticks, not as quietly fewer requests).

Loopback only. It uses a database of its own next to `DATABASE_URL`'s, cache keys
under a prefix of its own in `REDIS_URL` (unset: local memory) and a broker in a
temporary directory, and removes all three at exit. Bounded in time: the
simulator is killed `--duration-s` + 300 s after it starts.

    .venv/bin/python benchmarks/simulated_fleet.py [--devices 10000] [--duration-s 600]
        [--upload-interval-s 60] [--workers N] [--threads N] [--shards 2] [--concurrency 6]
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
import secrets  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

from benchmarks import _harness as h  # noqa: E402

UID_PREFIX = "fleetbench"
ENDPOINTS = ("enroll", "inventory", "checkin", "telemetry", "logs", "status")
SERVER = ("web (gunicorn)", "postgres (lower bound)", "redis")
TARGET_LAG_P99_MS, TARGET_CHECKIN_P99_MS = 2000, 50
CAPACITY_DEVICES, CAPACITY_POLL_S = 100_000, 60


class LoadSampler(threading.Thread):
    """The 1-minute load average every few seconds while the fleet runs."""

    def __init__(self, every_s: float = 5.0):
        super().__init__(daemon=True)
        self.every_s, self.samples, self.done = every_s, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        if not self.samples:
            return "load average: no sample"
        mean = sum(self.samples) / len(self.samples)
        return f"load average (1 min) during the run: mean {mean:.1f}, max {max(self.samples):.1f}"


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


def server_buckets(port: int, token: str) -> dict[str, dict[float, float]]:
    """The server's own request-duration histogram (`/metrics`, every worker's, from
    routing to the answer): endpoint -> {upper bound s: cumulative count}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    ask = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(ask, timeout=30) as answer:
        text = answer.read().decode()
    out: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "edgefleet_device_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                out.setdefault(sample.labels["endpoint"], {})[bound] = sample.value
    return out


def print_server_side(before: dict, after: dict) -> None:
    """What the server itself took per endpoint in the measured window, next to what the
    devices saw: the difference is the accept queue, the CPU run queue and the client."""
    print(
        "\nserver side (its own histogram, routing to answer; the measured window): "
        "share of requests answered within 5 / 10 / 25 / 50 ms, and the bucket holding p99"
    )
    print("\n| endpoint | requests | ≤ 5 ms | ≤ 10 ms | ≤ 25 ms | ≤ 50 ms | p99 ≤ |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for endpoint, buckets in sorted(after.items()):
        delta = {b: n - before.get(endpoint, {}).get(b, 0) for b, n in buckets.items()}
        total = delta.get(float("inf"), 0)
        if not total:
            continue
        share = [f"{delta.get(b, 0) / total * 100:.1f} %" for b in (0.005, 0.01, 0.025, 0.05)]
        p99 = min(b for b, n in delta.items() if n >= 0.99 * total)
        print(f"| {endpoint} | {total:,.0f} | " + " | ".join(share) + f" | {p99 * 1000:g} ms |")


def finish(simulator: subprocess.Popen, timeout_s: float) -> tuple[str, str]:
    """The simulator's output once it has ended; one still running after `timeout_s` gets
    SIGTERM, on which it stops and still prints its summary."""
    try:
        return simulator.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        simulator.terminate()
        return simulator.communicate(timeout=120)


def main() -> None:
    from fleet import gunicorn as production

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--duration-s", type=float, default=600)
    parser.add_argument("--poll-interval-s", type=float, default=30)
    parser.add_argument("--telemetry-interval-s", type=float, default=10, help="sampling")
    parser.add_argument(
        "--upload-interval-s", type=int, default=60, help="advised to devices (server setting)"
    )
    h.add_gunicorn_args(parser)
    # The simulator's threads share one GIL per process: too few threads, and a slow
    # spell of the server leaves steps queued (schedule lag); too many, and their own
    # GIL queueing is measured as latency. 10k devices, 420-600 s, one run each (GC
    # frozen): 2 x 6 threads gave check-in p99 22-65 ms and lag p99 4 ms-28 s over
    # two runs, 2 x 10 gave 60 ms / 4.2 s, 2 x 16 gave 129 ms / 4.8 s.
    parser.add_argument("--shards", type=int, default=2, help="simulator processes")
    parser.add_argument("--concurrency", type=int, default=6, help="threads per simulator")
    # A fleet in steady state has its devices' phases spread over the upload interval;
    # one that boots all at once makes a storm (10,000 uploads, at once, as a booted
    # agent reports at once). With first steps over 10 s it took about two minutes to
    # drain, and its lag (p99 65 s) was measured after a 60 s warm-up as if it were
    # the steady state; --ramp-s 10 --warmup-s 60 still shows that start.
    parser.add_argument(
        "--ramp-s",
        type=float,
        help="spread the devices' first steps over this (default: the upload interval)",
    )
    parser.add_argument("--timeout-s", type=float, default=15, help="per request, as the agent")
    parser.add_argument(
        "--warmup-s",
        type=float,
        help="not measured: the restarted fleet's first steps (default: the ramp and "
        "a poll interval)",
    )
    args = parser.parse_args()
    ramp_s = args.upload_interval_s if args.ramp_s is None else args.ramp_s
    if args.warmup_s is None:
        args.warmup_s = ramp_s + args.poll_interval_s

    scratch = h.Scratch("fleet")  # this run's database and cache keys, removed at exit
    atexit.register(scratch.close)
    var_dir = tempfile.mkdtemp(prefix="fleetbench-var-")  # no worker: queued tasks end here
    atexit.register(shutil.rmtree, var_dir, True)
    metrics_token = secrets.token_urlsafe(16)
    env = scratch.setup_django(
        # Production counts requests in every worker (multiprocess mode); the benchmark
        # reads the server's own latency histogram from /metrics.
        PROMETHEUS_MULTIPROC_DIR=str(Path(var_dir) / "prometheus"),
        METRICS_TOKEN=metrics_token,
        CELERY_BROKER_URL="filesystem://",
        EDGEFLEET_VAR_DIR=var_dir,
        DEVICE_MAX_INFLIGHT_INGEST="64",
        OTA_POLL_INTERVAL_S=str(round(args.poll_interval_s)),
        DEVICE_UPLOAD_INTERVAL_S=str(args.upload_interval_s),
    )
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
    enroll_s = time.perf_counter() - enroll_began
    connection.close()

    port = h.free_port()
    server = h.start_gunicorn(env, port, args.workers, args.threads)
    roles = {
        "web (gunicorn)": lambda c: "gunicorn" in c and f"127.0.0.1:{port}" in c,
        # This run's processes only: other simulators and databases may share the machine.
        "simulator": lambda c: "devices.agent.simulate" in c and f"127.0.0.1:{port}" in c,
        # Backends serving this run's database; those that exit before the second
        # snapshot (connections recycled after DB_CONN_MAX_AGE) are not counted: a
        # lower bound.
        "postgres (lower bound)": lambda c: c.startswith("postgres") and f" {scratch.name} " in c,
        "redis": lambda c: "redis-server" in c,  # shared: whoever else uses it counts too
    }

    def command(k: int) -> list[str]:
        return [
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
            str(state.with_name(f"fleet-{k}.json")),
            "--shard",
            f"{k}/{args.shards}",
            "--warmup-s",
            str(args.warmup_s),
        ]

    # A fleet in steady state: the server has had their inventory (the factory model)
    # before this restart, so they do not all report it at once in the first seconds.
    from devices.agent import simulate

    reported = simulate.SimDevice(0, simulate.parser().parse_args(command(0)[3:]), simulate.Stats())
    for device in saved.values():
        device["reported"] = reported.facts_digest()
    for k in range(args.shards):
        shard = {i: d for i, d in saved.items() if int(i) % args.shards == k}
        state.with_name(f"fleet-{k}.json").write_text(json.dumps({"devices": shard}))
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    simulators = [
        subprocess.Popen(
            command(k),
            cwd=h.ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(args.shards)
    ]
    try:
        # The measured window starts after the warm-up, like the simulator's histograms.
        time.sleep(args.warmup_s)
        measured_from = time.time()
        cpu_before, busy_before = h.process_cpu_seconds(roles), h.machine_cpu_seconds()
        steal_before = h.steal_seconds()
        buckets_before = server_buckets(port, metrics_token)
        load = LoadSampler()
        load.start()
        outputs = [finish(simulator, args.duration_s + 300) for simulator in simulators]
    except BaseException:
        for simulator in simulators:
            simulator.kill()
        h.stop(server)
        raise
    finally:
        wall = time.time() - measured_from
        cpu_after, busy_after = h.process_cpu_seconds(roles), h.machine_cpu_seconds()
        steal = h.steal_seconds() - steal_before
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load.done.set()
        buckets_after = server_buckets(port, metrics_token) if server.poll() is None else {}
        h.stop(server)
    for simulator, (_out, err) in zip(simulators, outputs, strict=True):
        if simulator.returncode:
            raise SystemExit(f"simulator failed ({simulator.returncode}): {err[-3000:]}")
    stats = simulate.merge([json.loads(out) for out, _err in outputs])
    measured_points = TelemetryPoint.objects.filter(
        device__uid__startswith=UID_PREFIX + "-", ts__gte=datetime.fromtimestamp(measured_from, UTC)
    ).count()
    stored = TelemetryPoint.objects.filter(device__uid__startswith=UID_PREFIX + "-").count()
    registered = Device.objects.filter(uid__startswith=UID_PREFIX + "-").count()
    sent = stats.get("telemetry_sent", 0)
    failed = failures(stats)
    latency = stats.get("latency", {})
    cpu = h.cpu_delta(cpu_before, cpu_after)
    # The simulator has exited by the second snapshot: its CPU comes from rusage,
    # less what it had used by the end of the warm-up.
    cpu["simulator"] = (
        children_after.ru_utime
        + children_after.ru_stime
        - children_before.ru_utime
        - children_before.ru_stime
        - sum(cpu_before["simulator"].values())
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
        f"every {args.telemetry_interval_s:g} s, uploaded every {args.upload_interval_s} s "
        f"(advised), {args.duration_s:g} s (measured: the last {wall:.0f} s, after a "
        f"{args.warmup_s:g} s warm-up; first steps spread over {ramp_s:g} s); gunicorn "
        f"{production.worker_class} {args.workers} workers × {args.threads} threads; "
        f"simulator {args.shards} processes × {args.concurrency} threads, new connection "
        "per request, as the agent"
    )
    nominal = {
        "checkin": args.devices * args.duration_s / (args.poll_interval_s * 1.1),
        "telemetry": args.devices * args.duration_s / (args.upload_interval_s * 1.1),
    }
    print("\n| endpoint | requests | requests/s | nominal/s, no skip | p50 | p95 | p99 | max ms |")
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
    print_server_side(buckets_before, buckets_after)
    lag = stats.get("schedule_lag") or {}
    if lag.get("count"):
        print(
            f"\nschedule lag (a device's step started after it was due, the simulator's own "
            f"queueing): p50 {lag['p50_ms']:.1f} ms, p95 {lag['p95_ms']:.1f}, p99 "
            f"{lag['p99_ms']:.1f}, max {lag['max_ms']:.1f}; telemetry ticks missed "
            f"{stats.get('telemetry_ticks_missed', 0):,}; steps still queued at the end, not run "
            f"{stats.get('steps_not_run', 0):,}; simulator full GC collections "
            f"{stats.get('gc_full_collections', 0):,}, {stats.get('gc_full_ms', 0):,} ms in all"
        )
    statuses = {k: v for k, v in stats.items() if k.startswith("checkin_")}
    print(f"\ncheck-in statuses: {json.dumps(statuses)}")
    print(f"failed requests: {sum(failed.values())} {json.dumps(failed) if failed else ''}")
    sampled = stats.get("telemetry_sampled", 0)
    print(
        f"telemetry points sampled {sampled:,} (nominal "
        f"{args.devices * (args.duration_s - ramp_s / 2) / args.telemetry_interval_s:,.0f}: "
        f"from each device's boot, spread over the ramp), sent {sent:,} "
        f"(the rest still buffered at the end) · rows stored {stored:,} → "
        f"{'EQUAL' if sent == stored else 'MISMATCH'}"
    )
    busy = busy_after - busy_before
    print(
        f"\nCPU seconds over {wall:.0f} s wall ({cores} cores = {wall * cores:.0f} "
        f"core-seconds): "
        + ", ".join(f"{k} {v:.0f} ({v / wall * 100:.0f} % of one core)" for k, v in cpu.items())
        + f"; whole machine busy {busy:.0f} ({busy / (wall * cores) * 100:.0f} %, of which "
        f"{steal:.0f} stolen by the hypervisor for other guests)"
    )
    print(load.summary())
    requests = sum(row["count"] for row in latency.values())
    if requests and sent:
        print_server_cost(args, cpu, requests, measured_points)
    p99 = latency.get("checkin", {}).get("p99_ms", float("inf"))
    lag_p99 = lag.get("p99_ms", float("inf"))
    checks = {
        "zero failed requests": not failed,
        "points stored = points sent": sent == stored and sent > 0,
        f"schedule lag p99 {lag_p99:.0f} ms < {TARGET_LAG_P99_MS} ms": lag_p99 < TARGET_LAG_P99_MS,
        f"check-in p99 {p99:.1f} ms < {TARGET_CHECKIN_P99_MS} ms": p99 < TARGET_CHECKIN_P99_MS,
    }
    print(
        "\ntargets: "
        + "; ".join(f"{name}: {'MET' if ok else 'NOT MET'}" for name, ok in checks.items())
    )


def print_server_cost(args, cpu: dict, requests: int, points: int) -> None:
    """Server CPU (web + PostgreSQL + Redis) per request and per point, devices per
    server core, and the cores 100,000 devices polling every 60 s would take."""
    server = sum(cpu.get(role, 0.0) for role in SERVER)
    web = cpu["web (gunicorn)"]
    print(
        f"server CPU (web + PostgreSQL + Redis) {server:.0f} s: per request "
        f"{server * 1000 / requests:.2f} ms (web alone {web * 1000 / requests:.2f} ms; "
        f"{requests:,} requests), per point stored {server * 1000 / points:.3f} ms "
        f"({points:,} points sampled in the window; each figure is the whole server CPU "
        "over that count); "
        f"simulator {cpu['simulator'] * 1000 / requests:.2f} ms per request, apart"
    )
    # From the cost per request and the cadence's nominal requests (no poll skipped),
    # not from the devices simulated: a run that fell behind made fewer requests.
    nominal = 1 / (args.poll_interval_s * 1.1) + 1 / (args.upload_interval_s * 1.1)
    per_core = 1 / (server / requests * nominal)
    print(
        f"devices per server core at this cadence (poll {args.poll_interval_s:g} s, a point "
        f"every {args.telemetry_interval_s:g} s, upload every {args.upload_interval_s} s; "
        f"{nominal:.3f} requests/s each, no poll skipped): {per_core:,.0f}"
    )
    # At a slower poll only check-ins get fewer; counted without the ones an upload
    # answer stands for, and every request at the measured average cost (check-ins are
    # the cheapest): an upper estimate.
    rate = CAPACITY_DEVICES * (1 / (CAPACITY_POLL_S * 1.1) + 1 / (args.upload_interval_s * 1.1))
    print(
        f"capacity estimate, {CAPACITY_DEVICES:,} devices polling every {CAPACITY_POLL_S} s "
        f"(same sampling and uploads): {rate:,.0f} requests/s, about "
        f"{rate * server / requests:.1f} server cores (upper estimate: every request at the "
        f"measured average, no poll skipped)"
    )


if __name__ == "__main__":
    main()
