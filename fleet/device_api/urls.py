"""The device API's routes, under `DEVICE_API_PREFIX` and nothing else.

Each view is built with `fleet.device_api.toolkit.endpoint`; adding an endpoint
is one decorated function and one line here (its OpenAPI description comes
with it). Included by the root URLconf (reverse() and the schema see the same
routes) and used alone by `fleet.device_api.routing`, so a device request is
matched against its own few routes instead of walking the operator API's
routers. Unknown device paths answer JSON, like every other refusal.
"""

from django.urls import path

from fleet.device_api import benchmarks, checkin, enroll, ingest, updates
from fleet.device_api.toolkit import refuse
from fleet.refusal import Refusal

PREFIX = "api/v1/device/"

urlpatterns = [
    path(f"{PREFIX}telemetry", ingest.telemetry, name="device-telemetry"),  # most frequent first
    path(f"{PREFIX}update", checkin.update, name="device-update"),
    path(f"{PREFIX}logs", ingest.logs, name="device-logs"),
    path(f"{PREFIX}update/status", updates.status, name="device-update-status"),
    path(f"{PREFIX}artifacts/<str:sha256>", updates.artifact, name="device-artifact"),
    path(f"{PREFIX}enroll", enroll.enroll, name="device-enroll"),
    path(f"{PREFIX}inventory", enroll.inventory, name="device-inventory"),
    path(f"{PREFIX}benchmarks", benchmarks.pending, name="device-benchmarks"),
    path(
        f"{PREFIX}benchmarks/<int:pk>/results", benchmarks.results, name="device-benchmark-results"
    ),
]


def not_found(request, exception=None):
    return refuse(Refusal("not_found", "Not found.", 404))


def server_error(request):
    return refuse(Refusal("server_error", "Server error.", 500))


handler404 = not_found
handler500 = server_error
