"""Raw telemetry on PostgreSQL: daily partitions (devices migration 0009) against
the plain table (0008), in one run.

1. Ingest: the production insert (`devices.ingest.insert`: one prepared
   INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING per batch) of
   `--batches` batches of `--batch` points into each layout, the two layouts
   interleaved round by round; points/s (median) and CPU per point of the
   inserting process and the PostgreSQL backend.
2. Retention of one day: `--day-rows` points spread over one day ten days ago
   (older than TELEMETRY_RETENTION_DAYS=7), statistics up to date as
   autovacuum keeps them, then the production retention
   (`devices.metrics.apply_retention`): a partition DROP against the chunked
   DELETE of the plain table. The issue's figure is a day of 10M rows; scale
   `--day-rows` to what the machine can load in a minute and say so.

Two scratch databases next to DATABASE_URL's (`benchmarks._harness.Scratch`),
removed at the end. Each measurement runs in its own process with its own
DATABASE_URL.

    .venv/bin/python benchmarks/telemetry_storage.py [--batches 200] [--batch 500]
        [--rounds 3] [--day-rows 1000000] [--layouts plain partitioned]

A day of 10M rows (the issue's figure) takes minutes to load and the plain
table's DELETE far longer: `--day-rows 10000000 --layouts partitioned`.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Run as a script: this checkout's packages (and `benchmarks`) come first on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402 - after the sys.path fix above
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from benchmarks import _harness as h  # noqa: E402

ROOT = _HERE.parent
PYTHON = sys.executable
LAYOUTS = ("plain", "partitioned")


# --- the measured steps, each in a process of its own -----------------------------------
def _django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")
    import django

    django.setup()


def step_ingest(batches: int, size: int, seed: int) -> dict:
    _django()
    from devices import ingest

    rng = random.Random(seed)
    now = time.time()
    prepared = []
    for number in range(batches):
        points = [
            {
                "seq": seq,
                "boot_id": f"boot-{seed}",
                "ts": now - rng.uniform(0, 6 * 3600),
                "latency_ms": rng.uniform(5, 15),
                "cpu_pct": 30.0,
                "mem_mb": 100.0,
            }
            for seq in range(number * size, (number + 1) * size)
        ]
        keys, rows, _result = ingest.validate(ingest.TELEMETRY, points, max_items=size, now=now)
        prepared.append((1 + number % 1000, keys, rows))
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    began, cpu, server = time.perf_counter(), time.process_time(), process_cpu(backend)
    stored = sum(
        ingest.insert(ingest.TELEMETRY, device, keys, rows) for device, keys, rows in prepared
    )
    return {
        "seconds": time.perf_counter() - began,
        "client_cpu": time.process_time() - cpu,
        "backend_cpu": process_cpu(backend) - server,
        "points": stored,
    }


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process on this machine (the PostgreSQL backend)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step_fill(day_rows: int) -> dict:
    """One day ten days ago, `day_rows` points, then ANALYZE (autovacuum's statistics)."""
    _django()
    from datetime import UTC, datetime, timedelta

    from django.db import connection

    from devices import partitions

    day = (datetime.now(UTC) - timedelta(days=10)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    partitions.ensure_partitions(day, ahead=0)  # no-op on the plain table
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO devices_telemetrypoint (device_id, boot_id, seq, ts, model_version, "
            "latency_ms) SELECT 1 + i %% 1000, 'old', i, %s + i * (86399.0 / %s) * "
            "interval '1 second', '', 10.0 FROM generate_series(1, %s) i",
            [day, day_rows, day_rows],
        )
        cursor.execute("ANALYZE devices_telemetrypoint")
    return {"seconds": time.perf_counter() - began}


def step_expire() -> dict:
    _django()
    from devices import metrics

    began = time.perf_counter()
    removed = metrics.apply_retention()["telemetry"]
    return {"seconds": time.perf_counter() - began, "removed": removed}


def step_count() -> dict:
    _django()
    from devices.models import TelemetryPoint

    return {"rows": TelemetryPoint.objects.count()}


# --- orchestration ---------------------------------------------------------------------
def run_step(env: dict, *args: str) -> dict:
    done = subprocess.run(
        [PYTHON, str(Path(__file__).resolve()), "--step", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--day-rows", type=int, default=1_000_000)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        name, *rest = args.step
        steps = {
            "ingest": lambda: step_ingest(int(rest[0]), int(rest[1]), int(rest[2])),
            "fill": lambda: step_fill(int(rest[0])),
            "expire": step_expire,
            "count": step_count,
        }
        print(json.dumps(steps[name]()))
        return

    scratches = {layout: h.Scratch(f"storage_{layout}") for layout in args.layouts}
    try:
        measure(args, scratches)
    finally:
        for scratch in scratches.values():
            scratch.close()


def measure(args, scratches) -> None:
    envs = {}
    for layout, scratch in scratches.items():
        env = {
            **os.environ,
            **scratch.env(),
            "DJANGO_SETTINGS_MODULE": "fleet.settings",
            "LOG_LEVEL": "WARNING",
            "TELEMETRY_RETENTION_DAYS": "7",
        }
        env.pop("MQTT_URL", None)
        subprocess.run([PYTHON, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        if layout == "plain":  # the layout before 0009 (its reverse: one plain table)
            subprocess.run(
                [PYTHON, "manage.py", "migrate", "devices", "0008", "-v", "0"],
                cwd=ROOT,
                env=env,
                check=True,
            )
        envs[layout] = env

    layouts = tuple(scratches)
    ingest = {layout: [] for layout in layouts}
    for number in range(args.rounds):
        order = layouts if number % 2 == 0 else layouts[::-1]
        for layout in order:
            result = run_step(
                envs[layout], "ingest", str(args.batches), str(args.batch), str(number)
            )
            ingest[layout].append(result)

    retention = {}
    for layout in layouts:
        fill = run_step(envs[layout], "fill", str(args.day_rows))
        rows_before = run_step(envs[layout], "count")["rows"]
        expire = run_step(envs[layout], "expire")
        rows_after = run_step(envs[layout], "count")["rows"]
        retention[layout] = {
            "fill_s": fill["seconds"],
            "expire_s": expire["seconds"],
            "reported": expire["removed"],
            "gone": rows_before - rows_after,
        }

    with open("/proc/loadavg") as fh:
        load = fh.read().split()[0]
    print(
        f"# EdgeFleet telemetry storage · PostgreSQL · {os.cpu_count()} CPUs, load average "
        f"{load} at the end (shared machine)"
    )
    print(
        f"\nIngest: {args.rounds} interleaved rounds × {args.batches} batches × {args.batch} "
        "points through devices.ingest.insert (prepared, ON CONFLICT DO NOTHING)\n"
    )
    print(
        "| layout | points/s (median) | client CPU µs/point | PostgreSQL CPU µs/point | "
        "points stored |"
    )
    print("|---|---:|---:|---:|---:|")
    rates = {}
    for layout in layouts:
        runs = ingest[layout]
        rates[layout] = statistics.median(r["points"] / r["seconds"] for r in runs)
        client = statistics.median(r["client_cpu"] / r["points"] * 1e6 for r in runs)
        backend = statistics.median(r["backend_cpu"] / r["points"] * 1e6 for r in runs)
        print(
            f"| {layout} | {rates[layout]:,.0f} | {client:.1f} | {backend:.1f} | "
            f"{sum(r['points'] for r in runs):,} |"
        )
    if len(layouts) == 2:
        paired = statistics.median(
            p["points"] / p["seconds"] / (q["points"] / q["seconds"])
            for p, q in zip(ingest["partitioned"], ingest["plain"], strict=True)
        )
        print(
            f"\npartitioned ÷ plain ingest rate (median of paired rounds): {paired:.2f} "
            "(target ≥ 1.0, i.e. not slower than today)"
        )
    print(f"\nRetention of one day of {args.day_rows:,} points (devices.metrics.apply_retention)\n")
    print("| layout | load the day (s) | retention (s) | rows removed (counted) | reported |")
    print("|---|---:|---:|---:|---:|")
    for layout in layouts:
        r = retention[layout]
        print(
            f"| {layout} | {r['fill_s']:.1f} | {r['expire_s']:.3f} | {r['gone']:,} | "
            f"{r['reported']:,} |"
        )
    if "partitioned" in retention:
        print(
            f"\ntarget: retention of a day in < 1 s (partitioned: "
            f"{'MET' if retention['partitioned']['expire_s'] < 1 else 'NOT MET'} at "
            f"{args.day_rows:,} rows; a DROP does not depend on the row count)"
        )


if __name__ == "__main__":
    main()
