"""Building, signing and serving manifests (docs/manifest.md).

Envelopes are signed once, when an update is assigned, with
`devices.agent.manifest.sign` (the agent's own module, so both sides agree byte
for byte) and stored on the `DeviceUpdate`. Check-in only reads: the answer per
device is cached with its ETag and dropped whenever one of its updates changes.

With the answer goes its signed timestamp statement (the `X-Signed-Timestamp`
header on 200, 204 and 304): device uid, ETag, body sha256, assigned version
per slot, a short expiry and the next key of a rotation. It is signed when the
answer is cached, and the cache keeps it at most half its lifetime, so a
served statement always has at least half of `OTA_TIMESTAMP_TTL_S` left and a
poll still costs no signature and no query.

The answer also counts the device's pending benchmark requests (`X-Benchmarks`
on check-in and upload answers), so a device fetches the list only when there
is something in it instead of polling for it; creating a request and a device's
report drop the cached answer like an update does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import astuple, dataclass, replace
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from devices.agent import manifest as mf
from devices.models import Device
from ota import keys
from ota.choices import ACTIVE_STATES
from ota.models import BenchmarkRun, DeviceUpdate, ServerKey

CACHE_KEY = "ota:checkin:{}"
EMPTY_ETAG = '"none"'


def artifact_path(sha256: str) -> str:
    return f"/api/v1/device/artifacts/{sha256}"


def artifact_entry(
    name: str, model_version, estimate_p95_ms: float | None = None, input_stats: dict | None = None
) -> dict:
    from ota.models import version_label

    entry = {
        "name": name,
        "model_version": version_label(model_version),
        "sha256": model_version.sha256,
        "size": int(model_version.size_bytes),
        "url": artifact_path(model_version.sha256),
    }
    if estimate_p95_ms:
        entry["estimate_p95_ms"] = round(float(estimate_p95_ms), 3)
    if input_stats:  # calibration statistics per input: the agent's drift reference
        entry["input_stats"] = input_stats
    return entry


def announced_key(active: ServerKey) -> dict | None:
    """Key rotation (U6): the newest inactive key created after the active one is the
    next key; every manifest signed by the current key announces it until it becomes active."""
    nxt = (
        ServerKey.objects.filter(active=False, created_at__gt=active.created_at)
        .order_by("-created_at")
        .first()
    )
    if nxt is None:
        return None
    raw = base64.b64decode(nxt.public_key_b64)
    return {"public_key": nxt.public_key_b64, "key_id": mf.key_id(raw)}


@dataclass
class Signer:
    """What every envelope of one assignment batch shares: key, times, rotation."""

    private_key: object
    next_key: dict | None
    issued_at: str
    expires_at: str

    @classmethod
    def now(cls, moment: datetime) -> Signer:
        active = keys.active_key()
        ttl = timedelta(hours=settings.OTA_MANIFEST_TTL_H)
        return cls(
            keys.private_key(active),
            announced_key(active),
            mf.format_time(moment),
            mf.format_time(moment + ttl),
        )

    def envelope(
        self,
        *,
        device_uid: str,
        deployment,
        version: int,
        artifacts: list[dict],
        default: str,
        policy: dict,
    ) -> dict:
        payload = {
            "schema": mf.SCHEMA,
            "device": device_uid,
            "deployment": deployment.pk,
            "slot": deployment.slot,
            "version": int(version),
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "artifacts": artifacts,
            "default": default,
            "policy": policy,
            "poll_interval_s": int(settings.OTA_POLL_INTERVAL_S),
            "install_window": deployment.install_window or None,
            "next_key": self.next_key,
        }
        if deployment.shadow:
            payload["shadow"] = deployment.shadow
        mf.check_artifacts(payload)
        mf.check_policy(policy, {a["name"] for a in artifacts})
        return mf.sign(payload, self.private_key)


def policy_for(policy: dict, names: set[str]) -> dict:
    """The release policy restricted to the variants this device receives."""
    if not policy:
        return {}
    rules = [r for r in policy.get("rules", []) if r.get("use") in names]
    result: dict = {"rules": rules}
    if policy.get("default") in names:
        result["default"] = policy["default"]
    return result if rules or "default" in result else {}


# --- check-in -------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckIn:
    etag: str
    body: bytes | None  # None: nothing assigned (204)
    statement: str | None = None  # X-Signed-Timestamp (None: cached by an older server)
    fresh_until: float = 0.0  # epoch seconds: re-sign after this
    benchmarks: int = 0  # pending benchmark requests of this device (X-Benchmarks)


def cache_seconds() -> int:
    return max(1, min(settings.OTA_CHECKIN_CACHE_S, settings.OTA_TIMESTAMP_TTL_S // 2))


def checkin_for(device_pk: int, *, cached: tuple | None = None) -> CheckIn:
    """The device's current answer; one cache read, three queries on a miss, no write.

    `cached`: what the caller already read from the cache (the Redis script); a
    4-tuple cached by an older server counts as a miss."""
    key = CACHE_KEY.format(device_pk)
    hit = cached if cached is not None else cache.get(key)
    if hit is not None and len(hit) == 5 and hit[3] > time.time():
        return CheckIn(*hit)
    rows = (
        DeviceUpdate.objects.filter(
            device_id=device_pk, state__in=ACTIVE_STATES, envelope__isnull=False
        )
        .order_by("slot", "-manifest_version")
        .values_list("slot", "envelope")
    )
    newest: dict[str, dict] = {}
    for slot, envelope in rows:
        newest.setdefault(slot, envelope)
    answer = render(list(newest.values()))
    uid = Device.objects.filter(pk=device_pk).values_list("uid", flat=True).first()
    answer = with_statement(answer, str(uid or ""), list(newest.values()))
    answer = replace(answer, benchmarks=BenchmarkRun.waiting(device_pk).count())
    cache.set(key, astuple(answer), cache_seconds())
    return answer


def render(envelopes: list[dict]) -> CheckIn:
    if not envelopes:
        return CheckIn(EMPTY_ETAG, None)
    # One slot: the envelope itself (docs/manifest.md); several: {"manifests": [...]}.
    document = envelopes[0] if len(envelopes) == 1 else {"manifests": envelopes}
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return CheckIn(f'"{hashlib.sha256(body).hexdigest()[:32]}"', body)


def with_statement(answer: CheckIn, device_uid: str, envelopes: list[dict]) -> CheckIn:
    """`answer` with its signed timestamp statement (docs/manifest.md, "Freshness")."""
    now = time.time()
    ttl = settings.OTA_TIMESTAMP_TTL_S
    moment = datetime.fromtimestamp(now, UTC)
    active = keys.active_key()
    payload = {
        "schema": mf.SCHEMA,
        "type": "timestamp",
        "device": device_uid,
        "etag": answer.etag,
        "body_sha256": hashlib.sha256(answer.body).hexdigest() if answer.body else None,
        "updates": {
            (e["manifest"].get("slot") or "default"): e["manifest"]["version"] for e in envelopes
        },
        "issued_at": mf.format_time(moment),
        "expires_at": mf.format_time(moment + timedelta(seconds=ttl)),
        "next_key": announced_key(active),
    }
    statement = mf.sign_statement(payload, keys.private_key(active))
    return CheckIn(answer.etag, answer.body, statement, now + ttl / 2)


def forget(device_pks) -> None:
    """Drop cached answers now and again after commit (a poll racing the commit
    could otherwise re-cache the old answer; the TTL bounds what remains)."""
    keys_ = [CACHE_KEY.format(pk) for pk in set(device_pks)]
    if not keys_:
        return
    cache.delete_many(keys_)
    transaction.on_commit(lambda: cache.delete_many(keys_))
