"""What a benchmark needs around the code it measures: a scratch PostgreSQL
database and cache namespace (`Scratch`, from DATABASE_URL / REDIS_URL, removed
afterwards), a gunicorn server on loopback, CPU accounting by process role.

Shared by `benchmarks/ingest.py`, `checkin.py` and `simulated_fleet.py` (imported as
`benchmarks._harness` after the `sys.path` line those files start with), and by the
end-to-end tests that start gunicorn (`free_port`, `start_gunicorn`, `stop`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class Scratch:
    """A database and a cache namespace of this run only, removed by `close()`.

    The database is created next to `DATABASE_URL`'s (a new name with this
    process id: nothing of anyone else's is dropped or touched, and no session
    is killed); the cache uses `REDIS_URL` (None: local memory) under a key
    prefix of this run, whose keys `close()` deletes. Never a FLUSHDB."""

    def __init__(self, tag: str):
        import psycopg2

        base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        server, _, db = base.rpartition("/")
        self.name = f"{db.split('?')[0] or 'edgefleet'}_bench_{tag}_{os.getpid()}"
        self.admin_url = base
        self.url = f"{server}/{self.name}"
        self.redis_url = os.environ.get("REDIS_URL") or None
        self.key_prefix = f"bench-{tag}-{os.getpid()}"
        admin = psycopg2.connect(base, connect_timeout=10)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{self.name}"')
        admin.close()

    def env(self) -> dict[str, str]:
        env = {"DATABASE_URL": self.url, "CACHE_KEY_PREFIX": self.key_prefix}
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        return env

    def setup_django(self, **extra: str) -> dict[str, str]:
        """Migrate this scratch database and set Django up in this process; returns the
        environment for the benchmark's servers: production settings (DEBUG off, quiet
        logs, no device throttle, no MQTT) on this database and cache, plus `extra`."""
        env = {
            **os.environ,
            **self.env(),
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "THROTTLE_DEVICE": "1000000/min",
            "DJANGO_SETTINGS_MODULE": "fleet.settings",
            **extra,
        }
        env.pop("MQTT_URL", None)
        os.environ.update(env)
        migrate = [PYTHON, "manage.py", "migrate", "-v", "0"]
        subprocess.run(migrate, cwd=ROOT, env=env, check=True, timeout=600)
        import django

        django.setup()
        return env

    def close(self) -> None:
        """Drop the database (after every server using it has stopped) and the keys."""
        import psycopg2
        from django.conf import settings

        if settings.configured:
            from django.db import connections

            connections.close_all()
        admin = psycopg2.connect(self.admin_url, connect_timeout=10)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
        admin.close()
        if self.redis_url:
            import redis

            client = redis.Redis.from_url(self.redis_url, socket_timeout=10)
            keys = list(client.scan_iter(f"{self.key_prefix}:*", count=5000))
            for start in range(0, len(keys), 5000):
                client.delete(*keys[start : start + 5000])


def add_gunicorn_args(parser) -> None:
    """`--workers` / `--threads`, defaulting to the production settings (fleet/gunicorn.py)."""
    from fleet import gunicorn as production

    parser.add_argument(
        "--workers",
        type=int,
        default=production.workers,
        help="gunicorn workers (default: fleet/gunicorn.py's)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=production.threads,
        help="threads per gunicorn worker (default: fleet/gunicorn.py's)",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(
    env: dict,
    port: int,
    workers: int,
    threads: int = 1,
    timeout_s: float = 60,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen:
    """gunicorn with the production settings (fleet/gunicorn.py) serving fleet.wsgi
    on 127.0.0.1:port, in its own process group (`extra`: more gunicorn arguments);
    returns once the port accepts connections."""
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
            *extra,
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


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """`sig` (SIGTERM) to the process group, SIGKILL after 15 s."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
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
    """CPU seconds all processes on the machine spent busy so far (from /proc/stat),
    counting the time the hypervisor gave to other guests (steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def steal_seconds() -> float:
    """CPU seconds a virtual machine's cores were runnable but the hypervisor ran another
    guest (/proc/stat "steal"): a noisy neighbour, not this machine's own load."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")
