"""`GET /api/v1/device/update`, the hottest endpoint: a plain Django view.

Every device polls it, so it does the least work that keeps the contract:
one indexed credential lookup (revocation takes effect at once, A1), then one
cache round trip that both counts the per-device rate and reads the cached
answer (a Redis pipeline; two plain cache calls elsewhere). No database write.
DRF is skipped on purpose: its request wrapping, negotiation and list-based
throttle history cost more than the whole answer.
"""

from __future__ import annotations

import hmac
import random
import time
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from devices import tokens
from devices.choices import DeviceStatus
from devices.models import Device, DeviceCredential
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


def count_and_fetch(device_pk: int, period: int) -> tuple[int, tuple | None]:
    """(requests of this device in the current window, cached answer or None)."""
    cache = caches["default"]
    window = int(time.time() // period)
    counter = f"ota:poll:{device_pk}:{window}"
    answer_key = manifests.CACHE_KEY.format(device_pk)
    client = getattr(cache, "_cache", None)
    if hasattr(client, "get_client"):  # django's RedisCache: one pipelined round trip
        redis = client.get_client(write=True)
        pipe = redis.pipeline(transaction=False)
        pipe.incr(cache.make_and_validate_key(counter))
        pipe.expire(cache.make_and_validate_key(counter), period + 1)
        pipe.get(cache.make_and_validate_key(answer_key))
        count, _expire, raw = pipe.execute()
        return int(count), (client._serializer.loads(raw) if raw is not None else None)
    cache.add(counter, 0, period + 1)
    try:
        count = cache.incr(counter)
    except ValueError:  # expired between add and incr
        count = 1
    return count, cache.get(answer_key)


AUTH_SQL = (
    f"SELECT c.token_hash, d.id, d.status FROM {DeviceCredential._meta.db_table} c "
    f"JOIN {Device._meta.db_table} d ON d.id = c.device_id "
    "WHERE c.prefix = %s AND c.revoked_at IS NULL"
)


def device_for_token(value: str) -> int | None:
    """The device id of a live credential: the same rule as `devices.auth.authenticate_token`
    (prefix lookup, constant-time hash compare, revoked credential or device refused) in
    one raw query, because building two ORM instances per poll cost more than the poll.
    """
    if not isinstance(value, str) or len(value) < tokens.PREFIX_LEN + 8 or len(value) > 200:
        return None
    wanted = tokens.digest(value)
    with connection.cursor() as cursor:
        cursor.execute(AUTH_SQL, [value[:tokens.PREFIX_LEN]])
        rows = cursor.fetchall()
    for token_hash, device_pk, status in rows:
        if hmac.compare_digest(token_hash, wanted):
            return None if status == DeviceStatus.REVOKED else device_pk
    return None


@require_GET
def update(request):
    parts = request.headers.get("Authorization", "").split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return _refused(401, "Device token required.", "not_authenticated",
                        WWW_Authenticate='Bearer realm="devices"')
    device_pk = device_for_token(parts[1])
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
    if answer.etag in _etags(request.headers.get("If-None-Match", "")):
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
