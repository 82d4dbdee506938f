"""/metrics: token rules, metric names and labels, and counts that move after
real requests through the WSGI entry point (device handler included)."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "scrape-secret"


def scrape(call) -> dict[str, dict[tuple, float]]:
    """{metric family name: {sorted label items + sample name: value}}."""
    answer = call("GET", "/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert answer["status"] == 200
    assert answer["headers"]["content-type"].startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(answer["body"].decode()):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            samples[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return families


def value(families, family: str, sample: str, **labels) -> float:
    return families.get(family, {}).get((sample, *sorted(labels.items())), 0.0)


@pytest.fixture
def enrolled(db, admin_user):
    from devices import services

    _row, plain = services.create_enrollment_token(name="metrics", actor=admin_user)
    device, token = services.enroll(plain, {"uid": "metrics-1", "hardware_profile": "rpi4"})
    return device, token


def points(first: int, last: int) -> list[dict]:
    now = time.time()
    return [
        {"seq": seq, "boot_id": "boot-1", "ts": now, "latency_ms": 10.0, "cpu_pct": 20.0}
        for seq in range(first, last + 1)
    ]


@pytest.mark.django_db
def test_metrics_need_the_token(call, settings):
    settings.METRICS_TOKEN = ""
    assert call("GET", "/metrics")["status"] == 404  # not exposed without a token set
    settings.METRICS_TOKEN = TOKEN
    missing = call("GET", "/metrics")
    assert missing["status"] == 401
    assert missing["headers"]["www-authenticate"].startswith("Bearer")
    assert call("GET", "/metrics", HTTP_AUTHORIZATION="Bearer wrong")["status"] == 401
    assert call("GET", "/metrics", HTTP_AUTHORIZATION=f"Token {TOKEN}")["status"] == 401
    assert call("GET", "/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")["status"] == 200


@pytest.mark.django_db
def test_device_requests_and_records_are_counted(call, settings, enrolled):
    settings.METRICS_TOKEN = TOKEN
    _device, token = enrolled
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    before = scrape(call)
    batch = json.dumps({"batch": points(1, 5), "dropped": 2}).encode()
    assert call("POST", "/api/v1/device/telemetry", batch, **auth)["status"] == 200
    assert call("POST", "/api/v1/device/telemetry", batch, **auth)["status"] == 200  # resend
    bad = json.dumps([*points(6, 6), {"seq": 7, "boot_id": "boot-1", "ts": "soon"}]).encode()
    assert call("POST", "/api/v1/device/telemetry", bad, **auth)["status"] == 200
    assert call("GET", "/api/v1/device/update", **auth)["status"] in (200, 204)
    assert call("GET", "/api/v1/device/update")["status"] == 401
    after = scrape(call)

    def moved(family, sample, **labels):
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    requests = "edgefleet_device_requests"
    assert moved(requests, f"{requests}_total", endpoint="device-telemetry", status="200") == 3
    assert moved(requests, f"{requests}_total", endpoint="device-update", status="401") == 1
    assert (
        moved(requests, f"{requests}_total", endpoint="device-update", status="200")
        + moved(requests, f"{requests}_total", endpoint="device-update", status="204")
    ) == 1
    latency = "edgefleet_device_request_duration_seconds"
    assert moved(latency, f"{latency}_count", endpoint="device-telemetry") == 3
    assert moved(latency, f"{latency}_bucket", endpoint="device-telemetry", le="+Inf") == 3
    assert moved(latency, f"{latency}_sum", endpoint="device-telemetry") > 0
    records = "edgefleet_telemetry_records"
    assert moved(records, f"{records}_total", kind="telemetry", outcome="stored") == 6
    assert moved(records, f"{records}_total", kind="telemetry", outcome="duplicate") == 5
    assert moved(records, f"{records}_total", kind="telemetry", outcome="rejected") == 1
    assert (
        moved(records, f"{records}_total", kind="telemetry", outcome="dropped") == 2
    )  # once per batch


@pytest.mark.django_db
def test_state_gauges(call, settings, enrolled):
    settings.METRICS_TOKEN = TOKEN
    families = scrape(call)
    assert value(families, "edgefleet_devices", "edgefleet_devices", state="online") == 1
    assert "edgefleet_deployments" in families and "edgefleet_compression_jobs" in families
    assert value(families, "edgefleet_state_scrape_error", "edgefleet_state_scrape_error") == 0
    if settings.CELERY_BROKER_URL.startswith("redis"):
        length = "edgefleet_celery_queue_length"
        assert (length, ("queue", "compression")) in families[length]


@pytest.mark.django_db
def test_metrics_off_leave_the_device_answers_alone(settings, enrolled):
    """METRICS_ENABLED=0 (used to measure the cost): nothing counted, same answers."""
    from devices import services
    from devices.models import TelemetryPoint
    from fleet import prometheus

    settings.METRICS_ENABLED = False
    device, _token = enrolled
    sample = ("edgefleet_telemetry_records_total", {"kind": "telemetry", "outcome": "stored"})
    before = prometheus.REGISTRY.get_sample_value(*sample) or 0.0
    assert services.ingest_telemetry(device, points(1, 3)).new == 3
    assert (prometheus.REGISTRY.get_sample_value(*sample) or 0.0) == before
    assert TelemetryPoint.objects.filter(device=device).count() == 3


def test_task_failures_are_counted():
    """Celery's own tracer sends task_failure; the counter follows it."""
    from celery import shared_task

    from fleet import prometheus
    from fleet.celery import app

    @shared_task(name="tests.metrics.always_fails")
    def always_fails():
        raise RuntimeError("boom")

    labels = {"task": "tests.metrics.always_fails"}
    before = (
        prometheus.REGISTRY.get_sample_value("edgefleet_celery_task_failures_total", labels) or 0.0
    )
    result = app.tasks["tests.metrics.always_fails"].apply()
    assert result.failed()
    after = prometheus.REGISTRY.get_sample_value("edgefleet_celery_task_failures_total", labels)
    assert after == before + 1
