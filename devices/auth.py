"""Device authentication: `Authorization: Bearer <device token>`, one path for
every device endpoint (`fleet.device_api.toolkit`) and the MQTT bridge.

A device is never an operator: the principal has `is_device=True`, which
`fleet.roles.role_of` maps to no role, and device endpoints accept only this
authenticator, so a session or operator token never reaches them.

Guessing is bounded (docs/security.md): a token that is not a live credential
is cached negatively for `DEVICE_AUTH_NEGATIVE_S` (its next use costs no
query), and each client address may present only so many unknown tokens per
window (the `device_auth_failure` rate) before every lookup of an uncached
token from it answers 429 without touching the database.
"""

from __future__ import annotations

import hmac
import time
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.db import connection

from devices import authcache, tokens
from devices.choices import DeviceStatus
from devices.models import Device, DeviceCredential
from fleet.refusal import Refusal


class DeviceRef:
    """A device known only by its id (a `Device(pk=…)` instance cost 5 % of a
    telemetry request's CPU under load)."""

    __slots__ = ("pk",)

    def __init__(self, pk: int):
        self.pk = pk


class DevicePrincipal:
    """What `request.user` is for a device request.

    Built from the Redis credential cache it knows only the device id: `device`
    is loaded on first use, so endpoints that need only the id (telemetry, logs)
    cost no database read for authentication. `request_count`: this device's
    requests in the current rate window when the same Redis call counted them,
    else None."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_device = True
    is_staff = False
    is_superuser = False

    def __init__(
        self,
        device: Device | None = None,
        *,
        device_pk: int | None = None,
        request_count: int | None = None,
        cached=None,
    ):
        self._device = device
        self.cached = cached  # the value the same Redis call read (check-in answer)
        self.device_pk = device.pk if device is not None else device_pk
        self.request_count = request_count
        # Authentication already noted the device as seen in Redis (same call).
        self.seen_noted = request_count is not None
        self.pk = None  # not a user: user-keyed throttles and audit must not match it

    @property
    def device(self) -> Device:
        if self._device is None:
            self._device = Device.objects.get(pk=self.device_pk)
        return self._device

    @property
    def device_ref(self) -> Device | DeviceRef:
        """The device if loaded, else -- when authentication came from Redis, which also
        noted the device as seen -- a stand-in carrying only its id: all the ingest
        services read then. Without Redis the ingest must record presence itself, which
        needs the device's status, so the device is loaded."""
        if self._device is None and self.seen_noted:
            return DeviceRef(self.device_pk)
        return self.device

    def __str__(self) -> str:
        return f"device:{self._device.uid if self._device else self.device_pk}"

    def get_username(self) -> str:
        return str(self)


RATE_COUNTER = "devices:rate:"
PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@lru_cache(maxsize=8)
def parse_rate(rate: str) -> tuple[int, int]:
    """DRF's rate syntax ("600/min") as (requests, period seconds)."""
    count, _, period = rate.partition("/")
    return int(count), PERIODS[period[0]]


def device_rate() -> tuple[int, int]:
    """The per-device request limit (REST_FRAMEWORK's "device" throttle rate)."""
    return parse_rate(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["device"])


def count_in_cache(counter: str, ident, period: int) -> int:
    """Requests of `ident` (a device id, a client address) in the current fixed
    window, counted in the default cache (the Redis path of a device request
    counts inside `authcache.request` instead)."""
    cache = caches["default"]
    key = f"{counter}{ident}:{int(time.time() // period)}"
    cache.add(key, 0, period + 1)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        return 1


def count_request(principal: DevicePrincipal, period: int) -> int:
    """The principal's request count in the rate window: already counted by the
    Redis call that authenticated it, else counted now in the cache."""
    if principal.request_count is None:
        principal.request_count = count_in_cache(RATE_COUNTER, principal.device_pk, period)
    return principal.request_count


def authenticate_token(value, *, answer: str = "", client: str = "") -> DevicePrincipal | None:
    """The principal for a device token, or None if unknown or revoked.

    With Redis: `cached_request` (one call checks the cached credential, counts
    the request for the rate limit, notes the device as seen and reads `answer`).
    `client`: the caller's address, for the limit on unknown tokens (raises a
    429 `Refusal` past it)."""
    client_redis = authcache.redis_client()
    if client_redis is not None:
        result = cached_request(
            client_redis, value, RATE_COUNTER, device_rate()[1], answer, client=client
        )
        if result is None:
            return None
        return DevicePrincipal(
            device_pk=result[0], request_count=result[1], cached=authcache.loads(result[2])
        )
    device_pk = lookup(value, client)
    return None if device_pk is None else DevicePrincipal(device_pk=device_pk)


def cached_request(
    client_redis, value: str, counter: str, period: int, answer: str = "", *, client: str = ""
) -> tuple[int, int, bytes | None] | None:
    """`authcache.request` for a token, asking the database (`lookup`) when the
    credential is not cached yet; None for an unknown or revoked token."""
    key = tokens.lookup_key(value)
    if key is None:
        _failed(client)
        return None
    prefix, wanted = key
    result = authcache.request(client_redis, prefix, wanted, counter, period, answer)
    if result == authcache.REVOKED:
        _failed(client)
        return None
    if result == authcache.MISS:
        device_pk = lookup(value, client)
        if device_pk is None:
            return None
        result = authcache.confirmed(
            client_redis, prefix, wanted, device_pk, counter, period, answer
        )
    return result


# --- unknown tokens: negative cache and a per-client limit ----------------------------------
NEGATIVE = "devauth:unknown:{}"
FAILURES = "devauth:failures:"


def failure_rate() -> tuple[int, int]:
    return parse_rate(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["device_auth_failure"])


def lookup(value, client: str = "") -> int | None:
    """The device id of a live credential from the database, unless this exact token
    is known to be unknown (negative cache) or `client` has guessed too often."""
    key = tokens.lookup_key(value)
    if key is None:
        _failed(client)
        return None
    cache = caches["default"]
    negative = NEGATIVE.format(key[1])
    limit, period = failure_rate()
    window = f"{FAILURES}{client}:{int(time.time() // period)}"
    seen = cache.get_many([negative, window]) if client else {negative: cache.get(negative)}
    if seen.get(window, 0) >= limit:
        wait = period - int(time.time()) % period
        raise Refusal(
            "throttled",
            f"Too many unknown device tokens; retry in {wait} s.",
            429,
            retry_after=wait,
        )
    if seen.get(negative):
        _failed(client)
        return None
    device_pk = device_for_token(value)
    if device_pk is None:
        cache.set(negative, 1, settings.DEVICE_AUTH_NEGATIVE_S)
        _failed(client)
        return None
    return device_pk


def _failed(client: str) -> None:
    """Count a refused token against its client's window."""
    if client:
        count_in_cache(FAILURES, client, failure_rate()[1])


AUTH_SQL = (
    f"SELECT c.token_hash, d.id, d.status FROM {DeviceCredential._meta.db_table} c "
    f"JOIN {Device._meta.db_table} d ON d.id = c.device_id "
    "WHERE c.prefix = %s AND c.revoked_at IS NULL"
)


def device_for_token(value: str) -> int | None:
    """The device id of a live credential: the same rule as `authenticate_token`
    (prefix lookup, constant-time hash compare, revoked credential or device refused) in
    one raw query, because building two ORM instances per poll cost more than the poll.
    """
    key = tokens.lookup_key(value)
    if key is None:
        return None
    prefix, wanted = key
    # Skip the per-request `SELECT 1` of CONN_HEALTH_CHECKS: it doubles this endpoint's
    # database round trips. A dead connection fails this one query instead (503 below);
    # Django then drops the connection at the end of the request and the next poll
    # reconnects, which is the recovery the health check would have given.
    connection.health_check_done = True
    with connection.cursor() as cursor:
        cursor.execute(AUTH_SQL, [prefix])
        rows = cursor.fetchall()
    for token_hash, device_pk, status in rows:
        if hmac.compare_digest(token_hash, wanted):
            return None if status == DeviceStatus.REVOKED else device_pk
    return None
