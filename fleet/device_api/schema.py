"""OpenAPI for the device endpoints that are plain Django views (drf-spectacular
sees only DRF views): check-in, telemetry, logs. A postprocessing hook adds them
to the generated schema, written by hand from the wire format that
`devices.ingest` and `fleet.device_api.checkin` implement (docs/manifest.md)."""

from __future__ import annotations

ERROR = {
    "type": "object",
    "required": ["detail", "code"],
    "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
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
NUMBERS = ("latency_ms", "throughput", "mem_mb", "cpu_pct", "temp_c", "battery_pct", "power_w")
SCHEMAS = {
    "DeviceError": ERROR,
    "TelemetryPoint": {
        "type": "object",
        "required": ["seq", "boot_id", "ts"],
        "properties": {
            **ITEM_KEYS,
            "model_version": {"type": "string"},
            **{name: {"type": "number", "nullable": True} for name in NUMBERS},
            "inferences": {"type": "integer"},
            "errors": {"type": "integer"},
            "extra": {
                "type": "object",
                "additionalProperties": True,
                "description": "Small JSON object (slot, variant, p95 …)",
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
                "items": {
                    "type": "object",
                    "properties": {"index": {"type": "integer"}, "error": {"type": "string"}},
                },
            },
        },
    },
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, retry: bool = False) -> dict:
    answer = {
        "description": description,
        "content": {"application/json": {"schema": _ref("DeviceError")}},
    }
    if retry:
        answer["headers"] = RETRY_AFTER
    return answer


COMMON = {
    "401": _error("Missing, unknown or revoked device token"),
    "429": _error("Per-device rate limit; see Retry-After", retry=True),
    "503": _error("Overloaded or storage unavailable; see Retry-After", retry=True),
}


def _batch_operation(item: str, what: str) -> dict:
    batch = {"type": "array", "items": _ref(item)}
    return {
        "post": {
            "operationId": f"device_{what}_create",
            "tags": ["device"],
            "summary": f"Send a batch of {what} (idempotent per boot_id + seq)",
            "security": [{"deviceToken": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
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
                                            "description": "Records the agent's buffer dropped"
                                            " before this",
                                        },
                                    },
                                },
                                batch,
                            ]
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "Stored; the same answer for a resent batch",
                    "headers": {
                        "X-EdgeFleet-New": {"schema": {"type": "integer"}},
                        "X-EdgeFleet-Duplicates": {"schema": {"type": "integer"}},
                    },
                    "content": {"application/json": {"schema": _ref("IngestResult")}},
                },
                "400": _error("Malformed JSON or batch"),
                "413": _error("Batch over the item or byte limit; split it"),
                **COMMON,
            },
        }
    }


ENVELOPE = {
    "type": "object",
    "required": ["manifest", "signature", "key_id"],
    "properties": {
        "manifest": {"type": "object", "additionalProperties": True},
        "signature": {"type": "string", "description": "base64 Ed25519"},
        "key_id": {"type": "string"},
    },
}
CHECKIN = {
    "get": {
        "operationId": "device_update_retrieve",
        "tags": ["device"],
        "summary": "Poll for an update: the signed manifest assigned to this device",
        "security": [{"deviceToken": []}],
        "parameters": [
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "ETag of the last answer",
            }
        ],
        "responses": {
            "200": {
                "description": "Signed envelope, or one per slot (docs/manifest.md)",
                "headers": {
                    "ETag": {"schema": {"type": "string"}},
                    "X-Poll-Interval": {"schema": {"type": "integer"}},
                },
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                ENVELOPE,
                                {
                                    "type": "object",
                                    "required": ["manifests"],
                                    "properties": {
                                        "manifests": {"type": "array", "items": ENVELOPE}
                                    },
                                },
                            ]
                        }
                    }
                },
            },
            "204": {"description": "No update assigned"},
            "304": {"description": "Unchanged since If-None-Match"},
            **COMMON,
        },
    }
}


def add_plain_device_views(result, generator, request, public):
    """drf-spectacular POSTPROCESSING_HOOKS entry."""
    paths = result.setdefault("paths", {})
    paths["/api/v1/device/update"] = CHECKIN
    paths["/api/v1/device/telemetry"] = _batch_operation("TelemetryPoint", "telemetry")
    paths["/api/v1/device/logs"] = _batch_operation("LogItem", "logs")
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    components.setdefault("securitySchemes", {}).setdefault(
        "deviceToken",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "Device token issued once by POST /api/v1/device/enroll",
        },
    )
    return result
