"""Fresh signed metadata on every check-in (docs/manifest.md, "Freshness").

Every answer of `GET /api/v1/device/update` — 200, 204 and 304 alike — carries
an `X-Signed-Timestamp` header: a short-lived statement signed by the server
key that names this device, the answer's ETag, the sha256 of its body and the
update version assigned per slot. Unsigned status codes prove nothing (anyone
on the path can answer 204 or 304), so the agent concludes from them only what
a statement binds:

- an ETag is remembered only together with the body the statement vouches for
  (a replayed old body under the real ETag would otherwise be kept, and the
  genuine server's 304s would pin it: ETag poisoning);
- "nothing assigned" (a pending manifest withdrawn) needs a statement, issued
  after that manifest, that no longer names its slot;
- statements never go back in time (`issued_at` at least the last accepted);
- a device that cannot get a valid statement for longer than the last one's
  expiry says so (log line, `metadata_stale_s` in telemetry and inventory):
  a freeze attack is visible instead of silent.

Statements also carry the next server key during a rotation (`next_key`), so
idle devices that only ever see 204/304 learn it too.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from . import manifest as mf
from .client import Response
from .state import State, read_json, write_json

log = logging.getLogger("edgefleet.agent")

REMIND_S = 3600.0  # while stale, say it again this often


@dataclass(frozen=True)
class Statement:
    payload: dict
    key_id: str

    @property
    def updates(self) -> dict:
        return self.payload["updates"]

    @property
    def issued_at(self) -> datetime:
        return mf.parse_time(self.payload["issued_at"])


def body_digest(body: bytes) -> str | None:
    return hashlib.sha256(body).hexdigest() if body else None


class Freshness:
    """The last accepted statement (`freshness.json`) and what follows from it."""

    def __init__(self, state: State):
        self.state = state
        self.path = state.root / "freshness.json"
        self._told_at: float | None = None  # monotonic time of the last stale warning

    @property
    def record(self) -> dict:
        return read_json(self.path, {}) or {}

    # --- accepting ------------------------------------------------------------------------
    def check(
        self, response: Response, started: datetime, sent_etag: str | None
    ) -> Statement | None:
        """The answer's statement when it verifies and binds this answer, else None."""
        try:
            payload, kid = mf.verify_statement(
                response.header(mf.TIMESTAMP_HEADER),
                trusted_keys=self.state.trusted_keys(),
                device_uid=self.state.uid or "",
                now=started,
            )
        except mf.ManifestError as exc:
            self._missing(started, exc.message)
            return None
        statement = Statement(payload, kid)
        record = self.record
        problem = self._unbound(statement, response, sent_etag, record)
        if (
            not problem
            and record.get("issued_at")
            and (statement.issued_at < mf.parse_time(record["issued_at"]))
        ):
            problem = "older than the last accepted one (replayed)"
        if problem:
            self._missing(started, f"signed timestamp ignored: {problem}")
            return None
        return statement

    def commit(self, statement: Statement) -> None:
        """Keep the statement (and the ETag it binds) once its answer was acted on: a
        crash before that asks again without If-None-Match."""
        payload = statement.payload
        before = self.record
        write_json(
            self.path,
            {
                "issued_at": payload["issued_at"],
                "expires_at": payload["expires_at"],
                "etag": payload.get("etag"),
                "body_sha256": payload.get("body_sha256"),
            },
        )
        if (
            self._told_at is not None
            or before.get("missing_since")
            or (before.get("expires_at") and before["expires_at"] < payload["issued_at"])
        ):
            log.info("fresh signed metadata again (issued %s)", payload["issued_at"])
        self._told_at = None

    def _unbound(self, statement: Statement, response: Response, sent_etag, record) -> str:
        payload = statement.payload
        if response.status == 304:
            if sent_etag is None or payload.get("etag") != sent_etag:
                return "it names another ETag than the one this 304 confirms"
            if payload.get("body_sha256") != record.get("body_sha256"):
                return "it vouches for another body than the one kept"
            return ""
        if payload.get("etag") != response.header("etag"):
            return "it names another ETag than the answer's"
        if payload.get("body_sha256") != body_digest(response.body):
            return "the body is not the one it vouches for"
        if response.status == 204 and payload["updates"]:
            return "204 while updates are assigned"
        return ""

    def _missing(self, started: datetime, why: str) -> None:
        record = self.record
        if not record.get("expires_at") and not record.get("missing_since"):
            write_json(self.path, {**record, "missing_since": mf.format_time(started)})
        log.debug("no fresh signed metadata in this answer: %s", why)
        self.report_if_stale(started, why)

    # --- staleness ------------------------------------------------------------------------
    def stale_s(self, now: datetime) -> float | None:
        """Seconds since the last signed metadata expired (None while fresh)."""
        record = self.record
        since = record.get("expires_at") or record.get("missing_since")
        if not since:
            return None
        try:
            moment = mf.parse_time(since)
        except mf.ManifestError:
            return None
        if moment > now:
            return None
        return round((now - moment).total_seconds(), 1)

    def report_if_stale(self, now: datetime, why: str = "") -> None:
        stale = self.stale_s(now)
        if stale is None:
            return
        clock = time.monotonic()
        if self._told_at is not None and clock - self._told_at < REMIND_S:
            return
        self._told_at = clock
        record = self.record
        log.warning(
            "no fresh signed metadata from the server for %.0f s (last statement "
            "issued %s, expired %s)%s: check-in answers may be frozen or replayed",
            stale,
            record.get("issued_at") or "never",
            record.get("expires_at") or "-",
            f"; {why}" if why else "",
        )

    def forget_etag(self) -> None:
        """The kept ETag is not vouched for any more: ask for the full answer next time."""
        record = self.record
        if record.get("etag") or record.get("body_sha256"):
            write_json(self.path, {**record, "etag": None, "body_sha256": None})
