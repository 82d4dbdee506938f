"""S1: PostgreSQL and Redis restarted under load.

A private PostgreSQL cluster (initdb in a temp dir, its own port) and a private
Redis serve a real gunicorn; a client posts telemetry continuously while each
service is killed and started again. While a service is down every answer is a
fast 503 with Retry-After; afterwards the server recovers by itself; every
point answered as accepted is stored exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from benchmarks._harness import free_port, start_gunicorn, stop
from tests.conftest import need_service, port_open

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PG_BIN = (
    next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if Path("/usr/lib/postgresql").exists()
    else None
)


def wait_port(port: int, up: bool = True, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if port_open("127.0.0.1", port, 0.2) == up:
            return
        time.sleep(0.1)
    raise AssertionError(f"port {port} still {'closed' if up else 'open'}")


class PrivatePostgres:
    """A throwaway cluster run as the `postgres` user (the server refuses root)."""

    def __init__(self, root: Path):
        self.dir, self.port = root / "pgdata", free_port()
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres")
        self._as_postgres(
            PG_BIN / "initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres", "--no-sync"
        )

    def _as_postgres(self, *cmd) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._as_postgres(
            PG_BIN / "pg_ctl",
            "-D",
            self.dir,
            "-w",
            "-l",
            self.dir / "log",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off",
            "start",
        )

    def crash(self) -> None:
        """Immediate shutdown: no checkpoint, recovery from WAL on the next start."""
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.dir, "-m", "immediate", "stop")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"


class PrivateRedis:
    def __init__(self):
        self.port, self.proc = free_port(), None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def crash(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        wait_port(self.port, up=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def stack(tmp_path):
    if PG_BIN is None or shutil.which("redis-server") is None or shutil.which("runuser") is None:
        need_service("private PostgreSQL/Redis", "initdb, redis-server and runuser needed")
    # Not under tmp_path: pytest's base directory is private to root, and the
    # postgres user must reach its data directory.
    pg_root = Path(tempfile.mkdtemp(prefix="edgefleet-s1-pg-"))
    pg, redis = PrivatePostgres(pg_root), PrivateRedis()
    pg.start()
    redis.start()
    env = {
        **os.environ,
        "DATABASE_URL": pg.url,
        "REDIS_URL": redis.url,
        "CELERY_BROKER_URL": "memory://",
        "DEBUG": "0",
        "LOG_LEVEL": "ERROR",
        "EDGEFLEET_VAR_DIR": str(tmp_path / "var"),
        "THROTTLE_DEVICE": "100000/min",
        "DB_CONN_MAX_AGE": "60",
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
    }
    for name in ("AWS_STORAGE_BUCKET_NAME", "MQTT_URL"):
        env.pop(name, None)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=300)
    token = subprocess.run(
        [*manage, "demo_enrollment_token"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.strip()
    port = free_port()
    web = start_gunicorn(env, port, 2, timeout_s=90, extra=("--timeout", "30"))
    try:
        yield {"url": f"http://127.0.0.1:{port}", "token": token, "pg": pg, "redis": redis}
    finally:
        stop(web)
        redis.proc.kill()
        with contextlib.suppress(subprocess.CalledProcessError):  # already down
            pg.crash()
        shutil.rmtree(pg_root, ignore_errors=True)


def call(url: str, path: str, body: dict, token: str | None = None, method: str = "POST"):
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    began = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return (
                response.status,
                dict(response.headers),
                json.loads(response.read() or b"{}"),
                time.monotonic() - began,
            )
    except urllib.error.HTTPError as exc:
        return (
            exc.code,
            dict(exc.headers),
            json.loads(exc.read() or b"{}"),
            time.monotonic() - began,
        )


class Sender:
    """Posts batches of 5 points; a batch is resent until it is accepted."""

    def __init__(self, url: str, token: str):
        self.url, self.token, self.seq = url, token, 0
        self.accepted: set[int] = set()
        self.refusals: list[tuple[int, float, str | None]] = []

    def step(self) -> int:
        batch = [
            {"seq": self.seq + i, "boot_id": "s1", "ts": time.time(), "latency_ms": 5.0}
            for i in range(5)
        ]
        status, headers, body, took = call(
            self.url, "/api/v1/device/telemetry", {"batch": batch}, self.token
        )
        if status == 200:
            self.accepted.update(body["accepted"]["s1"])
            self.seq += 5
        else:
            self.refusals.append((status, took, headers.get("Retry-After")))
        return status

    def run_until(self, predicate, timeout: float) -> list[int]:
        statuses, deadline = [], time.time() + timeout
        while time.time() < deadline:
            statuses.append(self.step())
            if predicate(statuses):
                return statuses
            time.sleep(0.05)
        raise AssertionError(f"gave up after {timeout} s: {statuses[-10:]}")


def test_s1_postgres_and_redis_restarts_fail_fast_and_recover(stack):
    from_ok = lambda statuses: statuses[-1] == 200  # noqa: E731
    status, _h, enrolled, _t = call(
        stack["url"],
        "/api/v1/device/enroll",
        {"token": stack["token"], "facts": {"uid": "s1-device"}},
    )
    assert status == 201, enrolled
    sender = Sender(stack["url"], enrolled["token"])
    sender.run_until(lambda s: len(s) >= 10, 30)
    assert set(sender.refusals) == set()

    for service in ("pg", "redis"):
        stack[service].crash()
        down = sender.run_until(lambda s: len(s) >= 5, 60)
        assert set(down) == {503}, down
        stack[service].start()
        sender.run_until(from_ok, 60)  # recovers by itself: no restart of the web server
        sender.run_until(lambda s: len(s) >= 10 and set(s[-5:]) == {200}, 60)

    assert sender.refusals, "the outages were not seen"
    assert {status for status, _took, _retry in sender.refusals} == {503}
    assert all(retry and int(retry) > 0 for _s, _t, retry in sender.refusals)
    assert max(took for _s, took, _r in sender.refusals) < 5.0  # fast, not a hung request
    # No accepted write is lost, none stored twice.
    import psycopg2

    with psycopg2.connect(stack["pg"].url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT seq FROM devices_telemetrypoint WHERE boot_id = 's1'")
        stored = [row[0] for row in cursor.fetchall()]
    assert len(stored) == len(set(stored)) == len(sender.accepted)
    assert set(stored) == sender.accepted == set(range(sender.seq))
