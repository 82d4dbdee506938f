"""Telemetry and logs over HTTP: E1, E2, E4, E5, A2, query counts, last_seen."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import DatabaseError
from django.utils import timezone

from devices.models import Device, LogLine, TelemetryPoint
from devices.tasks import flush_presence
from tests.conftest import bearer
from tests.devices.conftest import log_lines, points

pytestmark = pytest.mark.django_db
TELEMETRY = "/api/v1/device/telemetry"
LOGS = "/api/v1/device/logs"


def post(client, path, batch):
    return client.post(path, {"batch": batch}, format="json")


def test_resent_batch_is_stored_once_with_the_same_answer(api_a, device_a):
    """E1"""
    batch = points(1, 100)
    first = post(api_a, TELEMETRY, batch)
    second = post(api_a, TELEMETRY, batch)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["accepted"] == {"boot-1": list(range(1, 101))}
    assert (first["X-EdgeFleet-New"], second["X-EdgeFleet-New"]) == ("100", "0")
    assert second["X-EdgeFleet-Duplicates"] == "100"
    assert TelemetryPoint.objects.filter(device=device_a[0]).count() == 100


def test_overlap_in_batch_duplicates_and_new_boot(api_a, device_a):
    """E2: an agent resends records from its buffer as they were made (same ts)."""
    records = points(1, 150)
    assert post(api_a, TELEMETRY, records[:100]).status_code == 200
    response = post(api_a, TELEMETRY, records[49:])
    assert response["X-EdgeFleet-New"] == "50"
    assert TelemetryPoint.objects.count() == 150
    doubled = points(200, 210) + points(205, 210)
    response = post(api_a, TELEMETRY, doubled)
    assert response.status_code == 200
    assert response.json()["accepted"]["boot-1"] == list(range(200, 211))
    assert response["X-EdgeFleet-New"] == "11"
    # A reboot restarts seq at 1 under a new boot_id: nothing collides.
    response = post(api_a, TELEMETRY, points(1, 10, boot="boot-2"))
    assert response["X-EdgeFleet-New"] == "10"
    assert TelemetryPoint.objects.count() == 171


def test_identity_comes_from_the_credential_only(api_a, api_b, device_a, device_b):
    """A2: a `device`/`uid` in the body is ignored; same seqs on two devices do not clash."""
    batch = [
        {**p, "device": device_b[0].uid, "device_id": device_b[0].pk, "uid": "cam-b"}
        for p in points(1, 5)
    ]
    assert post(api_a, TELEMETRY, batch).status_code == 200
    assert post(api_b, TELEMETRY, points(1, 5)).json()["count"] == 5
    assert TelemetryPoint.objects.filter(device=device_a[0]).count() == 5
    assert TelemetryPoint.objects.filter(device=device_b[0]).count() == 5


@pytest.mark.parametrize(
    "item, error",
    [
        ({"seq": -1}, "seq"),
        ({"seq": "7"}, "seq"),
        ({"seq": True}, "seq"),
        ({"boot_id": ""}, "boot_id"),
        ({"boot_id": "x" * 41}, "boot_id"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": 0}, "ts"),
        ({"ts": 9e12}, "ts"),
        ({"latency_ms": "fast"}, "latency_ms"),
        ({"inferences": 1.5}, "inferences"),
        ({"extra": [1]}, "extra"),
        ({"extra": {"blob": "x" * 5000}}, "extra"),
        ({"model_version": 3}, "model_version"),
    ],
)
def test_bad_items_are_rejected_the_rest_stored(api_a, item, error):
    batch = points(1, 3)
    batch[1] = {**batch[1], **item}
    response = api_a.post(TELEMETRY, {"batch": batch}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["rejected"][0]["index"] == 1 and error in body["rejected"][0]["error"]
    assert body["count"] == 2
    assert TelemetryPoint.objects.count() == 2


@pytest.mark.parametrize(
    "body", [{"batch": "nope"}, {"batch": {"seq": 1}}, {"points": []}, "text", 5]
)
def test_malformed_body_is_400(api_a, body):
    response = api_a.post(TELEMETRY, body, format="json")
    assert response.status_code == 400


def test_non_finite_numbers_are_rejected(api_a):
    body = b'{"batch": [{"seq": 1, "boot_id": "b", "ts": 1.79e9, "latency_ms": Infinity}]}'
    response = api_a.post(TELEMETRY, body, content_type="application/json")
    assert response.status_code in (200, 400)
    assert TelemetryPoint.objects.count() == 0


def test_invalid_json_is_400(api_a):
    response = api_a.post(TELEMETRY, b"{not json", content_type="application/json")
    assert response.status_code == 400


def test_bare_list_and_iso_timestamps(api_a):
    now = timezone.now()
    batch = [
        {"seq": 1, "boot_id": "b", "ts": now.isoformat()},
        {"seq": 2, "boot_id": "b", "ts": now.replace(tzinfo=None).isoformat()},
    ]
    assert api_a.post(TELEMETRY, batch, format="json").json()["count"] == 2
    stored = TelemetryPoint.objects.order_by("seq").first()
    assert abs((stored.ts - now).total_seconds()) < 0.01


def test_oversize_batch_is_413(api_a, settings):
    """E5: over the item limit or the byte limit → 413, nothing stored."""
    settings.DEVICE_MAX_BATCH_ITEMS = 50
    response = post(api_a, TELEMETRY, points(1, 51))
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048  # the one body limit
    response = post(api_a, LOGS, log_lines(1, 40))
    assert response.status_code == 413
    assert TelemetryPoint.objects.count() == LogLine.objects.count() == 0


def test_per_device_throttle_answers_429_with_retry_after(api_a, api_b, settings):
    """E4/A6: one noisy device is throttled; the others are not."""
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**rates, "device": "3/min"},
    }
    codes = [post(api_a, TELEMETRY, points(i, i)).status_code for i in range(1, 5)]
    assert codes == [200, 200, 200, 429]
    response = post(api_a, TELEMETRY, points(9, 9))
    assert int(response["Retry-After"]) > 0
    assert response.json()["code"] == "throttled"
    assert post(api_b, TELEMETRY, points(1, 1)).status_code == 200
    assert TelemetryPoint.objects.count() == 4


def test_overload_answers_503_with_retry_after(api_a, settings, monkeypatch):
    """E4: past the in-flight cap the server sheds load instead of queueing."""
    from fleet.device_api import ingest as device_api

    settings.DEVICE_MAX_INFLIGHT_INGEST = 1
    monkeypatch.setattr(device_api.INFLIGHT, "current", 1)
    response = post(api_a, TELEMETRY, points(1, 3))
    assert response.status_code == 503
    assert response["Retry-After"] == str(settings.DEVICE_RETRY_AFTER_S)
    monkeypatch.setattr(device_api.INFLIGHT, "current", 0)
    assert post(api_a, TELEMETRY, points(1, 3)).status_code == 200
    assert device_api.INFLIGHT.current == 0


def test_database_error_answers_503_and_nothing_half_stored(api_a, monkeypatch):
    """S1 (unit level): a failing insert is a 503 with Retry-After, never a 500."""
    from devices import ingest

    def broken(*args, **kwargs):
        raise DatabaseError("connection refused")

    monkeypatch.setattr(ingest, "insert", broken)
    response = post(api_a, TELEMETRY, points(1, 3))
    assert response.status_code == 503
    assert "Retry-After" in response
    from devices import auth

    monkeypatch.setattr(auth, "authenticate_token", broken)
    response = post(api_a, LOGS, log_lines(1, 1))
    assert response.status_code == 503 and "Retry-After" in response


def test_logs_same_rules(api_a, device_a):
    stamp = time.time()  # a record is (boot_id, seq, ts): resent as it was made
    first = post(api_a, LOGS, log_lines(1, 20, ts=stamp))
    again = post(api_a, LOGS, log_lines(10, 30, level="error", ts=stamp))
    assert first.status_code == again.status_code == 200
    assert LogLine.objects.filter(device=device_a[0]).count() == 30
    assert post(api_a, LOGS, log_lines(1, 20, ts=stamp)).json() == first.json()
    bad = post(
        api_a,
        LOGS,
        [
            {"seq": 99, "boot_id": "b", "ts": 1.8e9, "level": "loud", "message": "x"},
            {"seq": 100, "boot_id": "b", "ts": 1.7e9, "message": 3},
        ],
    )
    assert [r["index"] for r in bad.json()["rejected"]] == [0, 1]


def test_telemetry_query_count(api_a, device_a, django_assert_max_num_queries):
    post(api_a, TELEMETRY, points(1, 1))  # warm: last_seen fresh, key loaded
    # auth (credential + device, one join) and one INSERT for 500 points.
    with django_assert_max_num_queries(2):
        response = post(api_a, TELEMETRY, points(2, 501))
    assert response.status_code == 200
    with django_assert_max_num_queries(2):
        assert post(api_a, LOGS, log_lines(1, 500)).status_code == 200


def test_last_seen_is_written_only_when_stale(api_a, device_a, settings):
    device = device_a[0]
    stale = timezone.now() - timedelta(seconds=settings.DEVICE_LAST_SEEN_WRITE_S + 5)
    Device.objects.filter(pk=device.pk).update(last_seen=stale, status="offline")
    post(api_a, TELEMETRY, points(1, 1))
    flush_presence()  # with Redis presence is noted there and moved to the row by this task
    device.refresh_from_db()
    assert device.status == "online"
    written = device.last_seen
    assert written > stale
    post(api_a, TELEMETRY, points(2, 2))
    flush_presence()
    device.refresh_from_db()
    assert device.last_seen == written


def test_inventory_put(api_a, device_a):
    inventory = {
        "arch": "aarch64",
        "cpu": "Cortex-A72",
        "ram_mb": 4096,
        "os": "Debian 12",
        "onnxruntime": "1.20.1",
        "execution_providers": ["CPUExecutionProvider"],
        "agent_version": "0.2.0",
        "hardware_profile": "rpi-zero2",
        "models": {"default": {"model_version": "digits:4", "sha256": "ab" * 32}},
    }
    response = api_a.put("/api/v1/device/inventory", inventory, format="json")
    assert response.status_code == 200
    device = Device.objects.get(pk=device_a[0].pk)
    assert device.inventory == inventory
    assert (device.model_version, device.agent_version) == ("digits:4", "0.2.0")
    assert device.hardware_profile.slug == "rpi-zero2"
    for bad in (
        {"models": "x"},
        {"shoe_size": 9},
        [1],
        {"hardware_profile": "toaster"},
        {"agent_version": 2},
    ):
        assert api_a.put("/api/v1/device/inventory", bad, format="json").status_code == 400


def test_awkward_text_survives_storage(api_a, device_a):
    """Quotes, backslashes, braces, commas, 'NULL' and non-ASCII reach the table unchanged."""
    awkward = ['say "hi"', "back\\slash \\", "{a,b}", "NULL", "日本語 ✓", "tab\tnew\nline", ""]
    batch = [
        {"seq": i, "boot_id": "b", "ts": 1.79e9, "message": text, "level": "warning"}
        for i, text in enumerate(awkward)
    ]
    assert post(api_a, LOGS, batch).json()["count"] == len(awkward)
    stored = dict(LogLine.objects.values_list("seq", "message"))
    assert [stored[i] for i in range(len(awkward))] == awkward
    telemetry = [
        {
            "seq": 1,
            "boot_id": 'q"b{',
            "ts": 1.79e9,
            "model_version": 'v,"1"',
            "extra": {"note": 'x"y\\z', "n": None},
        }
    ]
    assert post(api_a, TELEMETRY, telemetry).json()["count"] == 1
    point = TelemetryPoint.objects.get()
    assert (point.boot_id, point.model_version) == ('q"b{', 'v,"1"')
    assert point.extra == {"note": 'x"y\\z', "n": None}


def test_nul_characters_are_rejected(api_a):
    batch = [
        {"seq": 1, "boot_id": "b", "ts": 1.79e9, "message": "a\x00b"},
        {"seq": 2, "boot_id": "b\x00", "ts": 1.79e9, "message": "x"},
    ]
    assert [r["index"] for r in post(api_a, LOGS, batch).json()["rejected"]] == [0, 1]
    bad = [{"seq": 1, "boot_id": "b", "ts": 1.79e9, "extra": {"k": "\x00"}}]
    assert post(api_a, TELEMETRY, bad).json()["rejected"][0]["index"] == 0


def test_deleting_a_device_removes_its_rows(api_a, api_b, device_a, device_b):
    """Raw tables have no DB-level FK (insert speed); Django's cascade still cleans up."""
    post(api_a, TELEMETRY, points(1, 10))
    post(api_a, LOGS, log_lines(1, 5))
    post(api_b, TELEMETRY, points(1, 3))
    Device.objects.get(pk=device_a[0].pk).delete()
    assert TelemetryPoint.objects.count() == 3
    assert LogLine.objects.count() == 0


def test_buffer_drops_are_recorded_once_per_batch(api_a, device_a):
    """E3 (server side): the agent's drop count is kept; a resend does not double it."""
    from devices.models import DropReport

    body = {"boot_id": "boot-1", "batch": points(1, 10), "dropped": 42}
    first = api_a.post(TELEMETRY, body, format="json")
    assert api_a.post(TELEMETRY, body, format="json").json() == first.json()
    # Resent after more drops: the larger count wins, still one report.
    api_a.post(TELEMETRY, {**body, "dropped": 45}, format="json")
    api_a.post(LOGS, {"batch": log_lines(1, 2), "dropped": 3}, format="json")
    api_a.post(LOGS, {"batch": log_lines(3, 4), "dropped": "lots"}, format="json")
    reports = {(r.kind, r.count) for r in DropReport.objects.filter(device=device_a[0])}
    assert reports == {("telemetry", 45), ("logs", 3)}


def test_rejected_items_name_their_seq(api_a):
    batch = points(1, 2)
    batch[0]["latency_ms"] = "slow"
    rejected = post(api_a, TELEMETRY, batch).json()["rejected"]
    assert rejected == [{"index": 0, "error": "latency_ms must be a number", "seq": 1}]


@pytest.mark.parametrize("path", [TELEMETRY, LOGS])
def test_who_may_post_batches(path, anon_api, operator_api, api_a, device_a):
    """Only a live device token: anonymous, operator tokens, garbage and revoked
    credentials get 401 with a Bearer challenge; GET is 405; nothing is stored."""
    batch = points(1, 2) if path == TELEMETRY else log_lines(1, 2)
    for client in (anon_api, operator_api, bearer("efd_garbage"), bearer("x y")):
        response = client.post(path, {"batch": batch}, format="json")
        assert response.status_code == 401, client
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["code"] in {"not_authenticated", "authentication_failed"}
    assert api_a.get(path).status_code == 405
    from devices import services

    services.revoke_device(device_a[0])
    assert post(api_a, path, batch).status_code == 401
    assert TelemetryPoint.objects.count() == LogLine.objects.count() == 0


def test_plain_device_views_are_in_the_openapi_schema(viewer_api):
    from openapi_spec_validator import validate

    spec = viewer_api.get("/api/schema/?format=json").json()
    validate(spec)
    for path in ("/api/v1/device/update", "/api/v1/device/telemetry", "/api/v1/device/logs"):
        assert path in spec["paths"], path
    operation = spec["paths"]["/api/v1/device/telemetry"]["post"]
    assert {"200", "400", "401", "413", "429", "503"} <= set(operation["responses"])
    assert "TelemetryPoint" in spec["components"]["schemas"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prepared", [True, False])
def test_insert_with_and_without_prepared_statements(api_a, settings, prepared):
    """PostgreSQL: the prepared INSERT is made once per session and made again on a
    new connection; with DEVICE_INGEST_PREPARED off the plain statement stores the same."""
    from django.db import connection, connections

    settings.DEVICE_INGEST_PREPARED = prepared
    records = points(1, 5)
    assert post(api_a, TELEMETRY, records[:3]).json()["count"] == 3
    assert post(api_a, LOGS, log_lines(1, 2)).json()["count"] == 2
    if connection.vendor == "postgresql" and prepared:
        assert connections["default"].edgefleet_prepared == {
            "edgefleet_insert_telemetry",
            "edgefleet_insert_logs",
        }
    connection.close()  # a new session: statements prepared again, not assumed
    assert post(api_a, TELEMETRY, records[1:]).json()["accepted"] == {"boot-1": [2, 3, 4, 5]}
    assert TelemetryPoint.objects.count() == 5 and LogLine.objects.count() == 2
