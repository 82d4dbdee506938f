"""Device workflows. HTTP views and the MQTT bridge call these same functions."""

from __future__ import annotations

import math
import re
import secrets
import time
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from devices import authcache, ingest, tokens
from devices.choices import AlertKind, AlertState, DeviceStatus
from devices.models import (
    Alert,
    Device,
    DeviceCredential,
    DeviceGroup,
    DropReport,
    EnrollmentToken,
    HardwareProfile,
    LatencyBaseline,
    Tag,
)
from fleet import prometheus
from fleet.refusal import Refusal

UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
INVENTORY_KEYS = {
    "arch",
    "cpu",
    "cpu_count",
    "ram_mb",
    "os",
    "kernel",
    "python",
    "onnxruntime",
    "execution_providers",
    "agent_version",
    "hardware_profile",
    "models",
    "disk_free_mb",
}
MAX_INVENTORY_BYTES = 16 * 1024


class DeviceError(Refusal):
    """A refused enrollment, inventory, batch or device change (`fleet.refusal`)."""


# --- enrollment ---------------------------------------------------------------------
def create_enrollment_token(
    *,
    name: str,
    actor=None,
    group: DeviceGroup | None = None,
    tags=(),
    expires_at=None,
    max_uses: int | None = None,
):
    """(token row, plaintext): the plaintext is shown once and never stored."""
    value, prefix, digest = tokens.new_token(tokens.ENROLLMENT)
    with transaction.atomic():
        token = EnrollmentToken.objects.create(
            name=name,
            prefix=prefix,
            token_hash=digest,
            group=group,
            expires_at=expires_at,
            max_uses=max_uses,
            created_by=actor if getattr(actor, "pk", None) else None,
        )
        token.tags.set(tags_named(tags))
    return token, value


def tags_named(names) -> list[Tag]:
    cleaned = sorted({str(n).strip().lower() for n in names if str(n).strip()})
    for name in cleaned:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
            raise DeviceError(
                "bad_tag", _("Tag %(tag)r: use letters, digits, - and _.") % {"tag": name}
            )
    existing = {t.name: t for t in Tag.objects.filter(name__in=cleaned)}
    for name in cleaned:
        if name not in existing:
            existing[name] = Tag.objects.get_or_create(name=name)[0]
    return [existing[n] for n in cleaned]


def enroll(token_value, facts) -> tuple[Device, str]:
    """Enroll a device with an enrollment token; returns (device, device token).

    `facts`: optional uid, name, hardware_profile (slug), inventory fields.
    The uses counter is claimed with a conditional UPDATE so concurrent
    enrollments can never exceed `max_uses`.
    """
    if not isinstance(facts, dict):
        raise DeviceError("bad_facts", _("Hardware facts must be an object."))
    token = tokens.find(EnrollmentToken.objects.select_related("group"), token_value)
    if token is None or not token.is_usable:
        raise DeviceError(
            "bad_enrollment_token", _("Unknown, expired, revoked or used-up enrollment token."), 403
        )
    uid = facts.get("uid") or f"dev-{secrets.token_hex(8)}"
    if not isinstance(uid, str) or not UID_RE.match(uid):
        raise DeviceError("bad_uid", _("uid: 1-64 letters, digits, '.', '_', ':' or '-'."))
    name = facts.get("name") or ""
    if not isinstance(name, str) or len(name) > 120:
        raise DeviceError("bad_name", _("name: a string of at most 120 characters."))
    inventory = clean_inventory({k: v for k, v in facts.items() if k not in {"uid", "name"}})
    profile = _profile(inventory.get("hardware_profile"))
    value, prefix, digest = tokens.new_token(tokens.DEVICE)
    try:
        with transaction.atomic():
            claimed = (
                EnrollmentToken.objects.filter(pk=token.pk, revoked_at__isnull=True)
                .filter(Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses")))
                .update(uses=F("uses") + 1)
            )
            if not claimed:
                raise DeviceError("bad_enrollment_token", _("Enrollment token is used up."), 403)
            device = Device.objects.create(
                uid=uid,
                name=name,
                group=token.group,
                hardware_profile=profile,
                inventory=inventory,
                enrolled_with=token,
                last_seen=timezone.now(),
                status=DeviceStatus.ONLINE,
                **_denormalized(inventory),
            )
            device.tags.set(token.tags.all())
            DeviceCredential.objects.create(device=device, prefix=prefix, token_hash=digest)
    except IntegrityError:
        raise DeviceError(
            "uid_taken", _("A device with this uid is already enrolled."), 409
        ) from None
    return device, value


def _profile(slug) -> HardwareProfile | None:
    if not slug:
        return None
    profile = HardwareProfile.objects.filter(slug=slug).first()
    if profile is None:
        raise DeviceError(
            "bad_hardware_profile", _("Unknown hardware profile %(slug)r.") % {"slug": slug}
        )
    return profile


def clean_inventory(data) -> dict:
    if not isinstance(data, dict):
        raise DeviceError("bad_inventory", _("Inventory must be an object."))
    unknown = set(data) - INVENTORY_KEYS
    if unknown:
        raise DeviceError(
            "bad_inventory",
            _("Unknown inventory fields: %(f)s") % {"f": ", ".join(sorted(unknown))},
        )
    if len(str(data)) > MAX_INVENTORY_BYTES:
        raise DeviceError("bad_inventory", _("Inventory is too large."), 413)
    models = data.get("models", {})
    if not isinstance(models, dict) or not all(
        isinstance(slot, str) and isinstance(v, dict) for slot, v in models.items()
    ):
        raise DeviceError(
            "bad_inventory", _("models: an object of slot → {model_version, sha256}.")
        )
    for key in ("agent_version", "hardware_profile", "arch", "os", "onnxruntime"):
        if key in data and not isinstance(data[key], str):
            raise DeviceError("bad_inventory", _("%(k)s must be a string.") % {"k": key})
    return data


def _denormalized(inventory: dict) -> dict:
    models = inventory.get("models") or {}
    slot = models.get("default") or (next(iter(models.values())) if models else {})
    return {
        "model_version": str(slot.get("model_version") or "")[:120],
        "agent_version": str(inventory.get("agent_version") or "")[:40],
    }


def update_inventory(device: Device, data) -> Device:
    """Replace the device's inventory with what it reports now."""
    inventory = clean_inventory(data)
    profile = (
        _profile(inventory.get("hardware_profile"))
        if inventory.get("hardware_profile")
        else device.hardware_profile
    )
    for key, value in _denormalized(inventory).items():
        setattr(device, key, value)
    device.inventory = inventory
    device.hardware_profile = profile
    device.save(update_fields=["inventory", "hardware_profile", "model_version", "agent_version"])
    touch_last_seen(device)
    return device


# --- presence -------------------------------------------------------------------------
def note_seen(device: Device) -> None:
    """Record that the device is alive: in Redis when the cache is Redis (moved to
    `last_seen` by the periodic flush, `authcache.flush_presence`), else `touch_last_seen`."""
    client = authcache.redis_client()
    if client is not None:
        authcache.note_seen(client, device.pk)
    else:
        touch_last_seen(device)


def touch_last_seen(device: Device) -> None:
    """Record that the device is alive; writes at most every DEVICE_LAST_SEEN_WRITE_S."""
    now = timezone.now()
    fresh = now - timedelta(seconds=settings.DEVICE_LAST_SEEN_WRITE_S)
    if device.status == DeviceStatus.ONLINE and device.last_seen and device.last_seen > fresh:
        return
    was_offline = device.status == DeviceStatus.OFFLINE
    Device.objects.filter(pk=device.pk).exclude(status=DeviceStatus.REVOKED).update(
        last_seen=now, status=DeviceStatus.ONLINE
    )
    device.last_seen, device.status = now, DeviceStatus.ONLINE
    if was_offline:
        for alert in Alert.objects.filter(
            device=device, kind=AlertKind.OFFLINE, state=AlertState.OPEN
        ):
            alert.resolve()


# --- telemetry and logs -----------------------------------------------------------------
def _ingest(
    table: ingest.Table, device: Device, batch, dropped, seen_noted: bool
) -> ingest.IngestResult:
    try:
        keys, rows, result = ingest.validate(
            table, batch, max_items=settings.DEVICE_MAX_BATCH_ITEMS, now=time.time()
        )
    except ingest.BadBatch as exc:
        status = 413 if isinstance(batch, list) else 400
        prometheus.count_records(table.kind, rejected=len(batch) if status == 413 else 1)
        raise DeviceError("too_large" if status == 413 else "bad_batch", str(exc), status) from None
    result.new = ingest.insert(table, device.pk, keys, rows)
    result.duplicates += len(rows) - result.new
    newly_dropped = record_dropped(device, table.kind, keys[0], dropped) if dropped and keys else 0
    prometheus.count_records(
        table.kind,
        stored=result.new,
        duplicate=result.duplicates,
        rejected=len(result.rejected),
        dropped=newly_dropped,
    )
    if not seen_noted:
        note_seen(device)
    return result


def record_dropped(device: Device, kind: str, first_key: tuple[str, int], count) -> int:
    """Remember how many records the agent's buffer dropped; idempotent per batch.
    Returns how many more than already recorded for that batch."""
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        return 0
    count = min(count, 2**31 - 1)
    boot_id, first_seq = first_key
    report, created = DropReport.objects.get_or_create(
        device_id=device.pk,
        kind=kind,
        boot_id=boot_id,
        first_seq=first_seq,
        defaults={"count": count},
    )
    if created:
        return count
    if report.count < count and DropReport.objects.filter(pk=report.pk, count__lt=count).update(
        count=count
    ):
        return count - report.count
    return 0


def ingest_telemetry(
    device: Device, batch, *, dropped=0, seen_noted: bool = False
) -> ingest.IngestResult:
    """Store a batch of telemetry points; idempotent per (boot_id, seq).

    `dropped`: records the agent's offline buffer had to drop before this batch.
    `seen_noted`: the caller's authentication already noted the device as seen.
    """
    return _ingest(ingest.TELEMETRY, device, batch, dropped, seen_noted)


def ingest_logs(
    device: Device, batch, *, dropped=0, seen_noted: bool = False
) -> ingest.IngestResult:
    """Store a batch of log lines; idempotent per (boot_id, seq)."""
    return _ingest(ingest.LOGS, device, batch, dropped, seen_noted)


# --- estimates -------------------------------------------------------------------------
def record_latency_estimate(model_version: str, profile: HardwareProfile | None, p95_ms) -> bool:
    """Remember the benchmark p95 of a version label on a hardware profile: what
    latency alerts and OTA gates compare on-device measurements with."""
    if (
        profile is None
        or isinstance(p95_ms, bool)
        or not isinstance(p95_ms, int | float)
        or not math.isfinite(p95_ms)
        or p95_ms <= 0
    ):
        return False
    LatencyBaseline.objects.update_or_create(
        model_version=model_version, hardware_profile=profile, defaults={"p95_ms": float(p95_ms)}
    )
    return True


# --- administration --------------------------------------------------------------------
def revoke_device(device: Device) -> int:
    """Revoke every credential of the device: its next request gets 401."""
    with transaction.atomic():
        count = DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        device.mark_revoked()  # its post_save tombstones the cached credentials (authcache)
    return count


def update_device(device: Device, changes: dict) -> None:
    """Apply an operator's edit: any of `tags` (names), `group` (or None) and `name`.

    One transaction: a refused tag name leaves the device as it was. The page and the
    API both edit devices through here.
    """
    with transaction.atomic():
        if "tags" in changes:
            device.tags.set(tags_named(changes["tags"]))
        if "group" in changes:
            device.move_to(changes["group"])
        if "name" in changes:
            device.name = changes["name"]
            device.save(update_fields=["name"])
