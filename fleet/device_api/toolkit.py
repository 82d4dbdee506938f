"""How a device endpoint is built: `@endpoint(...)` on a plain Django view.

Every endpoint under `/api/v1/device/` is a function decorated with `endpoint`
and listed in `fleet.device_api.urls`; nothing else. The decorator does, in
this order, what all of them share:

1. method check (405 + Allow);
2. body size: Content-Length over `DATA_UPLOAD_MAX_MEMORY_SIZE` → 413 before a
   byte is read;
3. authentication: the bearer device token (`devices.auth.authenticate_token`,
   one Redis call on the hot path) → `request.device`; unknown tokens are
   limited per client address (429) and cached negatively;
   or, with `device=False` (enrollment), a per-client-address rate limit;
4. the per-device rate limit (429 + Retry-After), counted in that same call;
5. `body=True`: the JSON body through `fleet.jsonbody.loads` (400 on malformed
   or too deeply nested JSON) → `request.data`;
6. `shed=`: a per-process cap on concurrent requests (503 + Retry-After);
7. the handler, `handler(request, **path_kwargs) -> HttpResponse`.

Any `fleet.refusal.Refusal` raised by the handler or a service becomes its
`{"detail", "code"[, "field"]}` answer here; input the database cannot store
is a 400; a database or Redis failure is a 503 + Retry-After (the agent keeps
its data and retries). `doc=` describes the
endpoint in OpenAPI (`fleet.device_api.schema` reads it).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, DataError, connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from devices import auth
from fleet import jsonbody
from fleet.refusal import Refusal

log = logging.getLogger(__name__)

BEARER_REALM = 'Bearer realm="devices"'


@dataclass(frozen=True)
class Doc:
    """An endpoint's OpenAPI operation. `responses`: status → description, or
    (description, JSON schema or None, headers dict); 401/429/503 are added for
    device endpoints, 400/413 for endpoints with a body."""

    summary: str
    request: dict | None = None
    responses: dict = field(default_factory=dict)
    parameters: tuple = ()


@dataclass(frozen=True)
class Spec:
    method: str
    device: bool
    body: bool
    doc: Doc


def answer(data, status: int = 200, **headers) -> JsonResponse:
    """A JSON answer; `X_Name=` becomes the `X-Name` header."""
    response = JsonResponse(data, status=status, safe=False)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def refuse(exc: Refusal) -> JsonResponse:
    """The one mapping of a refusal to a device API answer."""
    response = JsonResponse(exc.body(), status=exc.status)
    for name, value in exc.headers().items():
        response[name] = value
    if exc.status == 401:
        response["WWW-Authenticate"] = BEARER_REALM
    return response


def unavailable(detail: str = "Service unavailable; retry later.") -> Refusal:
    return Refusal("unavailable", detail, 503, retry_after=settings.DEVICE_RETRY_AFTER_S)


def throttled(period: int) -> Refusal:
    wait = period - int(time.time()) % period
    return Refusal("throttled", f"Too many requests; retry in {wait} s.", 429, retry_after=wait)


class InflightLimit:
    """Per-process cap on concurrent requests of one kind: past it, shed load with
    503 instead of queueing work the database cannot absorb."""

    def __init__(self, setting: str):
        self.setting = setting
        self._lock = threading.Lock()
        self.current = 0

    def acquire(self) -> bool:
        with self._lock:
            if self.current >= getattr(settings, self.setting):
                return False
            self.current += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.current -= 1


def bearer_token(request) -> str | None:
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    return parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else None


def client_address(request) -> str:
    """The client's address (fleet.proxy has put the real one here behind nginx)."""
    return request.META.get("REMOTE_ADDR", "")


def authenticate(request, cached: str = "") -> auth.DevicePrincipal:
    """The device behind the bearer token, counted for the rate limit, else a Refusal."""
    token = bearer_token(request)
    if token is None:
        raise Refusal("not_authenticated", "Device token required.", 401)
    principal = auth.authenticate_token(token, answer=cached, client=client_address(request))
    if principal is None:
        raise Refusal("authentication_failed", "Unknown or revoked device token.", 401)
    limit, period = auth.device_rate()
    if auth.count_request(principal, period) > limit:
        raise throttled(period)
    return principal


def throttle_client(request, rate: str) -> None:
    """A per-client-address fixed-window limit for unauthenticated endpoints."""
    limit, period = auth.parse_rate(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"][rate])
    if auth.count_in_cache(f"devices:client:{rate}:", client_address(request), period) > limit:
        raise throttled(period)


def declared_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise Refusal("bad_request", "Invalid Content-Length header.") from None


def endpoint(
    method: str,
    *,
    doc: Doc,
    device: bool = True,
    body: bool = False,
    cached: str = "",
    rate: str = "enroll",
    shed: InflightLimit | None = None,
):
    """Make `handler(request, **kwargs)` a device endpoint (see the module docstring).

    `device=False`: no token; limited per client address by the throttle `rate`.
    `cached`: a cache key prefix whose `<prefix><device pk>` value the same Redis
    call reads (`request.cached`, None without Redis or on a miss)."""

    def decorate(handler):
        @csrf_exempt
        @functools.wraps(handler)
        def view(request, **kwargs):
            if request.method != method:
                response = refuse(
                    Refusal("method_not_allowed", f'Method "{request.method}" not allowed.', 405)
                )
                response["Allow"] = method
                return response
            try:
                return _serve(request, kwargs)
            except Refusal as exc:
                return refuse(exc)
            except (DataError, UnicodeEncodeError) as exc:
                # Input the database cannot store (a lone surrogate, a value out of
                # range): the same request would fail again, so not a 503.
                log.warning("device API: unstorable input: %s", exc)
                return refuse(Refusal("bad_input", "The input cannot be stored.", 400))
            except (DatabaseError, RedisError) as exc:
                log.error("device API: backing service unavailable: %s", exc)
                connection.close_if_unusable_or_obsolete()
                return refuse(unavailable())

        def _serve(request, kwargs):
            if body and declared_length(request) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
                raise Refusal("too_large", "Request body over the size limit; split it.", 413)
            if device:
                request.device = authenticate(request, cached)
                request.cached = request.device.cached
            else:
                throttle_client(request, rate)
                request.device = None
            request.data = jsonbody.loads(request.body) if body and request.body else None
            if shed is None:
                return handler(request, **kwargs)
            if not shed.acquire():
                raise unavailable("Server busy; retry later.")
            try:
                return handler(request, **kwargs)
            finally:
                shed.release()

        view.device_api = Spec(method, device, body, doc)
        return view

    return decorate


def no_content(status: int = 204) -> HttpResponse:
    return HttpResponse(status=status)
