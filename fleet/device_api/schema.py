"""OpenAPI for the device API, generated from the routes: every view built with
`toolkit.endpoint` carries its `Doc`, and `add_device_api` (a drf-spectacular
POSTPROCESSING_HOOKS entry) writes one operation per route, adding the answers
the toolkit gives every endpoint (401, 429, 503; 400 and 413 with a body).
Field lists come from the code that validates them (`devices.ingest`)."""

from __future__ import annotations

import re

from devices.ingest import FLOATS, INTS, MAX_EXTRA
from fleet.device_api.toolkit import Doc

ERROR = {
    "type": "object",
    "required": ["detail", "code"],
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "field": {"type": "string"},
    },
}
RETRY_AFTER = {
    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying"}
}
TIMESTAMP = {
    "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
    "description": "Epoch seconds or ISO 8601",
}
ITEM_KEYS = {
    "seq": {
        "type": "integer",
        "minimum": 0,
        "description": "Per boot, increasing; (boot_id, seq) is the dedupe key",
    },
    "boot_id": {"type": "string", "maxLength": 40},
    "ts": TIMESTAMP,
}
OBJECT = {"type": "object", "additionalProperties": True}
SCHEMAS = {
    "DeviceError": ERROR,
    "TelemetryPoint": {
        "type": "object",
        "required": ["seq", "boot_id", "ts"],
        "properties": {
            **ITEM_KEYS,
            "model_version": {"type": "string"},
            **{name: {"type": "number", "nullable": True} for name in FLOATS},
            **{name: {"type": "integer", "nullable": True} for name in INTS},
            "extra": {
                **OBJECT,
                "description": f"JSON object of at most {MAX_EXTRA} bytes "
                "(slot, variant, p95 …); finite numbers only",
            },
        },
    },
    "LogItem": {
        "type": "object",
        "required": ["seq", "boot_id", "ts", "message"],
        "properties": {
            **ITEM_KEYS,
            "message": {"type": "string"},
            "level": {"type": "string", "enum": ["debug", "info", "warning", "error", "critical"]},
            "deployment": {"type": "integer", "nullable": True},
        },
    },
    "IngestResult": {
        "type": "object",
        "required": ["accepted", "count", "rejected"],
        "properties": {
            "accepted": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "integer"}},
                "description": "boot_id → seqs stored (now or by an earlier delivery)",
            },
            "count": {"type": "integer"},
            "rejected": {
                "type": "array",
                "description": "Items refused for good (drop them)",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "seq": {"type": "integer"},
                        "error": {"type": "string"},
                    },
                },
            },
        },
    },
}
ENVELOPE = {
    "type": "object",
    "required": ["manifest", "signature", "key_id"],
    "properties": {
        "manifest": OBJECT,
        "signature": {"type": "string", "description": "base64 Ed25519"},
        "key_id": {"type": "string"},
    },
}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


UPDATE_ETAG = {
    "schema": {"type": "string"},
    "description": "The ETag of this device's check-in answer now",
}
BENCHMARKS_PENDING = {
    "schema": {"type": "integer"},
    "description": "Benchmark requests waiting for this device: fetch "
    "GET /api/v1/device/benchmarks when > 0 (absent from older servers: poll it on a timer)",
}
CHECKIN_HEADERS = {
    "ETag": UPDATE_ETAG,
    "X-Poll-Interval": {
        "schema": {"type": "integer"},
        "description": "Seconds until the next check-in (jittered)",
    },
    "X-Upload-Interval": {
        "schema": {"type": "integer"},
        "description": "Seconds between uploads of buffered telemetry and logs "
        "(points are still sampled at the device's telemetry interval; the device jitters it)",
    },
    "X-Signed-Timestamp": {"schema": {"type": "string"}},
    "X-Benchmarks": BENCHMARKS_PENDING,
}

CHECKIN_DOC = Doc(
    "Poll for an update: the signed manifest assigned to this device",
    parameters=(
        {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "ETag of the last answer",
        },
    ),
    responses={
        200: (
            "Signed envelope, or one per slot (docs/manifest.md)",
            {
                "oneOf": [
                    ENVELOPE,
                    {
                        "type": "object",
                        "required": ["manifests"],
                        "properties": {"manifests": {"type": "array", "items": ENVELOPE}},
                    },
                ]
            },
            CHECKIN_HEADERS,
        ),
        204: ("No update assigned", None, CHECKIN_HEADERS),
        304: ("Unchanged since If-None-Match", None, CHECKIN_HEADERS),
    },
)


def batch_doc(item: str, what: str) -> Doc:
    batch = {"type": "array", "items": ref(item)}
    return Doc(
        f"Send a batch of {what} (idempotent per boot_id + seq)",
        request={
            "oneOf": [
                {
                    "type": "object",
                    "required": ["batch"],
                    "properties": {
                        "batch": batch,
                        "boot_id": {"type": "string"},
                        "dropped": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Records the agent's buffer dropped before this",
                        },
                    },
                },
                batch,
            ]
        },
        responses={
            200: (
                "Stored, refused items listed; the same answer for a resent batch",
                ref("IngestResult"),
                {
                    "X-EdgeFleet-New": {"schema": {"type": "integer"}},
                    "X-EdgeFleet-Duplicates": {"schema": {"type": "integer"}},
                    # Equal to the device's ETag: its next poll can wait; else poll now.
                    "X-Update-ETag": UPDATE_ETAG,
                    "X-Benchmarks": BENCHMARKS_PENDING,
                },
            )
        },
    )


ENROLL_DOC = Doc(
    "Enroll with a one-time enrollment token; answers the device token once",
    request={
        "type": "object",
        "required": ["token"],
        "properties": {
            "token": {"type": "string", "description": "Enrollment token"},
            "facts": {
                **OBJECT,
                "description": "uid?, name?, hardware_profile (slug), arch, cpu, "
                "ram_mb, os, onnxruntime, execution_providers, agent_version, "
                "models {slot: {model_version}}",
            },
        },
    },
    responses={
        201: (
            "Enrolled",
            {
                "type": "object",
                "properties": {
                    "device_id": {"type": "string"},
                    "token": {"type": "string", "description": "Device token: shown once"},
                    "server_public_key": {"type": "string", "description": "Ed25519, raw, base64"},
                    "server_key_fingerprint": {"type": "string"},
                },
            },
            None,
        ),
        403: "Bad enrollment token",
        409: "uid already enrolled",
    },
)
INVENTORY_DOC = Doc(
    "Report this device's inventory",
    request=OBJECT,
    responses={200: ("Stored inventory", OBJECT, None)},
)
STATUS_DOC = Doc(
    "Report the state of an update",
    request=OBJECT,
    responses={
        200: ("Stored", OBJECT, None),
        404: "No such update of this device",
        409: "Illegal transition",
    },
)
BENCHMARKS_DOC = Doc(
    "This device's pending signed benchmark requests (schema benchmark-1)",
    responses={200: ('{"requests": [signed envelope, ...]}', OBJECT, None)},
)
BENCHMARK_RESULTS_DOC = Doc(
    "Report the figures of one benchmark request, one result per version",
    request=OBJECT,
    responses={
        200: ("Stored", OBJECT, None),
        400: "Malformed report",
        404: "No such benchmark of this device",
        409: "Reported already",
    },
)
ARTIFACT_DOC = Doc(
    "Download an artifact an update of this device names (Range supported)",
    responses={
        200: ("The artifact", None, None),
        206: "Partial content (Range)",
        302: "Presigned storage URL (S3)",
        404: "No update of this device names this artifact",
        416: "Range not satisfiable",
    },
)


def _error(description: str, retry: bool = False) -> dict:
    answer = {
        "description": description,
        "content": {"application/json": {"schema": ref("DeviceError")}},
    }
    if retry:
        answer["headers"] = RETRY_AFTER
    return answer


def _response(value) -> dict:
    if isinstance(value, str):
        return {"description": value}
    description, schema, headers = value
    answer = {"description": description}
    if schema is not None:
        answer["content"] = {"application/json": {"schema": schema}}
    if headers:
        answer["headers"] = headers
    return answer


def operation(spec, path: str) -> dict:
    name = re.sub(r"[^a-z0-9]+", "_", path.removeprefix("/api/v1/").lower()).strip("_")
    doc: Doc = spec.doc
    responses = {str(code): _response(value) for code, value in doc.responses.items()}
    if spec.body:
        responses.setdefault("400", _error("Malformed or too deeply nested JSON, or bad input"))
        responses.setdefault("413", _error("Body over the size limit; split it"))
    if spec.device:
        responses.setdefault("401", _error("Missing, unknown or revoked device token"))
    responses.setdefault("429", _error("Rate limit; see Retry-After", retry=True))
    responses.setdefault(
        "503", _error("Overloaded or storage unavailable; see Retry-After", retry=True)
    )
    result = {
        "operationId": f"{name}_{spec.method.lower()}",
        "tags": ["device"],
        "summary": doc.summary,
        "responses": responses,
        "security": [{"deviceToken": []}] if spec.device else [],
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", path)
    ] + list(doc.parameters)
    if parameters:
        result["parameters"] = parameters
    if spec.body and doc.request is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": doc.request}},
        }
    return result


def add_device_api(result, generator, request, public):
    """drf-spectacular POSTPROCESSING_HOOKS entry: one operation per device route."""
    from fleet.device_api.urls import urlpatterns

    paths = result.setdefault("paths", {})
    for pattern in urlpatterns:
        spec = pattern.callback.device_api
        route = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))
        paths.setdefault(route, {})[spec.method.lower()] = operation(spec, route)
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    components.setdefault("securitySchemes", {})["deviceToken"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "Device token issued once by POST /api/v1/device/enroll",
    }
    return result
