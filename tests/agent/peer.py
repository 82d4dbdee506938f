"""A small real HTTP server that plays the EdgeFleet device API for agent tests.

It runs in a thread on 127.0.0.1 (port 0), signs manifests with its own
Ed25519 key, serves artifacts with Range support or with a chosen fault, and
records every request it saw.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.agent import manifest as mf

DEVICE_UID = "dev-test-1"
DEVICE_TOKEN = "edf_device_token_1"


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that hang up mid-stream are part of the tests


class Peer:
    def __init__(self):
        self.key = Ed25519PrivateKey.generate()
        self.artifacts: dict[str, bytes] = {}
        self.faults: dict[str, str] = {}  # sha256 -> good|tamper|longer|endless|bad_range|...
        self.update: tuple[int, dict | None, dict] = (204, None, {})
        self.update_etag = True
        # Signed timestamp statement on every check-in answer, as the real server
        # (docs/manifest.md, "Freshness"); False plays a server without them.
        self.timestamps = True
        self.timestamp_ttl_s = 600
        self.timestamp_key: Ed25519PrivateKey | None = None  # default: self.key
        self.next_key: dict | None = None  # announced in statements
        self.requests: list[dict] = []
        self.statuses: list[dict] = []
        self.telemetry: list[dict] = []
        self.logs: list[dict] = []
        self.inventory: list[dict] = []
        self.enrollments: list[dict] = []
        self.max_batch = 10_000
        self.overload: list[float] = []  # answer 429 with these Retry-After values first
        self.down = False  # answer 503 to everything
        self.poll_interval_s = 30
        # What the current server adds (None: plays an older one): X-Upload-Interval on
        # check-in answers, X-Update-ETag on upload answers, an ETag on a 204.
        self.upload_interval_s: float | None = None
        self.upload_etag: str | None = None
        self.empty_etag: str | None = None
        self.benchmarks_waiting: int | None = None  # X-Benchmarks on check-in answers
        self.redirects: dict[str, str] = {}  # path -> absolute URL (a presigned storage URL)
        self.lock = threading.Lock()
        self.server = QuietServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Peer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def public_b64(self) -> str:
        return mf.b64(mf.raw_public_key(self.key.public_key()))

    # --- content -------------------------------------------------------------------------
    def add_artifact(self, data: bytes, fault: str = "good") -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.artifacts[sha] = data
        self.faults[sha] = fault
        return sha

    def manifest(
        self,
        artifacts: list[tuple[str, bytes]],
        *,
        version: int = 1,
        device: str = DEVICE_UID,
        slot: str = "classifier",
        expires_in: int = 3600,
        key: Ed25519PrivateKey | None = None,
        artifact_fields: dict | None = None,
        **extra,
    ) -> dict:
        now = datetime.now(UTC)
        items = []
        for index, (name, data) in enumerate(artifacts):
            sha = hashlib.sha256(data).hexdigest()
            items.append(
                {
                    "name": name,
                    "model_version": index + 1,
                    "sha256": sha,
                    "size": len(data),
                    "url": f"/api/v1/device/artifacts/{sha}",
                    **(artifact_fields or {}),
                }
            )
        payload = {
            "schema": 1,
            "device": device,
            "deployment": 11,
            "slot": slot,
            "version": version,
            "issued_at": mf.format_time(now),
            "expires_at": mf.format_time(now + timedelta(seconds=expires_in)),
            "artifacts": items,
            "default": artifacts[0][0],
            "policy": {},
            "poll_interval_s": self.poll_interval_s,
            "install_window": None,
            "next_key": None,
        }
        payload.update(extra)
        return mf.sign(payload, key or self.key)

    def timestamp(self, etag: str | None, data: bytes | None, body) -> str:
        """The `X-Signed-Timestamp` value for an answer with this ETag and body."""
        now = datetime.now(UTC)
        envelopes = (
            body.get("manifests", [])
            if isinstance(body, dict) and "manifests" in body
            else [body]
            if body
            else []
        )
        updates = {
            e["manifest"].get("slot") or "default": e["manifest"]["version"]
            for e in envelopes
            if isinstance(e, dict) and "manifest" in e
        }
        payload = {
            "schema": 1,
            "type": "timestamp",
            "device": DEVICE_UID,
            "etag": etag,
            "body_sha256": hashlib.sha256(data).hexdigest() if data else None,
            "updates": updates,
            "issued_at": mf.format_time(now),
            "expires_at": mf.format_time(now + timedelta(seconds=self.timestamp_ttl_s)),
            "next_key": self.next_key,
        }
        return mf.sign_statement(payload, self.timestamp_key or self.key)

    def offer(self, envelope: dict | None) -> None:
        self.update = (200, envelope, {}) if envelope else (204, None, {})

    def seen(self, method: str, prefix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(prefix)]


def _handler(peer: Peer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _record(self, body=None):
            with peer.lock:
                peer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "t": time.monotonic(),
                    }
                )

        def _send(self, status: int, body=None, headers: dict | None = None):
            data = (
                b""
                if body is None
                else (body if isinstance(body, bytes) else json.dumps(body).encode())
            )
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if status not in (204, 304):
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data and status not in (204, 304):
                self.wfile.write(data)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {DEVICE_TOKEN}":
                self._send(401, {"code": "unauthorized"})
                return False
            return True

        def _read_json(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw) if raw else None

        def do_GET(self):
            self._record()
            if peer.down:
                return self._send(503, {"code": "down"}, {"Retry-After": "1"})
            if self.path in peer.redirects:
                if not self._authorized():
                    return None
                return self._send(302, b"", {"Location": peer.redirects[self.path]})
            if self.path.startswith("/presigned/"):
                return self._artifact(self.path.rsplit("/", 1)[1])
            if self.path.startswith("/api/v1/device/update"):
                if not self._authorized():
                    return None
                if peer.overload:
                    return self._send(
                        429, {"code": "throttled"}, {"Retry-After": str(peer.overload.pop(0))}
                    )
                status, body, headers = peer.update
                headers = {**headers, "X-Poll-Interval": str(peer.poll_interval_s)}
                if peer.upload_interval_s is not None:
                    headers["X-Upload-Interval"] = str(peer.upload_interval_s)
                if peer.benchmarks_waiting is not None:
                    headers["X-Benchmarks"] = str(peer.benchmarks_waiting)
                data = json.dumps(body).encode() if body is not None else None
                etag = None
                if body is not None and peer.update_etag:
                    etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
                    headers["ETag"] = etag
                elif body is None and peer.empty_etag:
                    etag = headers["ETag"] = peer.empty_etag
                if peer.timestamps:
                    headers[mf.TIMESTAMP_HEADER] = peer.timestamp(etag, data, body)
                if etag is not None and self.headers.get("If-None-Match") == etag:
                    return self._send(304, None, headers)
                return self._send(status, data if data is not None else body, headers)
            if self.path.startswith("/api/v1/device/artifacts/"):
                if not self._authorized():
                    return None
                return self._artifact(self.path.rsplit("/", 1)[1])
            return self._send(404, {"code": "not_found"})

        def _artifact(self, sha: str):
            data = peer.artifacts.get(sha)
            if data is None:
                return self._send(404, {"code": "not_found"})
            fault = peer.faults.get(sha, "good")
            if fault == "tamper":
                data = data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
            start = 0
            rng = self.headers.get("Range")
            if rng and fault != "no_range":
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    return self._send(416, None, {"Content-Range": f"bytes */{len(data)}"})
            if fault in {"longer", "endless"}:
                # No Content-Length: the stream ends when the connection closes.
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                self.wfile.write(data + b"X" * 100)
                if fault == "endless":
                    deadline = time.monotonic() + 10
                    try:
                        while time.monotonic() < deadline:
                            self.wfile.write(b"\0" * 65536)
                    except OSError:
                        pass
                return None
            body = data[start:]
            headers = {}
            status = 200
            if rng and fault != "no_range":
                status = 206
                shown = start + 1 if fault == "bad_range" else start
                total = len(data) + 5 if fault == "bad_total" else len(data)
                headers["Content-Range"] = f"bytes {shown}-{len(data) - 1}/{total}"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault == "slow":
                for offset in range(0, len(body), 1024):
                    self.wfile.write(body[offset : offset + 1024])
                    self.wfile.flush()
                    time.sleep(0.01)
            elif fault == "trickle":  # slow retrieval: 1000 bytes every 0.25 s
                try:
                    for offset in range(0, len(body), 1000):
                        if peer.faults.get(sha) != "trickle":
                            break  # the test ended the attack: hang up
                        self.wfile.write(body[offset : offset + 1000])
                        self.wfile.flush()
                        time.sleep(0.25)
                except OSError:
                    pass
                self.close_connection = True
            elif fault == "cut":  # half the bytes, then the connection drops
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
            else:
                self.wfile.write(body)
            return None

        def do_POST(self):
            body = self._read_json()
            self._record(body)
            if peer.down:
                return self._send(503, {"code": "down"}, {"Retry-After": "1"})
            if self.path == "/api/v1/device/enroll":
                peer.enrollments.append(body)
                if body.get("token") != "enroll-me":
                    return self._send(403, {"code": "bad_enrollment_token"})
                raw = mf.raw_public_key(peer.key.public_key())
                return self._send(
                    201,
                    {
                        "device_id": DEVICE_UID,
                        "token": DEVICE_TOKEN,
                        "server_public_key": peer.public_b64,
                        "server_key_fingerprint": hashlib.sha256(raw).hexdigest(),
                    },
                )
            if not self._authorized():
                return None
            if peer.overload:
                return self._send(
                    429, {"code": "throttled"}, {"Retry-After": str(peer.overload.pop(0))}
                )
            if self.path == "/api/v1/device/update/status":
                peer.statuses.append(body)
                return self._send(200, {"ok": True})
            if self.path in {"/api/v1/device/telemetry", "/api/v1/device/logs"}:
                items = body.get("batch") or []
                if len(items) > peer.max_batch:
                    return self._send(413, {"code": "too_large"})
                (peer.telemetry if "telemetry" in self.path else peer.logs).append(body)
                hint = {"X-Update-ETag": peer.upload_etag} if peer.upload_etag else {}
                return self._send(200, {"count": len(items)}, hint)
            return self._send(404, {"code": "not_found"})

        def do_PUT(self):
            body = self._read_json()
            self._record(body)
            if not self._authorized():
                return None
            peer.inventory.append(body)
            return self._send(200, {"ok": True})

    return Handler
