"""`POST /api/v1/device/telemetry` and `/api/v1/device/logs`.

Every device posts here every few seconds. Beyond the toolkit's rules: 413 over
the item limit, 503 + Retry-After when the process already runs
`DEVICE_MAX_INFLIGHT_INGEST` ingests (E4), and the same answer for a resent
batch (E1). An item the server refuses (a bad type, NaN, a lone surrogate) is
listed in `rejected` with its reason and the rest of the batch is stored.

The answer carries the device's current check-in ETag (`X-Update-ETag`, the
value `GET /update` would answer, read from the same cache in the same Redis
call as the credential): a device that sees the ETag it already has can skip
its next poll, one that sees another polls at once. `X-Benchmarks` from the same
cached answer counts the benchmark requests waiting for the device.
"""

from __future__ import annotations

from django.db import connection

from devices import services
from fleet.device_api.schema import batch_doc
from fleet.device_api.toolkit import InflightLimit, answer, endpoint
from ota import manifests

INFLIGHT = InflightLimit("DEVICE_MAX_INFLIGHT_INGEST")


def _ingest(request, service):
    body = request.data
    batch, dropped = body, 0
    if isinstance(body, dict):
        batch, dropped = body.get("batch"), body.get("dropped", 0)
    # No per-request `SELECT 1` (CONN_HEALTH_CHECKS) on this hot path: a dead
    # connection fails the insert instead (503, the agent retries) and Django
    # drops it at the end of the request.
    connection.health_check_done = True
    result = service(
        request.device.device_ref, batch, dropped=dropped, seen_noted=request.device.seen_noted
    )
    checkin = manifests.checkin_for(request.device.device_pk, cached=request.cached)
    return answer(
        result.as_dict(),
        X_EdgeFleet_New=str(result.new),
        X_EdgeFleet_Duplicates=str(result.duplicates),
        X_Update_ETag=checkin.etag,
        X_Benchmarks=str(checkin.benchmarks),
    )


CHECKIN_CACHE = manifests.CACHE_KEY.format("")


@endpoint(
    "POST",
    body=True,
    shed=INFLIGHT,
    cached=CHECKIN_CACHE,
    doc=batch_doc("TelemetryPoint", "telemetry"),
)
def telemetry(request):
    return _ingest(request, services.ingest_telemetry)


@endpoint("POST", body=True, shed=INFLIGHT, cached=CHECKIN_CACHE, doc=batch_doc("LogItem", "logs"))
def logs(request):
    return _ingest(request, services.ingest_logs)
