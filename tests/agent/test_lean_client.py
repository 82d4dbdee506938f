"""LeanClient (bare-socket HTTP for the simulator) against a real local HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devices.agent.client import LeanClient, Unreachable


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list = []

    def log_message(self, *args):
        pass

    def _answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304) and not any(n == "Transfer-Encoding" for n, _ in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        Handler.seen.append(("GET", self.path, dict(self.headers)))
        if self.path == "/api/v1/device/update":
            if self.headers.get("If-None-Match") == '"e1"':
                return self._answer(304, headers=[("ETag", '"e1"')])
            return self._answer(204, headers=[("ETag", '"none"'), ("X-Poll-Interval", "30")])
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n')
            return None
        if self.path == "/moved":
            return self._answer(302, headers=[("Location", "/api/v1/device/update")])
        return self._answer(404, b'{"detail":"nope"}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Handler.seen.append(("POST", self.path, dict(self.headers), body))
        self._answer(
            200, json.dumps({"echo": json.loads(body)}).encode(), headers=[("X-EdgeFleet-New", "1")]
        )


@pytest.fixture
def server():
    Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_get_204_and_304_with_headers(server):
    client = LeanClient(server, "tok-1")
    first = client.request("GET", "/api/v1/device/update")
    assert (first.status, first.header("etag"), first.header("X-Poll-Interval")) == (
        204,
        '"none"',
        "30",
    )
    again = client.request("GET", "api/v1/device/update", headers={"If-None-Match": '"e1"'})
    assert again.status == 304 and again.body == b""
    assert Handler.seen[1][:2] == ("GET", "/api/v1/device/update")
    headers = Handler.seen[0][2]
    assert headers["Authorization"] == "Bearer tok-1"
    assert headers["Connection"] == "close" and headers["User-Agent"].startswith("edgefleet")


def test_post_json_round_trip(server):
    response = LeanClient(server + "/", "tok").post(
        "/api/v1/device/telemetry", {"batch": [{"seq": 1, "m": "ü"}]}
    )
    assert response.status == 200
    assert response.json() == {"echo": {"batch": [{"seq": 1, "m": "ü"}]}}
    assert response.header("x-edgefleet-new") == "1"
    assert Handler.seen[0][2]["Content-Type"] == "application/json"


def test_chunked_error_and_redirect(server):
    client = LeanClient(server, "tok")
    assert client.request("GET", "/chunked").json() == {"a": 1}
    missing = client.request("GET", "/nothing")
    assert missing.status == 404 and missing.json() == {"detail": "nope"}
    moved = client.request("GET", "/moved")  # redirects go through urllib's Client
    assert moved.status == 204


def test_unreachable_raises():
    with pytest.raises(Unreachable):
        LeanClient("http://127.0.0.1:9", "tok", timeout=2).request("GET", "/x")
