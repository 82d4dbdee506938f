"""A man in the middle between a real agent and the real server, for attack tests.

Forwards every request to the live server and lets a test rewrite the answer
(`tamper(path, token, status, headers, body) -> (status, headers, body)`).
Artifact redirects to presigned S3 URLs are followed here, so the agent gets
the bytes through the proxy on any storage.
"""

from __future__ import annotations

import http.client
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "location"}


class Proxy:
    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.tamper = None
        self.seen: list[tuple[str, str, dict]] = []  # (method, path, request headers)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.relay(self)

            do_POST = do_PUT = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def relay(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP | {"host"}}
        self.seen.append((handler.command, handler.path, headers))
        status, reply_headers, payload = self._forward(handler.command, handler.path, headers, body)
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        if self.tamper is not None:
            status, reply_headers, payload = self.tamper(
                handler.path, token, status, reply_headers, payload
            )
        handler.send_response(status)
        for name, value in reply_headers.items():
            if name.lower() not in HOP:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            status, reply = response.status, dict(response.getheaders())
            payload = response.read()
        finally:
            conn.close()
        if status in (301, 302, 307) and "/artifacts/" in path:  # presigned S3 URL
            extra = {k: v for k, v in headers.items() if k.lower() == "range"}
            request = urllib.request.Request(reply["Location"], headers=extra)
            try:
                with urllib.request.urlopen(request, timeout=60) as fetched:
                    return fetched.status, dict(fetched.getheaders()), fetched.read()
            except urllib.error.HTTPError as exc:
                return exc.code, dict(exc.headers), exc.read()
        return status, reply, payload
