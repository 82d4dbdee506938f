"""`GET /api/v1/device/artifacts/<sha256>` (only an artifact an update of this
device names) and `POST /api/v1/device/update/status`.

Identity comes only from the bearer credential (A2).
"""

from __future__ import annotations

import re

from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse, HttpResponseRedirect, StreamingHttpResponse

from compression.models import ModelVersion
from fleet.device_api.schema import ARTIFACT_DOC, STATUS_DOC
from fleet.device_api.toolkit import answer, endpoint
from fleet.refusal import Refusal
from ota import services
from ota.choices import UpdateState
from ota.models import DeviceUpdate

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 256 * 1024


@endpoint("GET", doc=ARTIFACT_DOC)
def artifact(request, sha256: str):
    if not SHA256_RE.match(sha256) or not _assigned(request.device.device_pk, sha256):
        raise Refusal("not_found", "Not found.", 404)
    version = ModelVersion.objects.filter(sha256=sha256).order_by("pk").first()
    if version is None or not default_storage.exists(version.artifact):
        raise Refusal("not_found", "Artifact is gone.", 404)
    if getattr(default_storage, "bucket", None) is not None:
        # S3: a short-lived presigned URL (AWS_QUERYSTRING_EXPIRE); the agent does
        # not forward its bearer token across the redirect.
        return HttpResponseRedirect(default_storage.url(version.artifact))
    return serve_range(request, version.artifact, version.size_bytes, sha256)


def _assigned(device_pk: int, sha256: str) -> bool:
    lists = (
        DeviceUpdate.objects.filter(device_id=device_pk)
        .exclude(state__in=[UpdateState.QUEUED, UpdateState.CANCELLED, UpdateState.SUPERSEDED])
        .values_list("artifacts", flat=True)
    )
    if any(sha256 in (names or []) for names in lists):
        return True
    from ota.benchmarks import assigned_artifact

    return assigned_artifact(device_pk, sha256)


def serve_range(request, name: str, size: int, sha256: str):
    header = request.headers.get("Range", "")
    match = RANGE_RE.match(header.strip()) if header else None
    if header and (match is None or match.groups() == ("", "")):
        match = None  # unparseable or multi-range: RFC 9110 says ignore, send it all
    if match is None:
        response = FileResponse(
            default_storage.open(name, "rb"), content_type="application/octet-stream"
        )
        response["Content-Length"] = str(size)
    else:
        first, last = match.groups()
        if first == "":
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{size}"
            return _artifact_headers(response, sha256)
        response = StreamingHttpResponse(
            _read(name, start, end - start + 1), status=206, content_type="application/octet-stream"
        )
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Length"] = str(end - start + 1)
    return _artifact_headers(response, sha256)


def _artifact_headers(response, sha256: str):
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = f'"{sha256}"'
    response["Cache-Control"] = "private, max-age=0"
    return response


def _read(name: str, start: int, length: int):
    with default_storage.open(name, "rb") as fh:
        fh.seek(start)
        while length > 0:
            chunk = fh.read(min(CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


@endpoint("POST", body=True, doc=STATUS_DOC)
def status(request):
    update = services.report_status(request.device.device, request.data)
    return answer(
        {
            "deployment": update.deployment_id,
            "manifest_version": update.manifest_version,
            "slot": update.slot,
            "state": update.state,
            "attempts": update.attempts,
        }
    )
