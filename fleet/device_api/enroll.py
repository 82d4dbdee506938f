"""The device API's DRF views: enrollment and inventory (telemetry and logs are
plain views in `fleet.device_api.ingest`, the check-in in `fleet.device_api.checkin`).

Identity comes only from the bearer credential (`request.user.device`), never
from the body or the path. Sessions and operator tokens are not accepted here.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import DatabaseError
from drf_spectacular.utils import OpenApiResponse, extend_schema
from redis.exceptions import RedisError
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle
from rest_framework.views import APIView

from devices import services
from devices.api.serializers import (
    EnrollRequestSerializer,
    EnrollResponseSerializer,
)
from devices.auth import DeviceTokenAuthentication, IsDevice
from ota import keys

log = logging.getLogger(__name__)


class DeviceRateThrottle(SimpleRateThrottle):
    """Per device. With Redis the authenticator already counted this request in a
    fixed window (same Redis call as the credential); otherwise DRF's own history."""

    scope = "device"
    retry_in: int | None = None

    def allow_request(self, request, view):
        count = getattr(request.user, "request_count", None)
        if count is None or self.rate is None:
            return super().allow_request(request, view)
        if count <= self.num_requests:
            return True
        self.retry_in = self.duration - int(time.time()) % self.duration
        return False

    def wait(self):
        return self.retry_in if self.retry_in is not None else super().wait()

    def get_cache_key(self, request, view):
        device_pk = getattr(request.user, "device_pk", None)
        return (
            None
            if device_pk is None
            else self.cache_format % {"scope": self.scope, "ident": device_pk}
        )


class EnrollRateThrottle(AnonRateThrottle):
    scope = "enroll"


def refused(exc: services.DeviceError) -> Response:
    return Response({"detail": exc.message, "code": exc.code}, status=exc.status)


def unavailable(reason: str) -> Response:
    return Response(
        {"detail": reason, "code": "unavailable"},
        status=503,
        headers={"Retry-After": str(settings.DEVICE_RETRY_AFTER_S)},
    )


class FailFastView(APIView):
    """Database or Redis trouble anywhere in a device request (authentication
    included) is a 503 with Retry-After, never a 500: the agent keeps its data and
    retries (S1)."""

    def handle_exception(self, exc):
        if isinstance(exc, DatabaseError | RedisError):
            log.error("device API: backing service unavailable: %s", exc)
            return unavailable("Storage unavailable; retry later.")
        return super().handle_exception(exc)


class DeviceView(FailFastView):
    authentication_classes = [DeviceTokenAuthentication]
    permission_classes = [IsDevice]
    throttle_classes = [DeviceRateThrottle]


@extend_schema(
    tags=["device"],
    request=EnrollRequestSerializer,
    responses={
        201: EnrollResponseSerializer,
        403: OpenApiResponse(description="Bad enrollment token"),
        409: OpenApiResponse(description="uid already enrolled"),
    },
)
class EnrollView(FailFastView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [EnrollRateThrottle]

    def post(self, request):
        data = request.data if isinstance(request.data, dict) else {}
        try:
            device, token = services.enroll(data.get("token"), data.get("facts") or {})
        except services.DeviceError as exc:
            return refused(exc)
        key = keys.active_key()
        return Response(
            {
                "device_id": device.uid,
                "token": token,
                "server_public_key": key.public_key_b64,
                "server_key_fingerprint": key.fingerprint,
            },
            status=201,
        )


@extend_schema(
    tags=["device"],
    request={"application/json": dict},
    responses={200: OpenApiResponse(description="Stored inventory")},
)
class InventoryView(DeviceView):
    def put(self, request):
        try:
            device = services.update_inventory(request.user.device, request.data)
        except services.DeviceError as exc:
            return refused(exc)
        return Response({"device_id": device.uid, "inventory": device.inventory})
