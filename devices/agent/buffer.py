"""Bounded on-disk buffer for telemetry points, log lines and status reports.

One SQLite file (WAL) survives restarts and power cuts. Each kind has a cap:
adding past it drops the oldest records and counts them, and the exact count
travels with the next delivered batch as `dropped` (docs/reliability.md E3). Records
keep the `boot_id` and `seq` they were created with, so a resend after a
crash is deduplicated by the server (E1, E2).

Delivery (`flush`): oldest first, one boot at a time; 2xx → delete; 413 → split
the batch in halves and retry (E5); 429/503 → stop and wait `Retry-After` (E4).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .client import Response, Unreachable

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind ON records (kind, id);
CREATE TABLE IF NOT EXISTS dropped (kind TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


class Backoff(Exception):
    """The server asked us to slow down (429/503) or is unreachable."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class FlushResult:
    sent: int = 0
    batches: int = 0
    dropped_reported: int = 0
    splits: int = 0


class Buffer:
    def __init__(
        self, path: str | Path, caps: dict[str, int] | None = None, default_cap: int = 10_000
    ):
        self.path = Path(path)
        self.caps = caps or {}
        self.default_cap = default_cap
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, timeout=10, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)

    def close(self) -> None:
        self._db.close()

    def cap(self, kind: str) -> int:
        return self.caps.get(kind, self.default_cap)

    def add(self, kind: str, boot_id: str, seq: int, body: dict) -> None:
        with self._lock, self._tx():
            self._db.execute(
                "INSERT INTO records (kind, boot_id, seq, body) VALUES (?,?,?,?)",
                (kind, boot_id, seq, json.dumps(body, separators=(",", ":"))),
            )
            count = self.count(kind)
            excess = count - self.cap(kind)
            if excess > 0:
                self._db.execute(
                    "DELETE FROM records WHERE id IN (SELECT id FROM records WHERE kind=? "
                    "ORDER BY id LIMIT ?)",
                    (kind, excess),
                )
                self._db.execute(
                    "INSERT INTO dropped (kind, count) VALUES (?, ?) ON CONFLICT(kind) "
                    "DO UPDATE SET count = count + excluded.count",
                    (kind, excess),
                )

    @contextlib.contextmanager
    def _tx(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def count(self, kind: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records WHERE kind=?", (kind,)).fetchone()[0]

    def dropped(self, kind: str) -> int:
        row = self._db.execute("SELECT count FROM dropped WHERE kind=?", (kind,)).fetchone()
        return row[0] if row else 0

    def oldest(self, kind: str, limit: int) -> list[tuple[int, str, dict]]:
        """(id, boot_id, body) of the oldest records of one boot, at most `limit`."""
        first = self._db.execute(
            "SELECT boot_id FROM records WHERE kind=? ORDER BY id LIMIT 1", (kind,)
        ).fetchone()
        if first is None:
            return []
        rows = self._db.execute(
            "SELECT id, boot_id, body FROM records WHERE kind=? AND boot_id=? ORDER BY id LIMIT ?",
            (kind, first[0], limit),
        ).fetchall()
        return [(rid, boot, json.loads(body)) for rid, boot, body in rows]

    def _delivered(self, kind: str, ids: list[int], dropped_reported: int) -> None:
        with self._lock, self._tx():
            deleted = 0
            for rid in ids:
                deleted += self._db.execute("DELETE FROM records WHERE id=?", (rid,)).rowcount
            # Records of this batch pushed out by the cap while it was in flight were
            # counted as dropped, yet the server has them: uncount them too. Subtract,
            # never reset: more may have been dropped since the batch left.
            correction = dropped_reported + (len(ids) - deleted)
            if correction:
                self._db.execute(
                    "UPDATE dropped SET count = MAX(0, count - ?) WHERE kind=?", (correction, kind)
                )

    def flush(
        self,
        kind: str,
        send: Callable[[str, list[dict], int], Response],
        *,
        batch_size: int = 500,
        max_batches: int = 100,
    ) -> FlushResult:
        """Deliver buffered records with `send(boot_id, items, dropped) -> Response`.

        Raises `Backoff` when the server says slow down or cannot be reached; what
        was delivered before stays delivered.
        """
        result = FlushResult()
        while result.batches < max_batches:
            rows = self.oldest(kind, batch_size)
            if not rows:
                return result
            self._send(kind, rows, send, result)
        return result

    def _send(self, kind: str, rows, send, result: FlushResult) -> None:
        dropped = self.dropped(kind)
        try:
            response = send(rows[0][1], [body for _, _, body in rows], dropped)
        except Unreachable as exc:
            raise Backoff(str(exc)) from exc
        result.batches += 1
        if 200 <= response.status < 300:
            self._delivered(kind, [rid for rid, _, _ in rows], dropped)
            result.sent += len(rows)
            result.dropped_reported += dropped
        elif response.status in {400, 413, 422} and len(rows) > 1:
            # Too big (E5), or one bad record among good ones: halves find out which.
            result.splits += 1
            half = len(rows) // 2
            self._send(kind, rows[:half], send, result)
            self._send(kind, rows[half:], send, result)
        elif response.status in {400, 413, 422} or (
            kind == "status" and response.status in {404, 409, 410}
        ):
            # Refused for good (a bad record; a status report the server has moved
            # past): drop it and count it, or it would block the queue forever.
            with self._lock, self._tx():
                self._db.executemany(
                    "DELETE FROM records WHERE id=?", [(rid,) for rid, _, _ in rows]
                )
                self._db.execute(
                    "INSERT INTO dropped (kind, count) VALUES (?, ?) ON CONFLICT(kind) "
                    "DO UPDATE SET count = count + excluded.count",
                    (kind, len(rows)),
                )
        else:
            raise Backoff(f"{kind}: HTTP {response.status}", response.retry_after)


class Outbox:
    """Numbers records per boot (`seq` from 1, monotonic) and buffers them."""

    def __init__(self, buffer: Buffer, boot_id: str):
        self.buffer = buffer
        self.boot_id = boot_id
        self._seq: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, body: dict) -> int:
        with self._lock:
            seq = self._seq.get(kind, 0) + 1
            self._seq[kind] = seq
        self.buffer.add(kind, self.boot_id, seq, {**body, "seq": seq, "boot_id": self.boot_id})
        return seq
