"""Device credentials and presence kept in Redis, so a poll needs no database query.

Credential entry `devauth:<token prefix>`:
- `"<sha256>:<device pk>"`, written with SET NX after a database hit;
- `"-"`, a tombstone, written unconditionally when a credential is revoked or its
  device deleted (now and again after commit).
Both live `DEVICE_AUTH_CACHE_S`. Because a fill never overwrites and a tombstone
always does, a fill that read the database just before a revocation committed
cannot outlive the revocation: the next request after the commit gets 401 (A1).

Presence: each poll adds `<device pk> → unix time` to the sorted set
`devices:seen` in the same Redis call; `flush_presence` (periodic) moves it to
`Device.last_seen` in a few bulk UPDATEs — no database write per poll.

Only with a shared cache (django's RedisCache). A process-local cache could not
be invalidated across web workers, so elsewhere every request asks the database.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from django.db.models import Q

from devices.choices import AlertKind, AlertState, DeviceStatus
from devices.models import Alert, Device

KEY = "devauth:{}"
SEEN = "devices:seen"
TOMBSTONE = "-"
FLUSH_CHUNK = 5000
SEEN_BUCKET_S = 5  # devices seen within the same 5 s share one UPDATE

def redis_client():
    """The raw redis client behind the default cache, or None if it is not Redis.
    Kept on the cache object: django builds a new client on every `get_client()`."""
    wrapper = getattr(caches["default"], "_cache", None)
    if not hasattr(wrapper, "get_client"):
        return None
    client = getattr(wrapper, "edgefleet_client", None)
    if client is None:
        client = wrapper.edgefleet_client = wrapper.get_client(write=True)
    return client


def make_key(name: str) -> str:
    return caches["default"].make_key(name)


def credential_key(prefix: str) -> str:
    return make_key(KEY.format(prefix))


def remember(prefix: str, token_hash: str, device_pk: int) -> None:
    """Cache a credential the database just confirmed (never over a tombstone)."""
    client = redis_client()
    if client is not None:
        client.set(credential_key(prefix), f"{token_hash}:{device_pk}", nx=True,
                   ex=settings.DEVICE_AUTH_CACHE_S)


def forget(prefixes) -> None:
    """Tombstone credentials now and after commit: their next request is a 401."""
    prefixes = sorted(set(prefixes))
    client = redis_client()
    if client is None or not prefixes:
        return

    def tombstone():
        with client.pipeline(transaction=False) as pipe:
            for prefix in prefixes:
                pipe.set(credential_key(prefix), TOMBSTONE, ex=settings.DEVICE_AUTH_CACHE_S)
            pipe.execute()

    tombstone()
    transaction.on_commit(tombstone)


def on_credential_saved(sender, instance, **kwargs) -> None:
    if instance.revoked_at is not None:
        forget([instance.prefix])


def on_credential_deleted(sender, instance, **kwargs) -> None:
    forget([instance.prefix])


def on_device_saved(sender, instance, update_fields=None, **kwargs) -> None:
    if instance.status == DeviceStatus.REVOKED and (update_fields is None
                                                    or "status" in update_fields):
        forget(instance.credentials.values_list("prefix", flat=True))


# --- presence -------------------------------------------------------------------------------
def flush_presence() -> int:
    """Move devices seen by check-ins from Redis to `Device.last_seen`; returns how many."""
    client = redis_client()
    if client is None:
        return 0
    key, total = make_key(SEEN), 0
    while True:
        popped = client.zpopmin(key, FLUSH_CHUNK)
        if not popped:
            return total
        total += _mark_seen({int(pk): score for pk, score in popped})
        if len(popped) < FLUSH_CHUNK:
            return total


def _mark_seen(seen: dict[int, float]) -> int:
    now = time.time()
    buckets: dict[int, list[int]] = defaultdict(list)
    for pk, ts in seen.items():
        buckets[int(min(ts, now)) // SEEN_BUCKET_S * SEEN_BUCKET_S].append(pk)
    woke = list(Device.objects.filter(pk__in=list(seen), status=DeviceStatus.OFFLINE)
                .values_list("pk", flat=True))
    for second, pks in buckets.items():
        moment = datetime.fromtimestamp(second, UTC)
        # As `services.touch_last_seen`: an online device is rewritten at most every
        # DEVICE_LAST_SEEN_WRITE_S, and last_seen never moves backwards.
        stale = moment - timedelta(seconds=settings.DEVICE_LAST_SEEN_WRITE_S)
        due = (Q(last_seen__isnull=True) | Q(last_seen__lt=stale)
               | (Q(last_seen__lt=moment) & ~Q(status=DeviceStatus.ONLINE)))
        Device.objects.filter(due, pk__in=pks).exclude(status=DeviceStatus.REVOKED).update(
            last_seen=moment, status=DeviceStatus.ONLINE)
    if woke:
        Alert.objects.filter(device_id__in=woke, kind=AlertKind.OFFLINE,
                             state=AlertState.OPEN).update(
            state=AlertState.RESOLVED, resolved_at=datetime.now(UTC))
    return len(seen)
