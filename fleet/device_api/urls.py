"""The device API's URLconf: the routes under `DEVICE_API_PREFIX` and nothing else.

Included first by the root URLconf (reverse() and the schema see the same
routes) and used alone for requests that `fleet.wsgi` hands to the device
handler, so a device request is matched against its own few routes instead of
walking the operator API's routers (a fifth of Django's per-request work on
the telemetry path, profiled under benchmarks/simulated_fleet.py). Unknown device paths
answer JSON, like every other device API refusal.
"""

from django.http import JsonResponse
from django.urls import path

from fleet.device_api import checkin, enroll, ingest, updates

PREFIX = "api/v1/device/"

urlpatterns = [
    path(f"{PREFIX}telemetry", ingest.telemetry, name="device-telemetry"),  # most frequent first
    path(f"{PREFIX}update", checkin.update, name="device-update"),
    path(f"{PREFIX}logs", ingest.logs, name="device-logs"),
    path(f"{PREFIX}update/status", updates.StatusView.as_view(), name="device-update-status"),
    path(f"{PREFIX}artifacts/<str:sha256>", updates.ArtifactView.as_view(), name="device-artifact"),
    path(f"{PREFIX}enroll", enroll.EnrollView.as_view(), name="device-enroll"),
    path(f"{PREFIX}inventory", enroll.InventoryView.as_view(), name="device-inventory"),
]


def not_found(request, exception=None):
    return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)


def server_error(request):
    return JsonResponse({"detail": "Server error.", "code": "server_error"}, status=500)


handler404 = not_found
handler500 = server_error
