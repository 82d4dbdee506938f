"""Check in, verify, download, install, health-check, switch or roll back.

One `Updater.check_in()` = one conversation with `GET /api/v1/device/update`.
Order of trust (docs/manifest.md): signature against a pinned key (U1) → own
uid (U5) → version above the last trusted one (U2) → not expired at the start
of this check-in (U3) → per artifact: at most `size` bytes and the signed
sha256 (U4, U8).

Crash safety (U7): the slot file records the verified manifest as `pending`
before any byte is fetched; artifacts land in `models/<slot>/<sha256>.onnx` by
rename only after their hash matched; the active model is named by one pointer
file switched by rename, which keeps the previous pointer inside it, and only
after the new model passed its health check: whatever the order of a crash,
an expiry and a restart, the active model is a verified one (`recover()` puts
back the previous model when a pointer of an older agent says otherwise).
Rerunning after a SIGKILL anywhere finds the pending manifest and walks the
same steps, each of which is a no-op when already done.

Freshness: what an answer says without a signature (a 204, a 304, an empty
list) never cancels a pending manifest; only a signed timestamp statement
does (`devices.agent.freshness`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from . import manifest as mf
from .buffer import Backoff
from .client import Client, Response, Unreachable
from .download import (
    BackgroundDownload,
    DownloadError,
    DownloadLimits,
    download,
    sha256_file,
)
from .freshness import Freshness
from .state import State, fsync_dir
from .testhooks import pause

log = logging.getLogger("edgefleet.agent")

UPDATE_PATH = "/api/v1/device/update"
STATUS_PATH = "/api/v1/device/update/status"
ARTIFACT_PATH = "/api/v1/device/artifacts/{sha256}"
PROGRESS = ("downloading", "downloaded", "installing")


CHECKIN_MAX_BODY = 1024 * 1024  # one envelope is about 1 kB; a few slots fit many times


class CheckInError(Backoff):
    """The check-in failed (unreachable, refused, or not JSON); `retry_after` as advised."""


@dataclass
class CheckIn:
    outcome: str  # not_modified, no_update, refused, no_op, succeeded, failed, rolled_back, ...
    poll_interval_s: float | None = None
    detail: str = ""
    upload_interval_s: float | None = None  # X-Upload-Interval; None from older servers
    benchmarks: int | None = None  # X-Benchmarks (requests waiting); None from older servers


def _now() -> datetime:
    return datetime.now(UTC)


class Updater:
    def __init__(
        self,
        state: State,
        client: Client,
        *,
        report: Callable[[dict], None] | None = None,
        health_check: Callable[[list[str]], str | None] | None = None,
        now: Callable[[], datetime] = _now,
        background: bool = False,
        limits: DownloadLimits | None = None,
        health_memory_mb: int | None = None,
        inputs=None,
        threads: int | None = None,
    ):
        self.state = state
        self.inputs = inputs  # the device's input source, for shadow evaluation
        self.threads = threads
        self.client = client
        self.report = report or self._post_status
        if health_check is None:
            from .health import run_health_check

            def health_check(paths, _memory=health_memory_mb):
                return run_health_check(paths, memory_mb=_memory)

        self.health_check = health_check
        self.now = now
        self.freshness = Freshness(state)
        # In the agent loop downloads run in a worker thread so check-ins and
        # telemetry keep flowing; `run --once` and tests download in line.
        self.background = background
        self.limits = limits or DownloadLimits()
        self._jobs: dict[str, BackgroundDownload] = {}

    # --- the conversation ----------------------------------------------------------------
    def check_in(self) -> CheckIn:
        started = self.now()  # U3: expiry is judged against the start of this check-in
        sent_etag = self.freshness.record.get("etag")
        headers = {"If-None-Match": sent_etag} if sent_etag else {}
        try:
            response = self.client.request(
                "GET", UPDATE_PATH, headers=headers, max_body=CHECKIN_MAX_BODY
            )
        except Unreachable as exc:
            # Offline: an install interrupted after its download can still finish (U7).
            self._offline(started)
            raise CheckInError(str(exc)) from exc
        interval = _advised_interval(response)
        upload = _header_seconds(response, "x-upload-interval")
        if response.status not in (200, 204, 304):
            self._offline(started)
            raise CheckInError(f"check-in: HTTP {response.status}", response.retry_after)
        statement = self.freshness.check(response, started, sent_etag)
        if statement is None:
            self.freshness.forget_etag()  # never keep an ETag no statement vouches for
        else:
            self._rotate_keys(statement.key_id, statement.payload.get("next_key"))
            self._withdraw(statement)
        if response.status in (204, 304):
            # Unsigned by themselves: a pending manifest goes on unless a statement withdrew it.
            outcome = self.resume_pending(started)
            self._commit(statement)
            return CheckIn(
                outcome or ("no_update" if response.status == 204 else "not_modified"),
                interval,
                upload_interval_s=upload,
                benchmarks=response.count("x-benchmarks"),
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise CheckInError("check-in: body is not JSON") from exc
        envelopes = (
            body.get("manifests") if isinstance(body, dict) and "manifests" in body else [body]
        )
        envelopes = envelopes if isinstance(envelopes, list) else []
        outcomes = [self.handle(envelope, started) for envelope in envelopes]
        named = {
            str(((e or {}).get("manifest") or {}).get("slot") or "default")
            for e in envelopes
            if isinstance(e, dict)
        }
        resumed = self.resume_pending(started, skip=named)
        self._commit(statement)
        interval = interval or _payload_interval(envelopes)
        outcome = outcomes[-1] if outcomes else resumed or "no_update"
        return CheckIn(
            outcome, interval, upload_interval_s=upload, benchmarks=response.count("x-benchmarks")
        )

    def _offline(self, started: datetime) -> None:
        self.resume_pending(started)
        self.freshness.report_if_stale(started)

    def _commit(self, statement) -> None:
        if statement is not None:
            self.freshness.commit(statement)

    def _withdraw(self, statement) -> None:
        """A signed statement no longer assigns a pending manifest's slot (aborted,
        superseded by nothing): forget it and its partial downloads; the active model
        stays. Only a statement issued after the manifest can say so — an unsigned 204
        or an empty body never withdraws anything."""
        for name in self.state.slot_names():
            slot = self.state.slot(name)
            pending = slot.get("pending")
            if (
                name in statement.updates
                or not pending
                or slot.get("done_version") == pending.get("version")
            ):
                continue
            try:
                if statement.issued_at < mf.parse_time(str(pending.get("issued_at"))):
                    continue
            except mf.ManifestError:
                pass
            log.info("slot %s: manifest %s withdrawn by the server", name, pending.get("version"))
            self._jobs.pop(name, None)  # its thread ends by its deadline; outcome dropped
            for artifact in pending.get("artifacts") or []:
                self.state.download_path(artifact["sha256"]).unlink(missing_ok=True)
            self.state.update_slot(
                name, pending=None, done_version=pending.get("version"), result="withdrawn"
            )

    def handle(self, envelope: dict, started: datetime) -> str:
        payload = envelope.get("manifest") if isinstance(envelope, dict) else None
        payload = payload if isinstance(payload, dict) else {}
        slot_name = str(payload.get("slot") or "default")
        slot = self.state.slot(slot_name)
        try:
            verified = mf.verify(
                envelope,
                trusted_keys=self.state.trusted_keys(),
                device_uid=self.state.uid or "",
                last_version=int(slot.get("trusted_version", 0)),
                now=started,
            )
        except mf.ManifestError as exc:
            log.warning("manifest refused (%s): %s", exc.code, exc.message)
            # Nothing in a refused manifest can be trusted, its deployment id least of
            # all: the server attaches the refusal to this device's current update.
            self._send(payload, "failed", exc.message, exc.code, slot=slot_name, refused=True)
            return "refused"
        payload = {**verified.payload, "slot": slot_name}  # a manifest without slot: "default"
        self._rotate_keys(
            self.state.key_for(str(envelope.get("key_id", ""))), payload.get("next_key")
        )
        if verified.no_op:
            if slot.get("done_version") == payload["version"]:
                return "no_op"
        else:
            self.state.update_slot(
                slot_name,
                trusted_version=payload["version"],
                pending=payload,
                received_at=mf.format_time(started),
            )
        return self.apply(payload)

    def _rotate_keys(self, used: str | None, announced) -> None:
        """U6: a new key is pinned only when announced by signed metadata that verified
        (a manifest or a check-in's timestamp statement)."""
        used = self.state.key_for(used) if used else None
        if used:
            self.state.retire_keys_before(used)
        if isinstance(announced, dict) and announced.get("public_key"):
            if announced.get("key_id") and self.state.key_for(str(announced["key_id"])):
                return  # pinned already
            try:
                kid = self.state.pin_key(announced["public_key"])
            except ValueError as exc:
                log.warning("announced next key refused: %s", exc)
                return
            log.info("server key %s pinned as the next key", kid)
            if announced.get("key_id") and announced["key_id"] != kid:
                log.warning(
                    "announced key id %s differs from the key's own %s", announced["key_id"], kid
                )

    def recover(self) -> None:
        """Before anything else after a start: a slot whose active model is not a
        verified one (an agent that switched before its health check ended, then
        died) goes back to the last verified model (fail-safe); the install is
        then retried or refused like any pending manifest."""
        for name in self.state.slot_names():
            pointer = self.state.pointer(name)
            slot = self.state.slot(name)
            pending = slot.get("pending") or {}
            if not pointer or pointer.get("verified"):
                continue
            if pointer.get("version") != pending.get("version") or slot.get(
                "done_version"
            ) == pointer.get("version"):
                continue  # an install that finished (written before `verified` existed)
            previous = pointer.get("previous")
            log.warning(
                "slot %s: the health check of manifest %s did not complete; back to "
                "%s before anything else",
                name,
                pointer.get("version"),
                f"manifest {previous.get('version')}" if previous else "no model",
            )
            self.state.set_pointer(name, previous)

    def has_pending(self) -> bool:
        """A manifest is still to be finished: only a check-in moves it on."""
        for name in self.state.slot_names():
            slot = self.state.slot(name)
            pending = slot.get("pending")
            if pending and slot.get("done_version") != pending.get("version"):
                return True
        return bool(self._jobs)

    def resume_pending(self, started: datetime, skip: set[str] = frozenset()) -> str | None:
        """Finish a manifest a crash or a download in the background left pending (U7)."""
        outcome = None
        for name in self.state.slot_names():
            if name in skip:
                continue
            slot = self.state.slot(name)
            pending = slot.get("pending")
            if not pending or slot.get("done_version") == pending.get("version"):
                continue
            try:
                expired = mf.parse_time(str(pending.get("expires_at"))) <= started
            except mf.ManifestError:
                expired = True
            if expired:
                self._jobs.pop(name, None)
                self._send(pending, "failed", "manifest expired before it was installed", "expired")
                self.state.update_slot(
                    name, done_version=pending["version"], result="expired", pending=None
                )
                continue
            outcome = self.apply(pending)
        return outcome

    # --- download, install, check, switch ---------------------------------------------
    def apply(self, payload: dict) -> str:
        slot = payload["slot"]
        waited = self.state.slot(slot).get("downloaded_version") == payload["version"]
        if not waited:
            self._send(payload, "downloading")
        try:
            files = self._files(payload)
        except DownloadError as exc:
            if exc.transient:
                log.info("download interrupted (%s), will resume: %s", exc.code, exc.message)
                return "download_retry"
            self._send(payload, "failed", exc.message, exc.code)
            self._finish(payload, "failed")
            return "failed"
        if files is None:
            return "downloading"  # in the background; the loop goes on
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
            variants[artifact["name"]] = {
                "sha256": artifact["sha256"],
                "model_version": artifact.get("model_version"),
                "path": target.name,
            }
        old = self.state.pointer(slot)
        shadowed = None
        if not (old and old.get("version") == payload["version"] and old.get("verified")):
            # Fail-safe: the pointer only ever names a model that passed its health
            # check. A crash before the switch leaves the old model active; the
            # check runs again on restart (it is idempotent).
            pause("health")
            problem = self.health_check([str(model_dir / v["path"]) for v in variants.values()])
            if problem is not None:
                state = "rolled_back" if old else "failed"
                self._send(payload, state, f"health check failed: {problem}", "health_check")
                self._finish(payload, state)
                self._collect(slot)
                return state
            shadowed = self._shadow(slot, old, variants, payload)
            if shadowed is not None and not shadowed["passed"]:
                self._send(
                    payload,
                    "failed",
                    f"shadow agreement {shadowed['agreement']:.3f} < "
                    f"{shadowed['min_agreement']:g} ({shadowed['metric'] or 'no output'}, "
                    f"{shadowed['inferences']} inferences); the active model stays",
                    "shadow_agreement",
                    shadow=shadowed,
                )
                self._finish(payload, "failed")
                self._collect(slot)
                return "failed"
            pause("switch")
            self.state.set_pointer(
                slot,
                {
                    "version": payload["version"],
                    "deployment": payload.get("deployment"),
                    "manifest": payload,
                    "variants": variants,
                    "verified": True,
                    "active": mf.choose_variant(payload, {}),
                    "previous": _strip(old),
                },
            )
        self._send(payload, "succeeded", shadow=shadowed)
        self._finish(payload, "succeeded")
        self._collect(slot)
        return "succeeded"

    def _shadow(self, slot: str, old: dict | None, variants: dict, payload: dict) -> dict | None:
        """Run the candidate beside the active model when the manifest asks (shadow.py);
        None when it does not, or when nothing is active to compare with."""
        from . import shadow

        try:
            request = shadow.parse(payload.get("shadow"))
        except shadow.ShadowError as exc:
            log.warning("shadow request ignored: %s", exc)
            return None
        if request is None or not (old and old.get("verified")):
            return None
        from .health import open_session
        from .runtime import Inputs

        active = old["variants"][old["active"]]
        candidate = variants[mf.choose_variant(payload, {})]
        model_dir = self.state.model_dir(slot)
        result = shadow.evaluate(
            open_session(str(model_dir / active["path"]), self.threads),
            open_session(str(model_dir / candidate["path"]), self.threads),
            self.inputs or Inputs(),
            request,
        )
        log.info("shadow evaluation of slot %s: %s", slot, result)
        return result

    def _files(self, payload: dict) -> dict | None:
        """Artifact name -> verified file; None while a background download runs."""
        slot = payload["slot"]
        if not self.background:
            return self._download_all(payload)
        key = (payload["version"], tuple(a["sha256"] for a in payload["artifacts"]))
        job = self._jobs.get(slot)
        if job is not None and job.key != key:
            if not job.done():
                return None  # an older download ends by its own deadline first
            job = self._jobs.pop(slot)
            job = None
        if job is None:
            self._jobs[slot] = BackgroundDownload(key, self._download_all, payload)
            return None
        if not job.done():
            return None
        del self._jobs[slot]
        return job.result()

    def _download_all(self, payload: dict) -> dict:
        return {
            artifact["name"]: self._fetch(payload["slot"], artifact)
            for artifact in payload["artifacts"]
        }

    def _fetch(self, slot: str, artifact: dict):
        target = self.state.model_dir(slot) / f"{artifact['sha256']}.onnx"
        if target.exists():
            if sha256_file(target) == artifact["sha256"]:
                return target
            target.unlink()
        url = artifact.get("url") or ARTIFACT_PATH.format(sha256=artifact["sha256"])
        return download(
            self.client,
            url,
            self.state.download_path(artifact["sha256"]),
            size=artifact["size"],
            sha256=artifact["sha256"],
            limits=self.limits,
        )

    def _finish(self, payload: dict, result: str) -> None:
        self.state.update_slot(
            payload["slot"], done_version=payload["version"], result=result, pending=None
        )

    def _collect(self, slot: str) -> None:
        """Keep the files of the current and previous pointers; drop the rest."""
        pointer = self.state.pointer(slot) or {}
        keep = {v["path"] for v in (pointer.get("variants") or {}).values()}
        keep |= {
            v["path"] for v in ((pointer.get("previous") or {}).get("variants") or {}).values()
        }
        for path in self.state.model_dir(slot).glob("*.onnx"):
            if path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for part in (self.state.root / "downloads").glob("*.part"):
            if part.stem in {p.split(".")[0] for p in keep}:
                part.unlink(missing_ok=True)

    # --- status reports ------------------------------------------------------------------
    def _send(
        self,
        payload: dict,
        state: str,
        error: str = "",
        code: str = "",
        slot: str | None = None,
        refused: bool = False,
        shadow: dict | None = None,
    ) -> None:
        deployment = payload.get("deployment")
        version = payload.get("version")
        report = {
            "deployment": deployment if isinstance(deployment, int) else None,
            "manifest_version": version if isinstance(version, int) else None,
            "slot": slot or payload.get("slot"),
            "state": state,
            "error": error[:1000],
            "error_code": code,
        }
        if refused:
            report["refused_manifest"] = True
        if shadow is not None:
            report["shadow"] = shadow
        slot_name = str(report["slot"] or "default")
        progress = state in PROGRESS and isinstance(report["manifest_version"], int)
        if progress:
            # After a restart, never report a state the server has seen or passed:
            # it would be an illegal transition (downloading after installing).
            seen = self.state.slot(slot_name).get("reported") or {}
            if seen.get("version") == report["manifest_version"] and (
                PROGRESS.index(state) <= PROGRESS.index(seen.get("state"))
            ):
                return
        log.info("update %s", {k: v for k, v in report.items() if v not in ("", None)})
        self.report(report)
        if progress:
            self.state.update_slot(
                slot_name, reported={"version": report["manifest_version"], "state": state}
            )

    def _post_status(self, report: dict) -> None:
        with contextlib.suppress(Unreachable):
            self.client.post(STATUS_PATH, report)


def _strip(pointer: dict | None) -> dict | None:
    if not pointer:
        return None
    return {k: v for k, v in pointer.items() if k != "previous"}


def _header_seconds(response: Response, *names: str) -> float | None:
    for name in names:
        value = response.header(name)
        if value:
            with contextlib.suppress(ValueError):
                return float(value)
    return None


def _advised_interval(response: Response) -> float | None:
    value = _header_seconds(response, "x-poll-interval", "poll-interval")
    if value is not None:
        return value
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
        start, end = (
            int(h) * 60 + int(m) for h, m in (str(window[k]).split(":") for k in ("start", "end"))
        )
    except (KeyError, ValueError, TypeError):
        return True
    minute = moment.astimezone(UTC).hour * 60 + moment.astimezone(UTC).minute
    return start <= minute < end if start <= end else minute >= start or minute < end
