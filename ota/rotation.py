"""Server key rotation: a next key announced during an overlap, then activated.

1. `prepare_next_key()` creates the next key pair (inactive). From then on every
   signed thing the server sends — manifests and the timestamp statement on
   every check-in answer, 204 and 304 included — carries it as `next_key`,
   signed by the current key; devices pin it at their next check-in.
2. After the overlap (`OTA_KEY_OVERLAP_H`, long enough for devices that are
   offline for a while), `activate_next_key()` makes it the signing key,
   re-signs every pending manifest with it, erases the retired key's private
   half and drops every cached check-in answer. Devices retire the old key the
   first time something signed by the new one verifies.

Devices that were offline for the whole overlap refuse everything signed by
the new key and must be re-enrolled (docs/security.md, "Key rotation").
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from devices.agent import manifest as mf
from devices.models import Device
from ota import keys, manifests
from ota.choices import ACTIVE_STATES
from ota.models import DeviceUpdate, ServerKey


class RotationError(Exception):
    pass


def next_key() -> ServerKey | None:
    active = keys.active_key()
    return (
        ServerKey.objects.filter(active=False, created_at__gt=active.created_at)
        .exclude(private_key_pem="")
        .order_by("-created_at")
        .first()
    )


def prepare_next_key() -> ServerKey:
    """The next key, created once (idempotent); announced from now on."""
    existing = next_key()
    if existing is not None:
        return existing
    key = keys.new_key(active=False)
    key.save()
    forget_all()
    return key


def activate_next_key(*, force: bool = False, now=None) -> ServerKey:
    """Switch signing to the prepared key once the overlap is over (or `force`)."""
    now = now or timezone.now()
    nxt = next_key()
    if nxt is None:
        raise RotationError("no next key prepared: run `rotate_server_key prepare` first")
    overlap = timedelta(hours=settings.OTA_KEY_OVERLAP_H)
    if not force and now - nxt.created_at < overlap:
        raise RotationError(
            f"the next key is announced since {nxt.created_at:%Y-%m-%d %H:%M} "
            f"UTC; the overlap ends at {nxt.created_at + overlap:%Y-%m-%d %H:%M}"
            " UTC (--force to switch earlier)"
        )
    with transaction.atomic():
        old = keys.active_key()
        ServerKey.objects.filter(pk=old.pk).update(active=False, private_key_pem="")
        ServerKey.objects.filter(pk=nxt.pk).update(active=True)
        nxt.refresh_from_db()
        _resign(nxt, now)
    forget_all()
    return nxt


def _resign(key: ServerKey, now) -> int:
    """Every manifest still to be fetched, signed again by `key` (same version)."""
    private = keys.private_key(key)
    issued = mf.format_time(now)
    expires = mf.format_time(now + timedelta(hours=settings.OTA_MANIFEST_TTL_H))
    updates = list(
        DeviceUpdate.objects.select_for_update().filter(
            state__in=ACTIVE_STATES, envelope__isnull=False
        )
    )
    for update in updates:
        payload = {
            **update.envelope["manifest"],
            "issued_at": issued,
            "expires_at": expires,
            "next_key": None,
        }
        update.envelope = mf.sign(payload, private)
    DeviceUpdate.objects.bulk_update(updates, ["envelope"], batch_size=500)
    return len(updates)


def forget_all() -> None:
    """Drop every cached check-in answer: the next poll gets a statement naming the
    current key state."""
    pks = list(Device.objects.values_list("pk", flat=True))
    for start in range(0, len(pks), 5000):
        manifests.forget(pks[start : start + 5000])
