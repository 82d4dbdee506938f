"""The device side of on-device benchmarks (`ota.benchmarks`): the device's pending
signed requests, and its report. Identity comes only from the bearer credential."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.response import Response

from fleet.device_api.enroll import DeviceView
from ota import benchmarks
from ota.services import OtaError


@extend_schema(
    tags=["device"],
    responses={200: OpenApiResponse(description='{"requests": [signed envelope, ...]}')},
)
class BenchmarkListView(DeviceView):
    def get(self, request):
        return Response({"requests": benchmarks.pending_envelopes(request.user.device)})


@extend_schema(
    tags=["device"],
    request={"application/json": dict},
    responses={
        200: OpenApiResponse(description="Stored"),
        400: OpenApiResponse(description="Malformed report"),
        404: OpenApiResponse(description="No such benchmark of this device"),
        409: OpenApiResponse(description="Reported already"),
    },
)
class BenchmarkResultView(DeviceView):
    def post(self, request, pk: int):
        try:
            run = benchmarks.record(request.user.device, pk, request.data)
        except OtaError as exc:
            return Response({"detail": exc.message, "code": exc.code}, status=exc.status)
        return Response({"benchmark": run.pk, "state": run.state})
