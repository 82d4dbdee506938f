"""`GET /api/v1/device/update`, the hottest endpoint: a plain Django view.

Every device polls it, so it does the least work that keeps the contract. With
Redis as the cache a poll is one Redis script call and no database query: the
credential comes from `devices.authcache` (revocation tombstones it, A1), and
the same call counts the poll for the per-device rate limit, notes the device
as seen and reads the cached answer. A credential not cached yet costs one
indexed database lookup, once per `DEVICE_AUTH_CACHE_S`. Other cache backends:
the database lookup every time, then plain cache calls. Never a database write.
DRF is skipped on purpose: its request wrapping, negotiation and list-based
throttle history cost more than the whole answer.
"""

from __future__ import annotations

import logging
import random
import time
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.db import DatabaseError, connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from redis.exceptions import RedisError

from devices import authcache, tokens
from devices.auth import device_for_token
from ota import manifests

log = logging.getLogger(__name__)

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@lru_cache(maxsize=8)
def parse_rate(rate: str) -> tuple[int, int]:
    count, _, period = rate.partition("/")
    return int(count), PERIODS[period[0]]


def poll_interval() -> str:
    base = settings.OTA_POLL_INTERVAL_S
    return str(max(1, round(base * random.uniform(0.8, 1.2))))


def _refused(status: int, detail: str, code: str, **headers) -> JsonResponse:
    response = JsonResponse({"detail": detail, "code": code}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


# With Redis, a poll is this one command: look the credential up (authcache), count
# the poll for the rate limit, note the device as seen, read the cached answer.
# Returns {0} when the credential is not cached (ask the database), {-1} when
# revoked, else {device pk, polls in this window, cached answer or false}.
POLL = """
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
return {tonumber(pk), n, redis.call('GET', ARGV[7] .. pk)}
"""
# The same minus the credential, after a database lookup.
COUNT_AND_GET = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return {n, redis.call('GET', KEYS[2])}
"""
def _script(client, source: str):
    """One registered script per (redis client, source), kept on the client."""
    scripts = client.__dict__.setdefault("edgefleet_scripts", {})
    script = scripts.get(source)
    if script is None:
        script = scripts[source] = client.register_script(source)
    return script


class Unknown(Exception):
    """The token matches no live credential."""


def _poll_redis(client, token: str, period: int) -> tuple[int, int, tuple | None]:
    key = tokens.lookup_key(token)
    if key is None:
        raise Unknown
    prefix, wanted = key
    now = time.time()
    window = int(now // period)
    cache = caches["default"]
    loads = cache._cache._serializer.loads
    result = _script(client, POLL)(
        keys=[authcache.credential_key(prefix), authcache.make_key(authcache.SEEN)],
        args=[authcache.TOMBSTONE, wanted, cache.make_key("ota:poll:"), window, period + 1,
              int(now), cache.make_key(manifests.CACHE_KEY.format(""))])
    if result[0] == -1:
        raise Unknown
    if result[0]:
        device_pk, count, raw = result
        return device_pk, int(count), (loads(raw) if raw else None)
    device_pk = device_for_token(token)
    if device_pk is None:
        raise Unknown
    authcache.remember(prefix, wanted, device_pk)
    count, raw = _script(client, COUNT_AND_GET)(
        keys=[cache.make_key(f"ota:poll:{device_pk}:{window}"),
              cache.make_key(manifests.CACHE_KEY.format(device_pk)),
              authcache.make_key(authcache.SEEN)],
        args=[period + 1, int(now), device_pk])
    return device_pk, int(count), (loads(raw) if raw else None)


def _poll_cache(token: str, period: int) -> tuple[int, int, tuple | None]:
    """Any other cache backend: the credential from the database, plain cache calls."""
    device_pk = device_for_token(token)
    if device_pk is None:
        raise Unknown
    cache = caches["default"]
    counter = f"ota:poll:{device_pk}:{int(time.time() // period)}"
    cache.add(counter, 0, period + 1)
    try:
        count = cache.incr(counter)
    except ValueError:  # expired between add and incr
        count = 1
    return device_pk, count, cache.get(manifests.CACHE_KEY.format(device_pk))


@require_GET
def update(request):
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return _refused(401, "Device token required.", "not_authenticated",
                        WWW_Authenticate='Bearer realm="devices"')
    limit, period = parse_rate(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["device"])
    client = authcache.redis_client()
    try:
        if client is not None:
            device_pk, count, cached = _poll_redis(client, parts[1], period)
        else:
            device_pk, count, cached = _poll_cache(parts[1], period)
    except Unknown:
        return _refused(401, "Unknown or revoked device token.", "authentication_failed",
                        WWW_Authenticate='Bearer realm="devices"')
    except (DatabaseError, RedisError) as exc:
        log.error("check-in: backing service unavailable: %s", exc)
        connection.close_if_unusable_or_obsolete()
        return _refused(503, "Service unavailable; retry later.", "unavailable",
                        Retry_After=str(settings.DEVICE_RETRY_AFTER_S))
    if count > limit:
        wait = period - int(time.time()) % period
        return _refused(429, f"Too many check-ins; retry in {wait} s.", "throttled",
                        Retry_After=str(wait))
    answer = manifests.CheckIn(*cached) if cached else manifests.checkin_for(device_pk)
    if answer.etag in _etags(request.META.get("HTTP_IF_NONE_MATCH", "")):
        response = HttpResponse(status=304)
    elif answer.body is None:
        response = HttpResponse(status=204)
    else:
        response = HttpResponse(answer.body, content_type="application/json")
    response["ETag"] = answer.etag
    response["X-Poll-Interval"] = poll_interval()
    response["Cache-Control"] = "no-cache"
    return response


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}
