"""Periodic tasks, called as functions: rollups, offline detection, latency alerts, retention."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from devices import metrics, tasks
from devices.models import (
    Alert,
    Device,
    LatencyBaseline,
    LogLine,
    TelemetryPoint,
    TelemetryRollup,
)
from tests.devices.conftest import log_lines

pytestmark = pytest.mark.django_db


def minute_ago(minutes: int) -> float:
    start = metrics.floor_minute(timezone.now() - timedelta(minutes=minutes))
    return start.timestamp()


def test_rollup_percentiles_and_idempotence(api_a, device_a):
    base = minute_ago(2)
    batch = [
        {
            "seq": i,
            "boot_id": "b",
            "ts": base + i * 0.5,
            "latency_ms": float(i + 1),
            "mem_mb": 100.0 + i,
            "cpu_pct": 50.0,
            "battery_pct": 90.0 - i * 0.1,
            "inferences": 2,
            "errors": 1 if i == 0 else 0,
            "model_version": "m:1",
        }
        for i in range(100)
    ]
    api_a.post("/api/v1/device/telemetry", {"batch": batch}, format="json")
    assert tasks.rollup_telemetry() >= 1
    assert tasks.rollup_telemetry() >= 1  # recomputing the same minutes is harmless
    row = TelemetryRollup.objects.get(device=device_a[0])
    assert row.n == 100
    assert row.latency_p50 == pytest.approx(50.5)
    assert row.latency_p95 == pytest.approx(95.05)
    assert row.mem_max == 199.0 and row.cpu_mean == 50.0
    assert row.battery_min == pytest.approx(80.1)
    assert (row.inferences_sum, row.errors_sum, row.model_version) == (200, 1, "m:1")


def test_late_points_update_the_rollup(api_a, device_a):
    base = minute_ago(3)
    post = api_a.post
    post(
        "/api/v1/device/telemetry",
        {"batch": [{"seq": 1, "boot_id": "b", "ts": base + 1, "latency_ms": 10.0}]},
        format="json",
    )
    metrics.rollup()
    post(
        "/api/v1/device/telemetry",
        {"batch": [{"seq": 2, "boot_id": "b", "ts": base + 2, "latency_ms": 30.0}]},
        format="json",
    )
    metrics.rollup()
    row = TelemetryRollup.objects.get(device=device_a[0])
    assert row.n == 2 and row.latency_p50 == pytest.approx(20.0)


def test_offline_detection_respects_group_threshold_and_recovers(
    api_a, device_a, device_b, group, settings
):
    settings.DEVICE_OFFLINE_AFTER_S = 300
    group.offline_after_s = 60
    group.save()
    a, b = device_a[0], device_b[0]
    Device.objects.filter(pk=a.pk).update(last_seen=timezone.now() - timedelta(seconds=90))
    Device.objects.filter(pk=b.pk).update(last_seen=timezone.now() - timedelta(seconds=30))
    assert tasks.detect_offline() == 1
    assert tasks.detect_offline() == 0  # no duplicate alert
    assert Device.objects.get(pk=a.pk).status == "offline"
    assert Device.objects.get(pk=b.pk).status == "online"
    alert = Alert.objects.get(device=a)
    assert alert.kind == "offline" and alert.state == "open"
    # The device speaks again: online, alert resolved.
    api_a.post("/api/v1/device/logs", {"batch": log_lines(1, 1)}, format="json")
    tasks.flush_presence()  # with Redis presence waits there for this task
    assert Device.objects.get(pk=a.pk).status == "online"
    assert Alert.objects.get(pk=alert.pk).state == "resolved"
    # Ungrouped devices use the global default.
    Device.objects.filter(pk=b.pk).update(
        group=None, last_seen=timezone.now() - timedelta(seconds=200)
    )
    assert tasks.detect_offline() == 0


def test_latency_alert_against_the_estimate(api_a, device_a, settings):
    from devices.models import HardwareProfile

    settings.LATENCY_ALERT_FACTOR = 1.5
    rpi4 = HardwareProfile.objects.get(slug="rpi4")
    LatencyBaseline.objects.create(model_version="m:1", hardware_profile=rpi4, p95_ms=10.0)
    base = minute_ago(2)
    fast = [
        {"seq": i, "boot_id": "b", "ts": base + i * 0.1, "latency_ms": 12.0, "model_version": "m:1"}
        for i in range(50)
    ]
    api_a.post("/api/v1/device/telemetry", {"batch": fast}, format="json")
    metrics.rollup()
    assert tasks.check_latency() == 0
    slow = [{**p, "seq": p["seq"] + 100, "latency_ms": 40.0} for p in fast]
    api_a.post("/api/v1/device/telemetry", {"batch": slow}, format="json")
    metrics.rollup()
    assert tasks.check_latency() == 1
    assert tasks.check_latency() == 0
    alert = Alert.objects.get(kind="latency")
    assert alert.detail["estimate_ms"] == 10.0 and alert.detail["p95_ms"] > 15


def test_retention_deletes_only_old_rows(api_a, device_a, settings):
    settings.TELEMETRY_RETENTION_DAYS = 7
    settings.LOG_RETENTION_DAYS = 7
    now = time.time()
    old, new = now - 8 * 86400, now - 3600
    api_a.post(
        "/api/v1/device/telemetry",
        {"batch": [{"seq": 1, "boot_id": "b", "ts": old}, {"seq": 2, "boot_id": "b", "ts": new}]},
        format="json",
    )
    api_a.post(
        "/api/v1/device/logs",
        {
            "batch": [
                {"seq": 1, "boot_id": "b", "ts": old, "message": "old"},
                {"seq": 2, "boot_id": "b", "ts": new, "message": "new"},
            ]
        },
        format="json",
    )
    TelemetryRollup.objects.create(
        device=device_a[0], n=1, minute=timezone.now() - timedelta(days=400)
    )
    result = tasks.apply_retention()
    assert result == {"telemetry": 1, "logs": 1, "rollups": 1}
    assert list(TelemetryPoint.objects.values_list("seq", flat=True)) == [2]
    assert list(LogLine.objects.values_list("message", flat=True)) == ["new"]


def test_beat_schedule_lists_the_device_tasks(settings):
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {
        "devices.tasks.rollup_telemetry",
        "devices.tasks.detect_offline",
        "devices.tasks.check_latency",
        "devices.tasks.apply_retention",
    } <= names


@pytest.mark.parametrize("bad", [None, 0, -1.0, float("nan"), float("inf"), True, "12"])
def test_latency_estimate_refuses_nonsense(bad):
    from devices.models import HardwareProfile
    from devices.services import record_latency_estimate

    rpi4 = HardwareProfile.objects.get(slug="rpi4")
    assert record_latency_estimate("m:1", rpi4, bad) is False
    assert record_latency_estimate("m:1", None, 5.0) is False
    assert not LatencyBaseline.objects.exists()
    assert record_latency_estimate("m:1", rpi4, 5) is True
    assert record_latency_estimate("m:1", rpi4, 7.5) is True  # a newer measurement wins
    assert LatencyBaseline.objects.get().p95_ms == 7.5
