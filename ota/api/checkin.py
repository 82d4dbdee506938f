"""`GET /api/v1/device/update`, the hottest endpoint: a plain Django view.

Every device polls it, so it does the least work that keeps the contract:
one indexed credential lookup (revocation takes effect at once, A1), then one
cache round trip that both counts the per-device rate and reads the cached
answer (one Redis script call; plain cache calls on other backends). No database write.
DRF is skipped on purpose: its request wrapping, negotiation and list-based
throttle history cost more than the whole answer.
"""

from __future__ import annotations

import random
import time
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.db import DatabaseError, connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from devices.auth import device_for_token
from ota import manifests

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


# Count this poll and read the cached answer in one Redis command.
COUNT_AND_GET = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('GET', KEYS[2])}
"""
_scripts: dict[int, object] = {}


def _redis_script(client):
    """One script object per cache client: django's `get_client()` builds a new
    redis client (and its callback table) on every call, too slow per poll."""
    script = _scripts.get(id(client))
    if script is None:
        script = client.get_client(write=True).register_script(COUNT_AND_GET)
        _scripts[id(client)] = script
    return script


def count_and_fetch(device_pk: int, period: int) -> tuple[int, tuple | None]:
    """(requests of this device in the current window, cached answer or None)."""
    cache = caches["default"]
    window = int(time.time() // period)
    counter = f"ota:poll:{device_pk}:{window}"
    answer_key = manifests.CACHE_KEY.format(device_pk)
    client = getattr(cache, "_cache", None)
    if hasattr(client, "get_client"):  # django's RedisCache
        count, raw = _redis_script(client)(
            keys=[cache.make_key(counter), cache.make_key(answer_key)],
            args=[period + 1])
        return int(count), (client._serializer.loads(raw) if raw is not None else None)
    cache.add(counter, 0, period + 1)
    try:
        count = cache.incr(counter)
    except ValueError:  # expired between add and incr
        count = 1
    return count, cache.get(answer_key)


@require_GET
def update(request):
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return _refused(401, "Device token required.", "not_authenticated",
                        WWW_Authenticate='Bearer realm="devices"')
    try:
        device_pk = device_for_token(parts[1])
    except DatabaseError:
        connection.close_if_unusable_or_obsolete()
        return _refused(503, "Database unavailable; retry later.", "unavailable",
                        Retry_After=str(settings.DEVICE_RETRY_AFTER_S))
    if device_pk is None:
        return _refused(401, "Unknown or revoked device token.", "authentication_failed",
                        WWW_Authenticate='Bearer realm="devices"')
    limit, period = parse_rate(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["device"])
    count, cached = count_and_fetch(device_pk, period)
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
