"""HTTP to the EdgeFleet server: stdlib only, a timeout on every call.

`Client.request` never raises for an HTTP status: it returns a `Response`
whatever the code. Network failures raise `Unreachable`. Every answer is read
up to a cap (`max_body`, default `MAX_BODY`): an announced or streamed body
past it is refused with `TooLarge` (an `Unreachable`: the exchange failed)
after reading at most the cap, so an endless answer costs no memory; and an
answer must be complete within the timeout as a whole, not per read, so a
trickled one cannot hold the agent either. `Pacer` decides when
to talk next: the server-advised interval plus jitter after success,
exponential backoff with full jitter after errors, never sooner than the
advised interval or a `Retry-After` (docs/reliability.md U10, E4).
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime

from . import __version__

DEFAULT_TIMEOUT_S = 15.0
USER_AGENT = f"edgefleet-agent/{__version__}"
# Status, telemetry, log and inventory answers are a few hundred bytes; enrollment
# about one kilobyte. The check-in asks for more (one envelope per slot).
MAX_BODY = 64 * 1024
READ_CHUNK = 64 * 1024


class Unreachable(Exception):
    """The server could not be reached (DNS, refused, reset, timeout)."""


class TooLarge(Unreachable):
    """The answer is longer than the caller expects: refused, not buffered."""


@dataclass
class Response:
    status: int
    headers: dict = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    raw: object = None  # the open stream when `stream=True`

    def json(self):
        """The body as JSON; ValueError for anything else (deep nesting included)."""
        if not self.body:
            return None
        try:
            return json.loads(self.body.decode("utf-8"))
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None

    def header(self, name: str, default=None):
        return self.headers.get(name.lower(), default)

    def count(self, name: str) -> int | None:
        """A header holding a count (`X-Benchmarks`); None when absent or not a number."""
        value = self.header(name, "")
        return max(0, int(value)) if value.strip().isdigit() else None

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.header("retry-after"))

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()


def parse_retry_after(value, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date)."""
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, moment.timestamp() - current)


class _NoErrors(urllib.request.HTTPErrorProcessor):
    """Hand every status to the caller instead of raising HTTPError."""

    def http_response(self, request, response):
        if response.status in {301, 302, 303, 307, 308}:
            return super().http_response(request, response)  # let redirects happen
        return response

    https_response = http_response


class Client:
    def __init__(
        self, server: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S
    ):
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        # No ProxyHandler: the agent talks to its configured server only (N1).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoErrors())

    def url(self, path_or_url: str) -> str:
        if urllib.parse.urlsplit(path_or_url).scheme:
            return path_or_url
        return self.server + "/" + path_or_url.lstrip("/")

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body=None,
        headers: dict | None = None,
        stream: bool = False,
        timeout: float | None = None,
        max_body: int = MAX_BODY,
    ) -> Response:
        timeout = timeout or self.timeout
        if not stream:
            response = self._direct(method, path, json_body, headers or {}, timeout, max_body)
            if response is not None:
                return response
        data = None
        request = urllib.request.Request(self.url(path), method=method)
        request.add_header("User-Agent", USER_AGENT)
        request.add_header("Accept", "application/json")
        if self.token:
            # Unredirected: a presigned storage URL must not receive the device token.
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            raw = self._opener.open(request, data=data, timeout=timeout)
        except urllib.error.HTTPError as exc:  # a redirect loop or an unfollowable one
            return Response(
                exc.code,
                {k.lower(): v for k, v in exc.headers.items()},
                _read_quietly(exc, max_body),
            )
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            raise Unreachable(f"{method} {path}: {exc}") from exc
        response = Response(raw.status, {k.lower(): v for k, v in raw.headers.items()})
        if stream:
            response.raw = raw
            return response
        try:
            response.body = read_bounded(
                raw,
                response.header("content-length"),
                max_body,
                f"{method} {path}",
                deadline=time.monotonic() + timeout,
            )
        except OSError as exc:
            raise Unreachable(f"{method} {path}: {exc}") from exc
        finally:
            raw.close()
        return response

    def _direct(
        self, method: str, path: str, json_body, headers: dict, timeout: float, max_body: int
    ) -> Response | None:
        """The answer by a cheaper route than urllib, or None: urllib it is."""
        return None

    def post(self, path: str, body, **kwargs) -> Response:
        return self.request("POST", path, json_body=body, **kwargs)


class LeanClient(Client):
    """`Client` over a bare socket for plain-HTTP calls to the server: the request
    written in one piece, the answer read up to its Content-Length, then closed.
    About half the CPU of urllib per request, which matters to the fleet
    simulator (thousands of devices in one process, on the server's machine in
    benchmarks). Streams, absolute URLs (storage), TLS and redirects go through
    `Client`."""

    def __init__(self, server: str, token: str | None = None, **kwargs):
        super().__init__(server, token, **kwargs)
        parts = urllib.parse.urlsplit(self.server)
        self._plain = parts.scheme == "http" and parts.hostname is not None
        self._address = (parts.hostname, parts.port or 80)
        self._family = None  # resolved on first use, once
        self._host = parts.netloc
        self._base = parts.path.rstrip("/")

    def _direct(
        self, method: str, path: str, json_body, headers: dict, timeout: float, max_body: int
    ) -> Response | None:
        if not self._plain or urllib.parse.urlsplit(path).scheme:
            return None
        body = (
            b""
            if json_body is None
            else json.dumps(json_body, separators=(",", ":")).encode("utf-8")
        )
        lines = [
            f"{method} {self._base}/{path.lstrip('/')} HTTP/1.1",
            f"Host: {self._host}",
            f"User-Agent: {USER_AGENT}",
            "Accept: application/json",
            "Connection: close",
        ]
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        if json_body is not None:
            lines.append("Content-Type: application/json")
        if body or method in {"POST", "PUT", "PATCH"}:
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        message = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        try:
            if self._family is None:
                family, _, _, _, address = socket.getaddrinfo(
                    *self._address, type=socket.SOCK_STREAM
                )[0]
                self._family, self._address = family, address
            raw = _exchange(self._family, self._address, message, timeout, max_body)
            response = _parse(raw, max_body)
        except TooLarge as exc:
            raise TooLarge(f"{method} {path}: {exc}") from exc
        except (OSError, ValueError, IndexError) as exc:
            raise Unreachable(f"{method} {path}: {exc}") from exc
        if response.status in {301, 302, 303, 307, 308}:
            return None  # urllib follows redirects
        return response


HEAD_LIMIT = 64 * 1024  # status line and headers


def _exchange(
    family, address: tuple, message: bytes, timeout: float, max_body: int = MAX_BODY
) -> bytes:
    """Send `message`, read the answer: to its Content-Length if it has one, else to EOF;
    never more than the head limit plus `max_body` (`TooLarge`)."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        sock.connect(address)
        sock.sendall(message)
        chunks, size, wanted, head_size = [], 0, None, None
        while wanted is None or size < wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"answer not complete after {timeout:.0f} s")
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if head_size is None:
                data = b"".join(chunks)
                chunks = [data]
                if b"\r\n\r\n" not in data:
                    if size > HEAD_LIMIT:
                        raise TooLarge("answer head too long")
                    continue
                head = data.split(b"\r\n\r\n", 1)[0].lower()
                head_size = len(head) + 4
                length = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
                if data[9:12] in (b"204", b"304"):
                    wanted = head_size
                elif length is not None and b"transfer-encoding: chunked" not in head:
                    if int(length.group(1)) > max_body:
                        raise TooLarge(
                            f"answer announces {int(length.group(1))} bytes, "
                            f"at most {max_body} expected"
                        )
                    wanted = head_size + int(length.group(1))
            if head_size is not None and size - head_size > max_body + 4096:
                # chunked framing adds a little; the body is checked again once parsed
                raise TooLarge(f"answer longer than the {max_body} bytes expected")
        return b"".join(chunks)


def _parse(raw: bytes, max_body: int = MAX_BODY) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
        if len(body) > max_body:
            raise TooLarge(f"answer longer than the {max_body} bytes expected")
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Response(status, headers, body)


def _unchunk(data: bytes) -> bytes:
    out, position = [], 0
    while True:
        end = data.index(b"\r\n", position)
        size = int(data[position:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        position = end + 2 + size + 2


def read_bounded(
    stream, announced, max_body: int, what: str = "answer", deadline: float | None = None
) -> bytes:
    """Read a whole body, refusing (`TooLarge`) past `max_body` without buffering more,
    and (`TimeoutError`) when it is not complete by `deadline` (a trickled answer)."""
    if announced is not None and str(announced).strip().isdigit() and int(announced) > max_body:
        raise TooLarge(
            f"{what}: answer announces {int(announced)} bytes, at most {max_body} expected"
        )
    parts, size = [], 0
    read = getattr(stream, "read1", stream.read)  # what arrived, not a full chunk
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{what}: answer not complete in time")
        chunk = read(min(READ_CHUNK, max_body + 1 - size))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
        if size > max_body:
            raise TooLarge(f"{what}: answer longer than the {max_body} bytes expected")


def _read_quietly(exc: urllib.error.HTTPError, max_body: int = MAX_BODY) -> bytes:
    try:
        return read_bounded(exc, exc.headers.get("content-length"), max_body)
    except (OSError, TooLarge):
        return b""


class Pacer:
    """When to contact the server next (U10, E4).

    After success: the advised interval times a jitter factor in [1, 1 + jitter]
    (never sooner). After a failure: full jitter over an exponentially growing
    cap, but never less than the advised interval nor the server's `Retry-After`.
    """

    def __init__(
        self,
        interval_s: float = 30.0,
        *,
        base_s: float = 1.0,
        cap_s: float = 900.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ):
        self.interval_s = interval_s
        self.base_s = base_s
        self.cap_s = cap_s
        self.jitter = jitter
        self.failures = 0
        self.rng = rng or random.Random()

    def advise(self, interval_s) -> None:
        try:
            value = float(interval_s)
        except (TypeError, ValueError):
            return
        if value > 0:
            self.interval_s = value

    def success(self) -> float:
        self.failures = 0
        return self.interval_s * (1.0 + self.rng.uniform(0.0, self.jitter))

    def failure(self, retry_after: float | None = None) -> float:
        self.failures += 1
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.failures, 30))
        delay = self.rng.uniform(0.0, ceiling)
        return max(delay, self.interval_s, retry_after or 0.0)


def sleep(seconds: float) -> None:
    time.sleep(max(0.0, seconds))
