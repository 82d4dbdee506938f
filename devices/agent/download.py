"""Resumable artifact download bounded by the signed size (docs/reliability.md U4, U8).

The bytes go to `downloads/<sha256>.part` in the state directory. After a cut
at byte k the next attempt asks `Range: bytes=k-`; a 206 whose `Content-Range`
does not start at k or names another total is discarded and the download
restarts from zero. Reading stops at the signed size: one byte more or an
endless stream is refused. The sha256 of the whole file is checked at the end,
always, whether or not the download was resumed.

Slow retrieval: each attempt has an overall deadline computed from the signed
size (`DownloadLimits`: a grace period plus the bytes still missing at the
minimum rate), checked after every read, and reads return what has arrived
(`read1`) instead of waiting for a full chunk, so a trickle cannot hold the
agent longer than the deadline plus one socket timeout. What arrived stays in
the `.part` file for the next attempt. In the agent loop a `BackgroundDownload`
runs the download in a worker thread so check-ins and telemetry go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .client import Client, Unreachable
from .testhooks import pause

CHUNK = 64 * 1024
CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


class DownloadError(Exception):
    """`transient`: worth retrying later (network); else the artifact is refused."""

    def __init__(self, code: str, message: str, *, transient: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class DownloadLimits:
    """An attempt may take `grace_s` + missing bytes / `min_rate_bps` seconds at most."""

    min_rate_bps: float = 16 * 1024.0
    grace_s: float = 60.0

    def deadline_s(self, missing: int) -> float:
        return self.grace_s + max(0, missing) / max(1.0, self.min_rate_bps)


class BackgroundDownload:
    """`work(payload)` in a daemon thread; the loop asks `done()` and then `result()`."""

    def __init__(self, key, work: Callable[[dict], dict], payload: dict):
        self.key = key
        self._result: dict | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(work, payload),
            daemon=True,
            name=f"download-{payload.get('slot')}",
        )
        self._thread.start()

    def _run(self, work, payload) -> None:
        try:
            self._result = work(payload)
        except BaseException as exc:  # handed to the loop, which decides
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> dict:
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _discard(part: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        part.unlink()


def download(
    client: Client,
    url: str,
    part: Path,
    *,
    size: int,
    sha256: str,
    timeout: float | None = None,
    on_progress=None,
    limits: DownloadLimits | None = None,
) -> Path:
    """Fetch `url` into `part` until it holds exactly `size` bytes with `sha256`."""
    limits = limits or DownloadLimits()
    part.parent.mkdir(parents=True, exist_ok=True)
    restarted = False
    for _attempt in range(3):
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            _discard(part)
            have = 0
        resumed = have > 0
        deadline = time.monotonic() + limits.deadline_s(size - have)
        if (
            have < size
            and _fetch(client, url, part, have, size, timeout, on_progress, deadline) == "restart"
        ):
            _discard(part)
            restarted = True
            continue
        pause("verify")
        if sha256_file(part) == sha256:
            return part
        _discard(part)
        if not resumed or restarted:
            raise DownloadError("hash_mismatch", "artifact sha256 does not match the manifest")
        # A resumed file may hold bytes a power cut never wrote: one fresh try.
        restarted = True
    raise DownloadError(
        "bad_range", "server kept answering with a wrong Content-Range", transient=True
    )


def _fetch(
    client, url, part: Path, have: int, size: int, timeout, on_progress, deadline: float
) -> str:
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = client.request("GET", url, headers=headers, stream=True, timeout=timeout)
    except Unreachable as exc:
        raise DownloadError("unreachable", str(exc), transient=True) from exc
    try:
        if response.status == 416:
            return "restart"
        if response.status == 206 and have:
            match = CONTENT_RANGE.match(response.header("content-range") or "")
            if not match or int(match.group(1)) != have or match.group(3) != str(size):
                return "restart"
            mode = "ab"
        elif response.status == 200:
            have, mode = 0, "wb"  # the server ignored Range: start over
        elif response.status in {401, 403, 404, 410}:
            raise DownloadError(
                f"http_{response.status}", f"artifact download refused: HTTP {response.status}"
            )
        else:
            raise DownloadError(
                f"http_{response.status}",
                f"artifact download: HTTP {response.status}",
                transient=True,
            )
        length = response.header("content-length")
        if length is not None and length.isdigit() and have + int(length) > size:
            raise DownloadError(
                "too_long",
                f"server announces {have + int(length)} bytes, the manifest signed {size}",
            )
        _copy(response.raw, part, mode, have, size, on_progress, deadline)
    finally:
        response.close()
    return "done"


def _copy(
    stream, part: Path, mode: str, have: int, size: int, on_progress, deadline: float
) -> None:
    written = have
    # read1: whatever one receive brings, so the deadline is looked at while data trickles
    read = getattr(stream, "read1", stream.read)
    try:
        with open(part, mode) as handle:
            os.fchmod(handle.fileno(), 0o600)
            while written < size:
                if time.monotonic() > deadline:
                    handle.flush()
                    os.fsync(handle.fileno())
                    raise DownloadError(
                        "too_slow",
                        f"download slower than the minimum rate: "
                        f"{written - have} bytes this attempt, {written} of "
                        f"{size} in all",
                        transient=True,
                    )
                chunk = read(min(CHUNK, size - written))
                if not chunk:
                    break
                handle.write(chunk)
                written += len(chunk)
                if on_progress:
                    on_progress(written)
                pause("download", written, flush=handle)
            handle.flush()
            os.fsync(handle.fileno())
        if written < size:
            raise DownloadError(
                "short", f"stream ended at {written} of {size} bytes", transient=True
            )
        if stream.read(1):
            _discard(part)
            raise DownloadError(
                "too_long", f"artifact stream is longer than the signed {size} bytes"
            )
    except OSError as exc:  # includes socket timeouts and resets
        raise DownloadError(
            "interrupted", f"download interrupted at {written} bytes: {exc}", transient=True
        ) from exc
