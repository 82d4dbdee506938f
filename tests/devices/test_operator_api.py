"""Operator API: role matrix (A3), read-only fields (A4), CSRF (A5), page cap (A6)."""

from __future__ import annotations

import pytest
from django.test import Client

from devices.models import Device, DeviceGroup, EnrollmentToken, QueryGroup
from fleet.models import AuditEntry
from tests.devices.conftest import points

pytestmark = pytest.mark.django_db

READS = [
    "/api/v1/devices/",
    "/api/v1/devices/cam-a/",
    "/api/v1/groups/",
    "/api/v1/query-groups/",
    "/api/v1/alerts/",
    "/api/v1/devices/cam-a/telemetry/",
    "/api/v1/devices/cam-a/logs/",
]


@pytest.fixture
def clients(anon_api, viewer_api, operator_api, admin_api, api_a):
    return {
        "anonymous": anon_api,
        "device": api_a,
        "viewer": viewer_api,
        "operator": operator_api,
        "admin": admin_api,
    }


@pytest.mark.parametrize("path", READS)
def test_reads_need_a_viewer_and_refuse_devices(clients, device_a, path):
    expected = {"anonymous": 401, "device": 401, "viewer": 200, "operator": 200, "admin": 200}
    got = {who: client.get(path).status_code for who, client in clients.items()}
    assert got == expected


def test_enrollment_tokens_are_admin_only(clients, enrollment):
    expected = {"anonymous": 401, "device": 401, "viewer": 403, "operator": 403, "admin": 200}
    got = {who: c.get("/api/v1/enrollment-tokens/").status_code for who, c in clients.items()}
    assert got == expected
    got = {
        who: c.post("/api/v1/enrollment-tokens/", {"name": "x"}, format="json").status_code
        for who, c in clients.items()
    }
    assert got == {**expected, "admin": 201}


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("patch", "/api/v1/devices/cam-a/", {"name": "renamed"}),
        ("post", "/api/v1/devices/cam-a/revoke/", {}),
        ("post", "/api/v1/groups/", {"name": "g2"}),
        ("post", "/api/v1/query-groups/", {"name": "q", "query": "hardware=rpi4"}),
    ],
)
def test_fleet_writes_are_admin_only(clients, device_a, method, path, body):
    codes = {
        who: getattr(c, method)(path, body, format="json").status_code
        for who, c in clients.items()
        if who != "admin"
    }
    assert codes == {"anonymous": 401, "device": 401, "viewer": 403, "operator": 403}
    assert getattr(clients["admin"], method)(path, body, format="json").status_code in (200, 201)


def test_device_principal_has_no_role(device_a):
    """RolePermission refuses a device principal whatever the view asks for."""
    from types import SimpleNamespace

    from devices.auth import DevicePrincipal
    from fleet.roles import Role, RolePermission, role_of

    principal = DevicePrincipal(device_a[0])
    assert role_of(principal) is None
    request = SimpleNamespace(user=principal, method="GET")
    view = SimpleNamespace(action="list", action_roles={}, read_role=Role.VIEWER)
    assert RolePermission().has_permission(request, view) is False


def test_device_endpoints_refuse_sessions_and_operator_tokens(
    operator_user, operator_api, admin_user, device_a
):
    session = Client(enforce_csrf_checks=False)
    session.force_login(admin_user)
    for client in (session, operator_api):
        response = client.post(
            "/api/v1/device/telemetry", {"batch": points(1, 1)}, content_type="application/json"
        )
        assert response.status_code == 401
        assert (
            client.put("/api/v1/device/inventory", {}, content_type="application/json").status_code
            == 401
        )


def test_admin_updates_device_group_and_tags_and_read_only_fields_stay(admin_api, device_a):
    """A4: uid, status, inventory, last_seen cannot be set through the API."""
    other = DeviceGroup.objects.create(name="line-4")
    device = device_a[0]
    response = admin_api.patch(
        f"/api/v1/devices/{device.uid}/",
        {
            "group": other.pk,
            "tags": ["Outdoor", "line-4"],
            "name": "Cam A",
            "uid": "stolen",
            "status": "offline",
            "inventory": {"x": 1},
            "last_seen": "2000-01-01T00:00:00Z",
            "model_version": "evil:1",
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    device.refresh_from_db()
    assert (device.group, device.name) == (other, "Cam A")
    assert sorted(t.name for t in device.tags.all()) == ["line-4", "outdoor"]
    assert device.uid == "cam-a" and device.status == "online"
    assert device.inventory.get("x") is None and device.model_version == ""
    assert AuditEntry.objects.filter(action="device.update").exists()
    bad = admin_api.patch(f"/api/v1/devices/{device.uid}/", {"tags": ["no spaces"]}, format="json")
    assert bad.status_code == 400
    assert (
        admin_api.patch(
            f"/api/v1/devices/{device.uid}/", {"group": 9999}, format="json"
        ).status_code
        == 400
    )


def test_enrollment_token_created_once_and_revocable(admin_api, anon_api):
    group = DeviceGroup.objects.create(name="g")
    response = admin_api.post(
        "/api/v1/enrollment-tokens/",
        {"name": "pilot", "group": group.pk, "tags": ["pilot"], "max_uses": 2},
        format="json",
    )
    assert response.status_code == 201
    body = response.json()
    value = body["token"]
    assert value.startswith("efe_") and body["prefix"] == value[:16]
    token = EnrollmentToken.objects.get()
    assert token.token_hash != value and value not in str(
        admin_api.get(f"/api/v1/enrollment-tokens/{token.pk}/").json()
    )
    assert (
        anon_api.post("/api/v1/device/enroll", {"token": value}, format="json").status_code == 201
    )
    assert admin_api.post(f"/api/v1/enrollment-tokens/{token.pk}/revoke/").status_code == 200
    assert (
        anon_api.post("/api/v1/device/enroll", {"token": value}, format="json").status_code == 403
    )
    assert AuditEntry.objects.filter(action="enrollment_token.revoke").exists()
    for bad in (
        {"name": ""},
        {"name": "x", "max_uses": -1},
        {"name": "x", "tags": ["a b"]},
        {"name": "x", "expires_at": "soon"},
    ):
        assert admin_api.post("/api/v1/enrollment-tokens/", bad, format="json").status_code == 400


def test_session_write_without_csrf_is_403(admin_user, device_a):
    """A5"""
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(f"/api/v1/devices/{device_a[0].uid}/revoke/")
    assert response.status_code == 403
    assert Device.objects.get(pk=device_a[0].pk).status == "online"


def test_device_list_filters_and_page_cap(
    viewer_api, enrollment, device_a, device_b, django_assert_max_num_queries
):
    from devices import services

    for i in range(5):
        services.enroll(enrollment[1], {"uid": f"extra-{i}", "hardware_profile": "x86-gateway-1c"})
    with django_assert_max_num_queries(5):
        response = viewer_api.get("/api/v1/devices/?page_size=1000")
    body = response.json()
    assert body["count"] == 7 and len(body["results"]) == 7
    assert body["results"][0]["tags"] == ["cam"]
    assert viewer_api.get("/api/v1/devices/?hardware=rpi4").json()["count"] == 2
    assert viewer_api.get("/api/v1/devices/?q=extra-1").json()["count"] == 1
    assert viewer_api.get("/api/v1/devices/?tag=cam&status=online").json()["count"] == 7
    assert viewer_api.get("/api/v1/devices/?group=line-3").json()["count"] == 7
    assert (
        viewer_api.get("/api/v1/devices/?query=hardware=rpi4 and uid!=cam-a").json()["count"] == 1
    )
    assert viewer_api.get("/api/v1/devices/?query=colour=red").status_code == 400
    from fleet.api import MAX_PAGE_SIZE

    assert MAX_PAGE_SIZE == 200


def test_query_groups(admin_api, viewer_api, device_a, device_b):
    response = admin_api.post(
        "/api/v1/query-groups/",
        {"name": "rpi cams", "query": "hardware=rpi4 and tag=cam"},
        format="json",
    )
    assert response.status_code == 201
    group = QueryGroup.objects.get()
    assert set(group.devices().values_list("uid", flat=True)) == {"cam-a", "cam-b"}
    listed = viewer_api.get(f"/api/v1/query-groups/{group.pk}/devices/").json()
    assert listed["count"] == 2
    assert viewer_api.get(f"/api/v1/devices/?query_group={group.pk}").json()["count"] == 2
    assert (
        admin_api.post(
            "/api/v1/query-groups/", {"name": "bad", "query": "nonsense"}, format="json"
        ).status_code
        == 400
    )


def test_device_telemetry_and_logs_endpoints(viewer_api, api_a, device_a):
    api_a.post("/api/v1/device/telemetry", {"batch": points(1, 30)}, format="json")
    api_a.post(
        "/api/v1/device/logs",
        {
            "batch": [
                {"seq": 1, "boot_id": "b", "ts": 1.79e9 - 100, "level": "error", "message": "boom"},
                {"seq": 2, "boot_id": "b", "ts": 1.79e9 - 50, "level": "info", "message": "ok"},
            ]
        },
        format="json",
    )
    series = viewer_api.get("/api/v1/devices/cam-a/telemetry/?minutes=30").json()
    assert series["labels"] and series["latency_p95"][-1] is not None
    logs = viewer_api.get("/api/v1/devices/cam-a/logs/?level=error").json()
    assert [line["message"] for line in logs["results"]] == ["boom"]
    assert viewer_api.get("/api/v1/devices/cam-a/telemetry/?minutes=x").status_code == 400
    assert viewer_api.get("/api/v1/devices/nope/telemetry/").status_code == 404


def test_update_device_is_the_one_edit_path(device_a):
    """The page and the API both edit through `services.update_device`: all or nothing."""
    from devices import services

    device = device_a[0]
    first, second = DeviceGroup.objects.create(name="g-1"), DeviceGroup.objects.create(name="g-2")
    services.update_device(device, {"tags": ["North", "cam"], "group": first, "name": "Cam"})
    device.refresh_from_db()
    assert (device.group, device.name) == (first, "Cam")
    assert sorted(t.name for t in device.tags.all()) == ["cam", "north"]
    with pytest.raises(services.DeviceError):
        services.update_device(device, {"tags": ["ok", "no spaces"], "group": second})
    device.refresh_from_db()
    assert device.group == first and sorted(t.name for t in device.tags.all()) == ["cam", "north"]
    services.update_device(device, {"group": None})
    device.refresh_from_db()
    assert device.group is None and device.tags.count() == 2
