"""Every read the agent does is bounded by what it expects: an endless or huge
answer is refused after at most the cap, never buffered whole.

A counting server answers with up to 64 MB of spaces (or announces 400 MB) and
counts what it could write before the agent hung up; socket buffers let a few
MB more through, nothing near the whole body.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from devices.agent import cli
from devices.agent.client import Client, LeanClient, Unreachable
from devices.agent.updater import CheckInError, Updater
from tests.agent.peer import DEVICE_TOKEN

BODY = 64 * 1024 * 1024
SLACK = 16 * 1024 * 1024  # what kernel buffers may accept past the agent's cap


class Counting:
    """Answers every request with `head` then up to `BODY` spaces; counts what it sent."""

    def __init__(self, head: bytes):
        self.head = head
        self.sent = 0
        self.done = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            chunk = b" " * 65536
            try:
                conn.sendall(self.head)
                while self.sent < BODY:
                    conn.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:
                pass
        self.done.set()

    def close(self):
        self.sock.close()


@pytest.fixture(params=["no-length", "announced"])
def endless(request):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += (
        b"Connection: close\r\n\r\n"
        if request.param == "no-length"
        else b"Content-Length: 400000000\r\n\r\n"
    )
    server = Counting(head)
    yield server
    server.close()


def assert_stopped_early(server):
    assert server.done.wait(30)
    assert server.sent < SLACK, f"{server.sent} bytes read of an answer nobody needs"


def test_checkin_answer_is_capped(endless, state):
    state.update_config(server=endless.url)
    updater = Updater(
        state, Client(endless.url, DEVICE_TOKEN, timeout=10), health_check=lambda paths: None
    )
    with pytest.raises(CheckInError, match="expected"):
        updater.check_in()
    assert_stopped_early(endless)


@pytest.mark.parametrize("client_class", [Client, LeanClient])
def test_status_answer_is_capped(endless, client_class):
    client = client_class(endless.url, DEVICE_TOKEN, timeout=10)
    with pytest.raises(Unreachable, match="expected"):
        client.post("/api/v1/device/update/status", {"state": "downloading"})
    assert_stopped_early(endless)


def test_enrollment_answer_is_capped(endless, tmp_path, capsys):
    code = cli.main(
        ["enroll", "--server", endless.url, "--token", "t", "--state-dir", str(tmp_path / "s")]
    )
    assert code != 0
    assert "expected" in capsys.readouterr().err
    assert_stopped_early(endless)


def test_deeply_nested_json_is_a_refusal_not_a_crash(peer, state, client):
    peer.update = (200, None, {})
    nested = b"[" * 200_000 + b"]" * 200_000
    peer.timestamps = False

    class Raw(Client):
        def request(self, *args, **kwargs):
            response = super().request(*args, **kwargs)
            response.body = nested
            return response

    updater = Updater(
        state, Raw(peer.url, DEVICE_TOKEN, timeout=5), health_check=lambda paths: None
    )
    with pytest.raises(CheckInError, match="not JSON"):
        updater.check_in()


class Trickle(Counting):
    """A valid head announcing 1000 bytes, then one byte every 0.1 s."""

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n"
                )
                for _ in range(1000):
                    conn.sendall(b" ")
                    self.sent += 1
                    time.sleep(0.1)
            except OSError:
                pass
        self.done.set()


@pytest.mark.parametrize("client_class", [Client, LeanClient])
def test_trickled_answer_is_cut_at_the_timeout(client_class):
    server = Trickle(b"")
    try:
        client = client_class(server.url, DEVICE_TOKEN, timeout=1.5)
        start = time.monotonic()
        with pytest.raises(Unreachable):
            client.request("GET", "/api/v1/device/update")
        assert time.monotonic() - start < 5  # not 100 s: the whole answer had 1.5 s
    finally:
        server.close()
