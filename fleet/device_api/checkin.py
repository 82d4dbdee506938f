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

from django.conf import settings
from django.core.cache import caches
from django.db import DatabaseError, connection
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from redis.exceptions import RedisError

from devices import authcache
from devices.agent import manifest as mf
from devices.auth import cached_request, count_in_cache, device_for_token, device_rate
from fleet.device_api.toolkit import (
    bearer_token,
    refusal,
    token_refused,
    token_required,
    unavailable,
)
from ota import manifests

log = logging.getLogger(__name__)


def poll_interval() -> str:
    base = settings.OTA_POLL_INTERVAL_S
    return str(max(1, round(base * random.uniform(0.8, 1.2))))


class Unknown(Exception):
    """The token matches no live credential."""


POLL_COUNTER = "ota:poll:"


def _poll_redis(client, token: str, period: int) -> tuple[int, int, tuple | None]:
    """One Redis call (`authcache.REQUEST`); a credential not cached yet costs one query."""
    result = cached_request(
        client, token, POLL_COUNTER, period, answer=manifests.CACHE_KEY.format("")
    )
    if result is None:
        raise Unknown
    device_pk, count, raw = result
    loads = caches["default"]._cache._serializer.loads
    return device_pk, count, (loads(raw) if raw is not None else None)


def _poll_cache(token: str, period: int) -> tuple[int, int, tuple | None]:
    """Any other cache backend: the credential from the database, plain cache calls."""
    device_pk = device_for_token(token)
    if device_pk is None:
        raise Unknown
    count = count_in_cache(POLL_COUNTER, device_pk, period)
    return device_pk, count, caches["default"].get(manifests.CACHE_KEY.format(device_pk))


@require_GET
def update(request):
    token = bearer_token(request)
    if token is None:
        return token_required()
    limit, period = device_rate()
    client = authcache.redis_client()
    try:
        if client is not None:
            device_pk, count, cached = _poll_redis(client, token, period)
        else:
            device_pk, count, cached = _poll_cache(token, period)
    except Unknown:
        return token_refused()
    except (DatabaseError, RedisError) as exc:
        log.error("check-in: backing service unavailable: %s", exc)
        connection.close_if_unusable_or_obsolete()
        return unavailable("Service unavailable; retry later.")
    if count > limit:
        wait = period - int(time.time()) % period
        return refusal(
            429, f"Too many check-ins; retry in {wait} s.", "throttled", Retry_After=str(wait)
        )
    try:
        answer = manifests.checkin_for(device_pk, cached=cached)
    except DatabaseError as exc:
        log.error("check-in: database unavailable: %s", exc)
        connection.close_if_unusable_or_obsolete()
        return unavailable("Service unavailable; retry later.")
    if answer.etag in _etags(request.META.get("HTTP_IF_NONE_MATCH", "")):
        response = HttpResponse(status=304)
    elif answer.body is None:
        response = HttpResponse(status=204)
    else:
        response = HttpResponse(answer.body, content_type="application/json")
    response["ETag"] = answer.etag
    response[mf.TIMESTAMP_HEADER] = answer.statement  # fresh signed metadata, 304/204 too
    response["X-Poll-Interval"] = poll_interval()
    response["Cache-Control"] = "no-cache"
    return response


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}
