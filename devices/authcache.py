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
from django.core.cache.backends.redis import RedisSerializer
from django.db import transaction
from django.db.models import Q

from devices.choices import AlertKind, AlertState, DeviceStatus
from devices.models import Alert, Device

KEY = "devauth:{}"
SEEN = "devices:seen"
TOMBSTONE = "-"
FLUSH_CHUNK = 5000
SEEN_BUCKET_S = 5  # devices seen within the same 5 s share one UPDATE
SERIALIZER = RedisSerializer()


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


def loads(raw: bytes | None):
    """A value the Lua scripts read raw from a key the Django cache wrote: Django's
    RedisCache stores values with its RedisSerializer (integers as digits, anything
    else pickled), so decode them the same way."""
    return None if raw is None else SERIALIZER.loads(raw)


def make_key(name: str) -> str:
    return caches["default"].make_key(name)


def credential_key(prefix: str) -> str:
    return make_key(KEY.format(prefix))


def remember(prefix: str, token_hash: str, device_pk: int) -> None:
    """Cache a credential the database just confirmed (never over a tombstone)."""
    client = redis_client()
    if client is not None:
        client.set(
            credential_key(prefix),
            f"{token_hash}:{device_pk}",
            nx=True,
            ex=settings.DEVICE_AUTH_CACHE_S,
        )


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


# --- one Redis call per device request ------------------------------------------------------
# Look the credential up, count the request in the device's rate window, note the
# device as seen, and (check-in) read its cached answer. Returns {0} when the
# credential is not cached (ask the database), {-1} when revoked, else
# {device pk, requests in this window, cached answer or false}.
REQUEST = """
local cred = redis.call('GET', KEYS[1])
if not cred then return {0} end
if cred == ARGV[1] then return {-1} end
local sep = string.find(cred, ':', 1, true)
if not sep or string.sub(cred, 1, sep - 1) ~= ARGV[2] then return {0} end
local pk = string.sub(cred, sep + 1)
local counter = ARGV[3] .. pk .. ':' .. ARGV[4]
local n = redis.call('INCR', counter)
if n == 1 then redis.call('EXPIRE', counter, ARGV[5]) end
redis.call('ZADD', KEYS[2], ARGV[6], pk)
local answer = false
if ARGV[7] ~= '' then answer = redis.call('GET', ARGV[7] .. pk) end
return {tonumber(pk), n, answer}
"""
# The same for a device the database just confirmed (no credential to check).
COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
local answer = false
if KEYS[3] then answer = redis.call('GET', KEYS[3]) end
return {n, answer}
"""
MISS, REVOKED = 0, -1


def _script(client, source: str):
    """One registered script per (redis client, source), kept on the client."""
    scripts = client.__dict__.setdefault("edgefleet_scripts", {})
    script = scripts.get(source)
    if script is None:
        script = scripts[source] = client.register_script(source)
    return script


def request(
    client, prefix: str, token_hash: str, counter: str, period: int, answer: str = ""
) -> tuple[int, int, bytes | None] | int:
    """(device pk, requests in this window, raw cached answer), or MISS / REVOKED.

    `counter`: the rate counter's name before `<pk>:<window>`; `answer`: the name of
    a cached value before `<pk>` to read in the same call ("" for none)."""
    now = time.time()
    result = _script(client, REQUEST)(
        keys=[credential_key(prefix), make_key(SEEN)],
        args=[
            TOMBSTONE,
            token_hash,
            make_key(counter),
            int(now // period),
            period + 1,
            int(now),
            make_key(answer) if answer else "",
        ],
    )
    if result[0] in (MISS, REVOKED):
        return result[0]
    return int(result[0]), int(result[1]), result[2] or None


def confirmed(
    client,
    prefix: str,
    token_hash: str,
    device_pk: int,
    counter: str,
    period: int,
    answer: str = "",
) -> tuple[int, int, bytes | None]:
    """After a database hit: cache the credential, then count and read as `request`."""
    remember(prefix, token_hash, device_pk)
    now = time.time()
    keys = [make_key(f"{counter}{device_pk}:{int(now // period)}"), make_key(SEEN)]
    if answer:
        keys.append(make_key(f"{answer}{device_pk}"))
    count, raw = _script(client, COUNT)(keys=keys, args=[period + 1, int(now), device_pk])
    return device_pk, int(count), raw or None


def note_seen(client, device_pk: int) -> None:
    client.zadd(make_key(SEEN), {str(device_pk): int(time.time())})


def on_credential_saved(sender, instance, **kwargs) -> None:
    if instance.revoked_at is not None:
        forget([instance.prefix])


def on_credential_deleted(sender, instance, **kwargs) -> None:
    forget([instance.prefix])


def on_device_saved(sender, instance, update_fields=None, **kwargs) -> None:
    if instance.status == DeviceStatus.REVOKED and (
        update_fields is None or "status" in update_fields
    ):
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
    woke = list(
        Device.objects.filter(pk__in=list(seen), status=DeviceStatus.OFFLINE).values_list(
            "pk", flat=True
        )
    )
    for second, pks in buckets.items():
        moment = datetime.fromtimestamp(second, UTC)
        # As `services.touch_last_seen`: an online device is rewritten at most every
        # DEVICE_LAST_SEEN_WRITE_S, and last_seen never moves backwards.
        stale = moment - timedelta(seconds=settings.DEVICE_LAST_SEEN_WRITE_S)
        due = (
            Q(last_seen__isnull=True)
            | Q(last_seen__lt=stale)
            | (Q(last_seen__lt=moment) & ~Q(status=DeviceStatus.ONLINE))
        )
        Device.objects.filter(due, pk__in=pks).exclude(status=DeviceStatus.REVOKED).update(
            last_seen=moment, status=DeviceStatus.ONLINE
        )
    if woke:
        Alert.objects.filter(
            device_id__in=woke, kind=AlertKind.OFFLINE, state=AlertState.OPEN
        ).update(state=AlertState.RESOLVED, resolved_at=datetime.now(UTC))
    return len(seen)
