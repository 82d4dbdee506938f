"""What a benchmark needs around the code it measures: a scratch PostgreSQL
database, a gunicorn server on loopback, CPU accounting by process role.

Shared by `benchmarks/ingest.py`, `checkin.py` and `simulated_fleet.py` (imported as
`benchmarks._harness` after the `sys.path` line those files start with).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgres://postgres@127.0.0.1:5432/postgres")


def recreate_database(name: str) -> str:
    """Drop and create `name` next to the admin database; returns its URL."""
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN, connect_timeout=10)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {name}")
    admin.close()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def redis_url(db: int) -> str | None:
    """REDIS_URL if set, else a scratch database `db` of the local Redis (flushed):
    the cache production runs with. None when no Redis answers."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            pass
    except OSError:
        return None
    import redis

    url = f"redis://127.0.0.1:6379/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(
    env: dict, port: int, workers: int, threads: int = 1, timeout_s: float = 60
) -> subprocess.Popen:
    """gunicorn with the production settings (fleet/gunicorn.py) serving fleet.wsgi
    on 127.0.0.1:port, in its own process group."""
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "gunicorn",
            "-c",
            "python:fleet.gunicorn",
            "fleet.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "--threads",
            str(threads),
            "--log-level",
            "warning",
            "--backlog",
            "4096",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError("gunicorn did not start: " + proc.stderr.read().decode()[-2000:])


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after 15 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(15)


def process_cpu_seconds(roles: dict[str, object]) -> dict[str, dict[int, float]]:
    """CPU seconds (user + system) used so far by each process of each role.

    `roles` maps a role to a predicate on the process command line; the first
    matching role counts a process. Per pid, so `cpu_delta` can ignore
    processes that exit in between (other users of a shared PostgreSQL).
    Read from /proc: no extra dependency.
    """
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, dict[int, float]] = {role: {} for role in roles}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for role, matches in roles.items():
            if matches(cmd):
                out[role][int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
                break
    return out


def cpu_delta(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per role between two `process_cpu_seconds` snapshots, counting
    processes alive at the second one (new ones in full)."""
    return {
        role: sum(used - before[role].get(pid, 0.0) for pid, used in pids.items())
        for role, pids in after.items()
    }


def machine_cpu_seconds() -> float:
    """CPU seconds all processes on the machine spent busy so far (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")
