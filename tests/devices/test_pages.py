"""Fleet pages: who sees what, admin actions, query counts on the list."""

from __future__ import annotations

import pytest
from django.test import Client

from devices import metrics
from devices.models import Device, DeviceGroup, EnrollmentToken
from fleet.models import AuditEntry
from tests.devices.conftest import log_lines, points

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    "path",
    [
        "/devices/",
        "/devices/widget/",
        "/devices/list/",
        "/devices/d/cam-a/",
        "/devices/d/cam-a/chart.json",
        "/devices/d/cam-a/logs/",
        "/devices/d/cam-a/live/",
    ],
)
def test_viewer_reads_pages(viewer_user, device_a, path):
    assert logged_in(viewer_user).get(path).status_code == 200
    assert Client().get(path).status_code == 302  # anonymous → login


def test_admin_pages_refuse_viewers_and_operators(viewer_user, operator_user, device_a):
    for user in (viewer_user, operator_user):
        client = logged_in(user)
        assert client.get("/devices/enrollment/").status_code == 403
        assert client.post("/devices/d/cam-a/revoke/").status_code == 403
        assert client.post("/devices/d/cam-a/edit/", {"tags": "x"}).status_code == 403
    assert Device.objects.get(uid="cam-a").status == "online"


def test_overview_counts(viewer_user, device_a, device_b):
    response = logged_in(viewer_user).get("/devices/")
    assert response.context["total"] == 2 and response.context["online"] == 2
    assert b"line-3" in response.content


def test_list_filters_and_query_count(
    viewer_user, device_a, device_b, django_assert_max_num_queries
):
    client = logged_in(viewer_user)
    with django_assert_max_num_queries(8):
        response = client.get("/devices/list/?q=cam-a")
    assert [d.uid for d in response.context["page"].object_list] == ["cam-a"]
    group = DeviceGroup.objects.get(name="line-3")
    assert response.context["page"].paginator.count == 1
    response = client.get(f"/devices/list/?group={group.pk}&hardware=rpi4&status=online")
    assert response.context["page"].paginator.count == 2
    assert client.get("/devices/list/?status=bogus").status_code == 200  # bad filter ignored


def test_detail_shows_inventory_logs_and_series(viewer_user, api_a, device_a):
    api_a.put(
        "/api/v1/device/inventory",
        {
            "arch": "aarch64",
            "cpu": "Cortex-A72",
            "models": {"default": {"model_version": "digits:3"}},
        },
        format="json",
    )
    api_a.post("/api/v1/device/telemetry", {"batch": points(1, 50)}, format="json")
    api_a.post("/api/v1/device/logs", {"batch": log_lines(1, 3, level="error")}, format="json")
    client = logged_in(viewer_user)
    page = client.get("/devices/d/cam-a/")
    assert b"Cortex-A72" in page.content and b"digits:3" in page.content
    assert b"No updates yet." in page.content  # the OTA update history, in the live partial
    series = client.get("/devices/d/cam-a/chart.json?minutes=15").json()
    assert sum(series["latency_p50"][i] is not None for i in range(len(series["labels"]))) >= 1
    logs = client.get("/devices/d/cam-a/logs/?level=error")
    assert logs.content.count(b"line ") == 3
    assert client.get("/devices/d/cam-a/logs/?level=debug").content.count(b"line ") == 0
    assert client.get("/devices/d/cam-a/chart.json?minutes=abc").status_code == 200
    assert client.get("/devices/d/nobody/").status_code == 404
    api_a.post("/api/v1/device/telemetry", {"batch": points(60, 61), "dropped": 7}, format="json")
    assert b"7 telemetry records" in client.get("/devices/d/cam-a/").content


def test_admin_creates_token_moves_tags_and_revokes(admin_user, device_a):
    client = logged_in(admin_user)
    response = client.post(
        "/devices/enrollment/",
        {"name": "floor 2", "tags": "cam, floor-2", "max_uses": 5, "expires_in_days": 7},
    )
    assert response.status_code == 200
    value = response.context["created"]["value"]
    assert value.encode() in response.content
    token = EnrollmentToken.objects.get(name="floor 2")
    assert token.token_hash != value and sorted(t.name for t in token.tags.all()) == [
        "cam",
        "floor-2",
    ]
    # Shown once: the list page does not show it again.
    assert value.encode() not in client.get("/devices/enrollment/").content
    client.post("/devices/groups/new/", {"name": "line-9"})
    group = DeviceGroup.objects.get(name="line-9")
    client.post("/devices/d/cam-a/edit/", {"group": group.pk, "tags": "outdoor north"})
    device = Device.objects.get(uid="cam-a")
    assert device.group == group
    assert sorted(t.name for t in device.tags.all()) == ["north", "outdoor"]
    client.post("/devices/d/cam-a/revoke/")
    assert Device.objects.get(uid="cam-a").status == "revoked"
    client.post(f"/devices/enrollment/{token.pk}/revoke/")
    assert EnrollmentToken.objects.get(pk=token.pk).revoked_at is not None
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {
        "enrollment_token.create",
        "device.update",
        "device.revoke",
        "enrollment_token.revoke",
        "group.create",
    } <= actions
    bad = client.post("/devices/enrollment/", {"name": "", "tags": "x"})
    assert bad.status_code == 200 and bad.context["form"].errors


def test_rollup_and_series_agree(api_a, device_a):
    """The minutes the chart reads from rollups (the SQL rollup on PostgreSQL) hold what
    the raw points say (the Python rollup the chart uses for its live tail)."""
    from datetime import timedelta

    from django.utils import timezone

    from devices.models import TelemetryPoint

    api_a.post("/api/v1/device/telemetry", {"batch": points(1, 100)}, format="json")
    now = timezone.now()
    stored = list(TelemetryPoint.objects.filter(device=device_a[0]).order_by("seq"))
    for i, point in enumerate(stored):  # three complete minutes, older than the live tail
        point.ts = now - timedelta(minutes=metrics.LIVE_TAIL_MIN + 2 + i % 3, seconds=i % 50)
    TelemetryPoint.objects.bulk_update(stored, ["ts"])
    expected = metrics._python_rollups(TelemetryPoint.objects.filter(device=device_a[0]))
    assert metrics.rollup() == len(expected) >= 3
    series = metrics.series(device_a[0], 60)
    minutes = sorted(minute for _device, minute in expected)
    assert series["labels"] == [m.isoformat() for m in minutes]
    for name in metrics.SERIES:
        want = [expected[device_a[0].pk, m][name] for m in minutes]
        assert series[name] == pytest.approx(want), name


def test_live_partial_refreshes_until_revoked(viewer_user, admin_user, api_a, device_a):
    """The device page's live part: status, inventory and history in one polled response."""
    client = logged_in(viewer_user)
    page = client.get("/devices/d/cam-a/").content.decode()
    assert 'hx-get="/devices/d/cam-a/live/"' in page and 'hx-trigger="every 5s"' in page
    api_a.put(
        "/api/v1/device/inventory",
        {"models": {"default": {"model_version": "digits:4"}}},
        format="json",
    )
    live = client.get("/devices/d/cam-a/live/").content.decode()
    assert "digits:4" in live and 'id="device-status"' in live and "No updates yet." in live
    logged_in(admin_user).post("/devices/d/cam-a/revoke/")
    live = client.get("/devices/d/cam-a/live/").content.decode()
    assert 'data-status="revoked"' in live and "hx-trigger" not in live
    assert client.get("/devices/d/nobody/live/").status_code == 404


def test_overview_charts_sample_health_and_count_what_runs_where(
    viewer_user, api_a, device_a, device_b
):
    from devices import overview
    from devices.models import FleetSample

    api_a.put(
        "/api/v1/device/inventory",
        {"models": {"default": {"model_version": "digits:4"}}},
        format="json",
    )
    overview.sample_fleet()
    assert FleetSample.objects.get().online == 2
    client = logged_in(viewer_user)
    assert "/devices/widget/charts/" in client.get("/").content.decode()
    widget = client.get("/devices/widget/charts/")
    charts = widget.context["charts"]
    assert charts["health"]["online"] == [2, 2]  # the sample, then the live state
    assert dict(zip(charts["by_profile"]["labels"], charts["by_profile"]["counts"], strict=True))
    assert "digits:4" in charts["by_version"]["labels"]
    assert b'id="fleet-chart-data"' in widget.content
    assert Client().get("/devices/widget/charts/").status_code == 302


def test_list_filters_by_running_version_and_profile(viewer_user, api_a, device_a, device_b):
    api_a.put(
        "/api/v1/device/inventory",
        {"models": {"default": {"model_version": "digits:4"}}},
        format="json",
    )
    client = logged_in(viewer_user)
    response = client.get("/devices/list/?model_version=digits:4")
    assert [d.uid for d in response.context["page"].object_list] == ["cam-a"]
    assert b'<option value="digits:4">' in response.content  # the running versions offered
    detail = client.get("/devices/d/cam-a/").content.decode()
    assert "/devices/list/?model_version=digits%3A4" in detail


def test_one_fleet_sample_per_tick(device_a):
    """A second run within half a period (a redelivery, two beats) takes no sample."""
    from datetime import timedelta

    from django.utils import timezone

    from devices import overview
    from devices.models import FleetSample

    now = timezone.now()
    assert overview.sample_fleet(now) is not None
    assert overview.sample_fleet(now + timedelta(seconds=60)) is None
    assert overview.sample_fleet(now + timedelta(seconds=300)) is not None
    assert FleetSample.objects.count() == 2
