"""Slow clients cannot take the API down behind the production proxy.

A real gunicorn (fleet/gunicorn.py, two sync workers) serves the test
database; nginx runs from deploy/nginx.conf.template, rendered and started by
deploy/nginx-run.sh exactly as in docker-compose.yml. Six clients send
`POST /api/v1/device/enroll` with `Content-Length: 100` and one byte of body,
one more trickles its header a byte at a time. Through nginx a device's
check-in still answers at once; straight to gunicorn the same clients hold
every worker and the check-in stalls.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from benchmarks._harness import free_port, start_gunicorn, stop
from tests.compression.jobs_support import wait_for
from tests.conftest import need_service, port_open
from tests.e2e.servers import ROOT, enrolled_device_token, web_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
TEMPLATE = ROOT / "deploy" / "nginx.conf.template"
WORKERS = 2
SLOW_BODIES = 6  # more than the workers
BOUND_S = 8.0  # generous: a check-in takes milliseconds on a quiet machine
SLOW_BODY = (
    b"POST /api/v1/device/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
)


@pytest.fixture
def device_token(db, admin_user):
    return enrolled_device_token(admin_user, "behind-proxy")


@pytest.fixture
def gunicorn_port(device_token, tmp_path):
    port = free_port()
    web = start_gunicorn(web_env(tmp_path / "var"), port, WORKERS)
    try:
        yield port
    finally:
        stop(web)


@contextlib.contextmanager
def running_nginx(servers: str):
    """nginx from deploy/nginx.conf.template via deploy/nginx-run.sh (as compose
    runs it) in front of `servers` ("server host:port;" per web node); yields its port."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if not nginx or not shutil.which("envsubst"):
        need_service("nginx", "apt-get install nginx gettext-base")
    port = free_port()
    # not under pytest's tmp_path: nginx's workers (nobody) must reach their temp files
    run_dir = Path(tempfile.mkdtemp(prefix="edgefleet-nginx-"))
    run_dir.chmod(0o755)
    env = {
        **os.environ,
        "NGINX_LISTEN": f"127.0.0.1:{port}",
        "NGINX_RUN_DIR": str(run_dir),
        "PATH": f"{Path(nginx).parent}:{os.environ.get('PATH', '')}",
        "NGINX_UPSTREAM_SERVERS": servers,
    }
    proxy = subprocess.Popen(
        ["sh", str(ROOT / "deploy" / "nginx-run.sh"), str(TEMPLATE)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port, 0.2) or proxy.poll() is not None, 30, "nginx")
        assert proxy.poll() is None, proxy.stderr.read().decode()
        yield port
    finally:
        stop(proxy)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def nginx_port(gunicorn_port):
    # several upstream servers are supported: here the same node twice
    # (tests/e2e/test_two_nodes.py runs two)
    with running_nginx(
        f"server 127.0.0.1:{gunicorn_port}; server 127.0.0.1:{gunicorn_port} backup;"
    ) as port:
        yield port


class SlowClients:
    """Six stalled bodies and one header sent a byte every 0.2 s."""

    def __init__(self, port: int):
        self.bodies = []
        for _ in range(SLOW_BODIES):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(SLOW_BODY)
            self.bodies.append(sock)
        self.stopped = threading.Event()
        self.trickle = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.trickle.sendall(b"GET /api/v1/device/update HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                self.trickle.sendall(b"a")
            except OSError:  # the proxy gave up on it: that is its job
                return

    def still_waiting(self) -> int:
        """Slow bodies not yet answered or closed by the server."""
        readable, _w, _x = select.select(self.bodies, [], [], 0)
        return len(self.bodies) - len(readable)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        for sock in [*self.bodies, self.trickle]:
            sock.close()


def checkin(port: int, token: str, timeout: float) -> tuple[int, float]:
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "GET",
            "/api/v1/device/update",
            headers={"Authorization": f"Bearer {token}", "Host": "127.0.0.1"},
        )
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - began
    finally:
        conn.close()


def test_slow_clients_do_not_stall_checkins_behind_nginx(nginx_port, gunicorn_port, device_token):
    assert checkin(nginx_port, device_token, 30)[0] == 204  # warm: workers up, token known

    slow = SlowClients(nginx_port)
    try:
        took = []
        for _ in range(5):
            status, seconds = checkin(nginx_port, device_token, BOUND_S)
            assert status == 204
            took.append(seconds)
        assert max(took) < BOUND_S, took
        assert slow.still_waiting() == SLOW_BODIES  # nginx holds them, not gunicorn
    finally:
        slow.close()

    # The same clients straight at gunicorn hold both workers: the check-in stalls.
    slow = SlowClients(gunicorn_port)
    try:
        with pytest.raises(TimeoutError):
            checkin(gunicorn_port, device_token, BOUND_S)
    finally:
        slow.close()
    # once they go away the workers are free again
    wait_for(lambda: checkin(gunicorn_port, device_token, 5)[0] == 204, 60, "recovery")


def test_proxy_answers_json_for_oversize_device_bodies(nginx_port, device_token):
    conn = http.client.HTTPConnection("127.0.0.1", nginx_port, timeout=30)
    try:
        conn.request(
            "POST",
            "/api/v1/device/telemetry",
            body=b"x" * (9 * 1024 * 1024),
            headers={"Authorization": f"Bearer {device_token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        body = response.read()
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("nginx closed the connection instead of answering 413")
    finally:
        conn.close()
    assert response.status == 413
    assert b'"code": "too_large"' in body
