"""Check in, verify, download, install, health-check, switch or roll back.

One `Updater.check_in()` = one conversation with `GET /api/v1/device/update`.
Order of trust (docs/manifest.md): signature against a pinned key (U1) → own
uid (U5) → version above the last trusted one (U2) → not expired at the start
of this check-in (U3) → per artifact: at most `size` bytes and the signed
sha256 (U4, U8).

Crash safety (U7): the slot file records the verified manifest as `pending`
before any byte is fetched; artifacts land in `models/<slot>/<sha256>.onnx` by
rename only after their hash matched; the active model is named by one pointer
file switched by rename, which keeps the previous pointer inside it. Rerunning
after a SIGKILL anywhere finds the pending manifest and walks the same steps,
each of which is a no-op when already done.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from devices.agent import manifest as mf
from devices.agent.buffer import Backoff
from devices.agent.client import Client, Response, Unreachable
from devices.agent.download import DownloadError, download, sha256_file
from devices.agent.state import State, fsync_dir
from devices.agent.testhooks import pause

log = logging.getLogger("edgefleet.agent")

UPDATE_PATH = "/api/v1/device/update"
STATUS_PATH = "/api/v1/device/update/status"
ARTIFACT_PATH = "/api/v1/device/artifacts/{sha256}"
PROGRESS = ("downloading", "downloaded", "installing")


class CheckInError(Backoff):
    """The check-in failed (unreachable, refused, or not JSON); `retry_after` as advised."""


@dataclass
class CheckIn:
    outcome: str  # not_modified, no_update, refused, no_op, succeeded, failed, rolled_back, ...
    poll_interval_s: float | None = None
    detail: str = ""


def _now() -> datetime:
    return datetime.now(UTC)


class Updater:
    def __init__(self, state: State, client: Client, *,
                 report: Callable[[dict], None] | None = None,
                 health_check: Callable[[list[str]], str | None] | None = None,
                 now: Callable[[], datetime] = _now):
        self.state = state
        self.client = client
        self.report = report or self._post_status
        if health_check is None:
            from devices.agent.health import run_health_check as health_check
        self.health_check = health_check
        self.now = now

    # --- the conversation ----------------------------------------------------------------
    def check_in(self) -> CheckIn:
        started = self.now()  # U3: expiry is judged against the start of this check-in
        headers = {}
        if self.state.etag:
            headers["If-None-Match"] = self.state.etag
        try:
            response = self.client.request("GET", UPDATE_PATH, headers=headers)
        except Unreachable as exc:
            # Offline: an install interrupted after its download can still finish (U7).
            self.resume_pending(started)
            raise CheckInError(str(exc)) from exc
        interval = _advised_interval(response)
        if response.status == 304:
            return CheckIn(self.resume_pending(started) or "not_modified", interval)
        if response.status == 204:
            self._withdraw(keep=set())  # nothing assigned any more: drop what was pending
            self._remember_etag(response)
            return CheckIn("no_update", interval)
        if response.status != 200:
            self.resume_pending(started)
            raise CheckInError(f"check-in: HTTP {response.status}", response.retry_after)
        try:
            body = response.json()
        except ValueError as exc:
            raise CheckInError("check-in: body is not JSON") from exc
        envelopes = body.get("manifests") if isinstance(body, dict) and "manifests" in body \
            else [body]
        envelopes = envelopes if isinstance(envelopes, list) else []
        self._withdraw(keep={str(((e or {}).get("manifest") or {}).get("slot") or "default")
                             for e in envelopes if isinstance(e, dict)})
        outcomes = [self.handle(envelope, started) for envelope in envelopes]
        self._remember_etag(response)
        interval = interval or _payload_interval(envelopes)
        return CheckIn(outcomes[-1] if outcomes else "no_update", interval)

    def _withdraw(self, keep: set[str]) -> None:
        """The server no longer assigns a pending manifest (aborted, superseded by
        nothing): forget it and its partial downloads; the active model stays."""
        for name in self.state.slot_names():
            slot = self.state.slot(name)
            pending = slot.get("pending")
            if name in keep or not pending or slot.get("done_version") == pending.get("version"):
                continue
            log.info("slot %s: manifest %s withdrawn by the server", name, pending.get("version"))
            for artifact in pending.get("artifacts") or []:
                self.state.download_path(artifact["sha256"]).unlink(missing_ok=True)
            self.state.update_slot(name, pending=None, done_version=pending.get("version"),
                                   result="withdrawn")

    def _remember_etag(self, response: Response) -> None:
        etag = response.header("etag")
        if etag != self.state.etag:
            self.state.update_config(etag=etag)

    def handle(self, envelope: dict, started: datetime) -> str:
        payload = envelope.get("manifest") if isinstance(envelope, dict) else None
        slot_name = str((payload or {}).get("slot") or "default")
        slot = self.state.slot(slot_name)
        try:
            verified = mf.verify(envelope, trusted_keys=self.state.trusted_keys(),
                                 device_uid=self.state.uid or "",
                                 last_version=int(slot.get("trusted_version", 0)), now=started)
        except mf.ManifestError as exc:
            log.warning("manifest refused (%s): %s", exc.code, exc.message)
            self._send(payload or {}, "failed", exc.message, exc.code, slot=slot_name)
            return "refused"
        payload = {**verified.payload, "slot": slot_name}  # a manifest without slot: "default"
        self._rotate_keys(envelope, payload)
        if verified.no_op:
            if slot.get("done_version") == payload["version"]:
                return "no_op"
        else:
            self.state.update_slot(slot_name, trusted_version=payload["version"], pending=payload,
                                   received_at=mf.format_time(started))
        return self.apply(payload)

    def _rotate_keys(self, envelope: dict, payload: dict) -> None:
        """U6: a new key is pinned only when announced by a manifest that verified."""
        used = self.state.key_for(str(envelope.get("key_id", "")))
        if used:
            self.state.retire_keys_before(used)
        announced = payload.get("next_key")
        if isinstance(announced, dict) and announced.get("public_key"):
            try:
                kid = self.state.pin_key(announced["public_key"])
            except ValueError as exc:
                log.warning("announced next key refused: %s", exc)
                return
            if announced.get("key_id") and announced["key_id"] != kid:
                log.warning("announced key id %s differs from the key's own %s",
                            announced["key_id"], kid)

    def resume_pending(self, started: datetime) -> str | None:
        """Finish a manifest a crash interrupted (U7)."""
        outcome = None
        for name in self.state.slot_names():
            slot = self.state.slot(name)
            pending = slot.get("pending")
            if not pending or slot.get("done_version") == pending.get("version"):
                continue
            try:
                expired = mf.parse_time(str(pending.get("expires_at"))) <= started
            except mf.ManifestError:
                expired = True
            if expired:
                self._send(pending, "failed", "manifest expired before it was installed",
                           "expired")
                self.state.update_slot(name, done_version=pending["version"], result="expired")
                continue
            outcome = self.apply(pending)
        return outcome

    # --- download, install, check, switch ---------------------------------------------
    def apply(self, payload: dict) -> str:
        slot = payload["slot"]
        waited = self.state.slot(slot).get("downloaded_version") == payload["version"]
        if not waited:
            self._send(payload, "downloading")
        files = {}
        try:
            for artifact in payload["artifacts"]:
                files[artifact["name"]] = self._fetch(slot, artifact)
        except DownloadError as exc:
            if exc.transient:
                log.info("download interrupted (%s), will resume: %s", exc.code, exc.message)
                return "download_retry"
            self._send(payload, "failed", exc.message, exc.code)
            self._finish(payload, "failed")
            return "failed"
        if not waited:
            self._send(payload, "downloaded")
        # Devices download any time but install only inside the maintenance window.
        if not in_window(payload.get("install_window"), self.now()):
            self.state.update_slot(slot, downloaded_version=payload["version"])
            return "waiting_window"
        self._send(payload, "installing")
        pause("install")
        model_dir = self.state.model_dir(slot)
        model_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        variants = {}
        for artifact in payload["artifacts"]:
            target = model_dir / f"{artifact['sha256']}.onnx"
            source = files[artifact["name"]]
            if source != target:
                source.replace(target)
                fsync_dir(model_dir)
            variants[artifact["name"]] = {"sha256": artifact["sha256"],
                                          "model_version": artifact.get("model_version"),
                                          "path": target.name}
        old = self.state.pointer(slot)
        if old and old.get("version") == payload["version"]:
            new = old  # switched before a crash: keep its `previous`
        else:
            new = {"version": payload["version"], "deployment": payload.get("deployment"),
                   "manifest": payload, "variants": variants,
                   "active": mf.choose_variant(payload, {}), "previous": _strip(old)}
            pause("switch")
            self.state.set_pointer(slot, new)
        pause("health")
        problem = self.health_check([str(model_dir / v["path"]) for v in variants.values()])
        if problem is None:
            self._send(payload, "succeeded")
            self._finish(payload, "succeeded")
            self._collect(slot)
            return "succeeded"
        previous = new.get("previous")
        self.state.set_pointer(slot, previous)
        state = "rolled_back" if previous else "failed"
        self._send(payload, state, f"health check failed: {problem}", "health_check")
        self._finish(payload, state)
        self._collect(slot)
        return state

    def _fetch(self, slot: str, artifact: dict):
        target = self.state.model_dir(slot) / f"{artifact['sha256']}.onnx"
        if target.exists():
            if sha256_file(target) == artifact["sha256"]:
                return target
            target.unlink()
        url = artifact.get("url") or ARTIFACT_PATH.format(sha256=artifact["sha256"])
        return download(self.client, url, self.state.download_path(artifact["sha256"]),
                        size=artifact["size"], sha256=artifact["sha256"])

    def _finish(self, payload: dict, result: str) -> None:
        self.state.update_slot(payload["slot"], done_version=payload["version"], result=result,
                               pending=None)

    def _collect(self, slot: str) -> None:
        """Keep the files of the current and previous pointers; drop the rest."""
        pointer = self.state.pointer(slot) or {}
        keep = {v["path"] for v in (pointer.get("variants") or {}).values()}
        keep |= {v["path"] for v in ((pointer.get("previous") or {}).get("variants")
                                     or {}).values()}
        for path in self.state.model_dir(slot).glob("*.onnx"):
            if path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for part in (self.state.root / "downloads").glob("*.part"):
            if part.stem in {p.split(".")[0] for p in keep}:
                part.unlink(missing_ok=True)

    # --- status reports ------------------------------------------------------------------
    def _send(self, payload: dict, state: str, error: str = "", code: str = "",
              slot: str | None = None) -> None:
        deployment = payload.get("deployment")
        report = {"deployment": deployment if isinstance(deployment, int) else None,
                  "manifest_version": payload.get("version"),
                  "slot": slot or payload.get("slot"), "state": state,
                  "error": error[:1000], "error_code": code}
        slot_name = str(report["slot"] or "default")
        progress = state in PROGRESS and isinstance(report["manifest_version"], int)
        if progress:
            # After a restart, never report a state the server has seen or passed:
            # it would be an illegal transition (downloading after installing).
            seen = self.state.slot(slot_name).get("reported") or {}
            if seen.get("version") == report["manifest_version"] and (
                    PROGRESS.index(state) <= PROGRESS.index(seen.get("state"))):
                return
        log.info("update %s", {k: v for k, v in report.items() if v not in ("", None)})
        self.report(report)
        if progress:
            self.state.update_slot(slot_name, reported={"version": report["manifest_version"],
                                                        "state": state})

    def _post_status(self, report: dict) -> None:
        with contextlib.suppress(Unreachable):
            self.client.post(STATUS_PATH, report)


def _strip(pointer: dict | None) -> dict | None:
    if not pointer:
        return None
    return {k: v for k, v in pointer.items() if k != "previous"}


def _advised_interval(response: Response) -> float | None:
    for name in ("x-poll-interval", "poll-interval"):
        value = response.header(name)
        if value:
            with contextlib.suppress(ValueError):
                return float(value)
    if response.status == 200 and response.body:
        with contextlib.suppress(ValueError, AttributeError):
            value = response.json().get("poll_interval_s")
            if value:
                return float(value)
    return None


def _payload_interval(envelopes) -> float | None:
    for envelope in envelopes or []:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            value = envelope["manifest"].get("poll_interval_s")
            if value:
                return float(value)
    return None


def in_window(window, moment: datetime) -> bool:
    """Inside an `{"start": "HH:MM", "end": "HH:MM"}` UTC window (wrapping midnight)."""
    if not window:
        return True
    try:
        start, end = (int(h) * 60 + int(m) for h, m in
                      (str(window[k]).split(":") for k in ("start", "end")))
    except (KeyError, ValueError, TypeError):
        return True
    minute = moment.astimezone(UTC).hour * 60 + moment.astimezone(UTC).minute
    return start <= minute < end if start <= end else minute >= start or minute < end

