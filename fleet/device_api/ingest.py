"""`POST /api/v1/device/telemetry` and `/api/v1/device/logs`: plain Django views.

Every device posts here every few seconds, so, like the check-in
(`fleet.device_api.checkin`), these skip DRF: its request wrapping, content
negotiation, throttle classes and response rendering cost more CPU than
parsing and storing a batch (measured with benchmarks/simulated_fleet.py). The rules
are the device API's: bearer device token only (`devices.auth`), per-device
rate limit with Retry-After, 413 over the size limits, 503 + Retry-After when
the process is saturated or a backing service fails (E4, S1), 400 with a
`code` on malformed input, and the same answer for a resent batch (E1).
The OpenAPI description is written by hand in `devices.api.schema`.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from devices import auth, services
from fleet.device_api.toolkit import (
    bearer_token,
    refusal,
    token_refused,
    token_required,
    unavailable,
)

log = logging.getLogger(__name__)


class InflightLimit:
    """Per-process cap on concurrent ingests: past it, shed load with 503 (E4)
    instead of queueing work the database cannot absorb."""

    def __init__(self):
        self._lock = threading.Lock()
        self.current = 0

    def acquire(self) -> bool:
        with self._lock:
            if self.current >= settings.DEVICE_MAX_INFLIGHT_INGEST:
                return False
            self.current += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.current -= 1


INFLIGHT = InflightLimit()


def authenticate(request) -> auth.DevicePrincipal | JsonResponse:
    """The device principal, counted for the rate limit, or the refusal to send."""
    token = bearer_token(request)
    if token is None:
        return token_required()
    principal = auth.authenticate_token(token)
    if principal is None:
        return token_refused()
    limit, period = auth.device_rate()
    if auth.count_request(principal, period) > limit:
        wait = period - int(time.time()) % period
        return refusal(
            429, f"Too many requests; retry in {wait} s.", "throttled", Retry_After=str(wait)
        )
    return principal


def _ingest(request, service):
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > settings.DEVICE_MAX_BATCH_BYTES:
        return refusal(413, "Batch body over the size limit; split it.", "too_large")
    principal = authenticate(request)
    if isinstance(principal, JsonResponse):
        return principal
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        return refusal(400, f"JSON parse error - {exc}", "parse_error")
    batch, dropped = body, 0
    if isinstance(body, dict):
        batch, dropped = body.get("batch"), body.get("dropped", 0)
    if not INFLIGHT.acquire():
        return unavailable("Server busy; retry later.")
    # No per-request `SELECT 1` (CONN_HEALTH_CHECKS) on this hot path: a dead
    # connection fails the insert instead (503 below, the agent retries) and Django
    # drops it at the end of the request.
    connection.health_check_done = True
    try:
        result = service(
            principal.device_ref, batch, dropped=dropped, seen_noted=principal.seen_noted
        )
    except services.DeviceError as exc:
        return refusal(exc.status, exc.message, exc.code)
    finally:
        INFLIGHT.release()
    response = JsonResponse(result.as_dict())
    response["X-EdgeFleet-New"] = str(result.new)
    response["X-EdgeFleet-Duplicates"] = str(result.duplicates)
    return response


def _fail_fast(service):
    @csrf_exempt
    @require_POST
    def view(request):
        try:
            return _ingest(request, service)
        except (DatabaseError, RedisError) as exc:
            log.error("device API: backing service unavailable: %s", exc)
            return unavailable("Storage unavailable; retry later.")

    view.__name__ = view.__qualname__ = service.__name__.removeprefix("ingest_")
    return view


telemetry = _fail_fast(services.ingest_telemetry)
logs = _fail_fast(services.ingest_logs)
