"""`GET /api/v1/device/update`, the hottest endpoint.

Every device polls it, so it does the least work that keeps the contract. With
Redis as the cache a poll is one Redis script call and no database query: the
credential comes from `devices.authcache` (revocation tombstones it, A1), and
the same call counts the poll for the per-device rate limit, notes the device
as seen and reads the cached answer (`cached=` of the toolkit). The answer
also advises how often to poll (`X-Poll-Interval`) and how often to upload
buffered telemetry and logs (`X-Upload-Interval`), and how many benchmark
requests wait for the device (`X-Benchmarks`). A credential
not cached yet costs one indexed database lookup, once per
`DEVICE_AUTH_CACHE_S`. Other cache backends: the database lookup every time,
then plain cache calls. Never a database write.
"""

from __future__ import annotations

import random

from django.conf import settings
from django.http import HttpResponse

from devices.agent import manifest as mf
from fleet.device_api.schema import CHECKIN_DOC
from fleet.device_api.toolkit import endpoint
from ota import manifests


def poll_interval() -> str:
    base = settings.OTA_POLL_INTERVAL_S
    return str(max(1, round(base * random.uniform(0.8, 1.2))))


@endpoint("GET", cached=manifests.CACHE_KEY.format(""), doc=CHECKIN_DOC)
def update(request):
    answer = manifests.checkin_for(request.device.device_pk, cached=request.cached)
    if answer.etag in _etags(request.META.get("HTTP_IF_NONE_MATCH", "")):
        response = HttpResponse(status=304)
    elif answer.body is None:
        response = HttpResponse(status=204)
    else:
        response = HttpResponse(answer.body, content_type="application/json")
    response["ETag"] = answer.etag
    response[mf.TIMESTAMP_HEADER] = answer.statement  # fresh signed metadata, 304/204 too
    response["X-Poll-Interval"] = poll_interval()
    response["X-Upload-Interval"] = str(settings.DEVICE_UPLOAD_INTERVAL_S)
    response["X-Benchmarks"] = str(answer.benchmarks)  # fetch the list only when > 0
    response["Cache-Control"] = "no-cache"
    return response


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}
