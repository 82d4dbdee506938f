"""A small JSON client of the REST API over urllib: one place maps every failure to
one line and an exit code (`CliError`)."""

from __future__ import annotations

import http.client
import json
import mimetypes
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from . import BAD_INPUT, ERROR, CliError, __version__

RETRY_STATUSES = {502, 503, 504}  # a restarting server or proxy: worth a second try
GET_ATTEMPTS = 4


def detail_of(body) -> str:
    """The server's human message: `detail`, or DRF field errors flattened."""
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str):
            return body["detail"]
        parts = []
        for field, errors in body.items():
            if field in ("code", "field"):
                continue
            text = "; ".join(map(str, errors)) if isinstance(errors, list) else str(errors)
            parts.append(f"{field}: {text}")
        if parts:
            return "; ".join(parts)
    if isinstance(body, list):
        return "; ".join(map(str, body))
    return str(body)[:300]


class MultipartBody:
    """A multipart/form-data body read in chunks: a model file is never held in memory."""

    def __init__(self, fields: dict[str, str], files: dict[str, Path]):
        self.boundary = uuid.uuid4().hex
        self.parts: list = []
        for name, value in fields.items():
            self.parts.append(self._head(name) + f"\r\n{value}\r\n".encode())
        for name, path in files.items():
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self.parts.append(
                self._head(name, path.name) + f"Content-Type: {kind}\r\n\r\n".encode()
            )
            self.parts.append(path)
            self.parts.append(b"\r\n")
        self.parts.append(f"--{self.boundary}--\r\n".encode())
        self.length = sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in self.parts)
        self._index, self._handle = 0, None

    def _head(self, name: str, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename.replace(chr(34), "_")}"'
        return f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def read(self, size: int = -1) -> bytes:
        size = 1 << 20 if size is None or size < 0 else size
        while self._index < len(self.parts):
            part = self.parts[self._index]
            if isinstance(part, bytes):
                self._index += 1
                return part
            if self._handle is None:
                self._handle = open(part, "rb")  # noqa: SIM115 - closed when exhausted
            chunk = self._handle.read(size)
            if chunk:
                return chunk
            self._handle.close()
            self._handle, self._index = None, self._index + 1
        return b""


class Client:
    """`Authorization: Token <key>` requests to `<url>/api/v1/...`, JSON both ways."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def get(self, path: str, query: dict | None = None, *, not_found: str | None = None):
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        for attempt in range(GET_ATTEMPTS):
            try:
                return self._send("GET", path, not_found=not_found)
            except _Retry as retry:
                if attempt + 1 == GET_ATTEMPTS:
                    raise retry.error from None
                time.sleep(min(8.0, 0.5 * 2**attempt) * random.uniform(0.8, 1.2))
        raise AssertionError("unreachable")

    def post(self, path: str, data: dict | None = None, *, not_found: str | None = None):
        body = json.dumps(data or {}).encode()
        return self._once("POST", path, body, "application/json", not_found)

    def post_files(self, path: str, fields: dict[str, str], files: dict[str, Path]):
        body = MultipartBody(fields, files)
        return self._once("POST", path, body, body.content_type, None, length=body.length)

    def _once(self, method, path, body, content_type, not_found, length=None):
        try:
            return self._send(
                method,
                path,
                body=body,
                content_type=content_type,
                not_found=not_found,
                length=length,
            )
        except _Retry as retry:  # never resend a write: it may have happened
            raise retry.error from None

    def _send(
        self,
        method: str,
        path: str,
        *,
        body=None,
        content_type: str | None = None,
        not_found: str | None = None,
        length: int | None = None,
    ):
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", f"edgefleet-cli/{__version__}")
        if self.token:
            request.add_header("Authorization", f"Token {self.token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        if length is not None:
            request.add_header("Content-Length", str(length))
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return _json(response.read(), response.status, self.url)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw or b"{}")
            except ValueError:
                payload = raw.decode("utf-8", "replace").strip()
            raise self._refusal(exc.code, payload, not_found) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retry(
                CliError(f"cannot reach the server at {self.url}: {reason}", ERROR)
            ) from None

    def _refusal(self, status: int, payload, not_found: str | None):
        detail = detail_of(payload)
        if status == 401:
            return CliError(
                f"the server refused the credentials (401): {detail}. Check "
                "EDGEFLEET_TOKEN or run `edgefleet login`.",
                BAD_INPUT,
            )
        if status == 403:
            return CliError(f"permission denied (403): {detail}", BAD_INPUT)
        if status == 404:
            return CliError(not_found or f"not found (404): {detail}", BAD_INPUT)
        if status in RETRY_STATUSES:
            return _Retry(CliError(f"server unavailable ({status}): {detail}", ERROR))
        if status >= 500:
            return CliError(f"server error ({status}): {detail}", ERROR)
        code = payload.get("code") if isinstance(payload, dict) else None
        return CliError(f"refused ({status}{', ' + code if code else ''}): {detail}", BAD_INPUT)


class _Retry(Exception):
    """A failure a GET may retry; carries the error to raise when it may not."""

    def __init__(self, error: CliError):
        super().__init__(error.message)
        self.error = error


def _json(raw: bytes, status: int, url: str):
    if status == 204 or not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise CliError(
            f"unexpected answer from {url} (not JSON; is this an EdgeFleet server?)", ERROR
        ) from None
