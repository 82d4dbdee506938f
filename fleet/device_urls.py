"""The device API's URLconf: the routes under `DEVICE_API_PREFIX` and nothing else.

Included first by the root URLconf (reverse() and the schema see the same
routes) and used alone for requests that `fleet.wsgi` hands to the device
handler, so a device request is matched against its own few routes instead of
walking the operator API's routers (a fifth of Django's per-request work on
the telemetry path, profiled under benchmarks/fleet.py). Unknown device paths
answer JSON, like every other device API refusal.
"""

from django.http import JsonResponse
from django.urls import include, path

urlpatterns = [
    path("api/v1/device/", include("devices.api.device_urls")),
    path("api/v1/device/", include("ota.api.device_urls")),
]


def not_found(request, exception=None):
    return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)


def server_error(request):
    return JsonResponse({"detail": "Server error.", "code": "server_error"}, status=500)


handler404 = not_found
handler500 = server_error
