"""Operator API: releases, deployments and actions, device updates — roles (A3),
bad input, read-only fields (A4), audit rows (A7)."""

from __future__ import annotations

import pytest

from fleet.models import AuditEntry
from ota.choices import DeploymentStatus
from ota.models import Deployment
from tests.conftest import bearer
from tests.ota.conftest import finish

pytestmark = pytest.mark.django_db


def create_release(client, v2, name="api release"):
    return client.post(
        "/api/v1/releases/",
        {
            "name": name,
            "slot": "default",
            "variants": [
                {"name": "fp32", "model_version": v2.pk},
                {"name": "fp32", "model_version": v2.pk, "hardware_profile": "rpi4"},
            ],
            "policy": {"rules": [{"when": {"battery_pct": {"lt": 20}}, "use": "fp32"}]},
        },
        format="json",
    )


def create_deployment(client, release_id, **extra):
    return client.post(
        "/api/v1/deployments/",
        {
            "release": release_id,
            "target": {"tags": ["cam"]},
            "phases": [10, 100],
            "gates": {"max_latency_ratio": None},
            **extra,
        },
        format="json",
    )


def test_role_matrix(fleet, v2, anon_api, viewer_api, operator_api, admin_api):
    device_client = bearer(fleet[0][1])
    for client in (anon_api, device_client):
        assert client.get("/api/v1/releases/").status_code == 401
        assert client.get("/api/v1/deployments/").status_code == 401
        assert client.get("/api/v1/device-updates/").status_code == 401
    assert viewer_api.get("/api/v1/releases/").status_code == 200
    assert create_release(viewer_api, v2).status_code == 403
    created = create_release(operator_api, v2)
    assert created.status_code == 201, created.content
    assert create_deployment(viewer_api, created.json()["id"]).status_code == 403
    assert create_deployment(device_client, created.json()["id"]).status_code == 401
    started = create_deployment(operator_api, created.json()["id"])
    assert started.status_code == 201, started.content
    pk = started.json()["id"]
    assert viewer_api.post(f"/api/v1/deployments/{pk}/pause/").status_code == 403
    assert viewer_api.get(f"/api/v1/deployments/{pk}/").status_code == 200
    assert viewer_api.get(f"/api/v1/device-updates/?deployment={pk}").json()["count"] == 10
    assert admin_api.get("/api/v1/deployments/").status_code == 200


def test_deployment_actions(fleet, v2, operator_api):
    release = create_release(operator_api, v2).json()["id"]
    pk = create_deployment(operator_api, release).json()["id"]
    paused = operator_api.post(
        f"/api/v1/deployments/{pk}/pause/", {"reason": "checking"}, format="json"
    )
    assert paused.status_code == 200 and paused.json()["pause_reason"] == "checking"
    assert operator_api.post(f"/api/v1/deployments/{pk}/pause/").status_code == 409
    assert operator_api.post(f"/api/v1/deployments/{pk}/resume/").json()["status"] == "running"
    for update in Deployment.objects.get(pk=pk).updates.exclude(state="queued"):
        finish(update)  # the canary's gate passes: approving now reaches no device ungated
    approved = operator_api.post(f"/api/v1/deployments/{pk}/approve/")
    assert approved.status_code == 200 and approved.json()["current_phase"] == 1
    deployment = Deployment.objects.get(pk=pk)
    for update in deployment.updates.exclude(state__in=["queued", "succeeded"]):
        finish(update)
    back = operator_api.post(f"/api/v1/deployments/{pk}/rollback/")
    assert back.status_code == 201 and back.json()["kind"] == "rollback"
    assert Deployment.objects.get(pk=pk).status == DeploymentStatus.ROLLED_BACK
    assert operator_api.post(f"/api/v1/deployments/{pk}/abort/").status_code == 409
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {
        "release.create",
        "deployment.start",
        "deployment.pause",
        "deployment.rollback",
    } <= actions


def test_preview_counts_devices_per_phase(fleet, viewer_api):
    response = viewer_api.post(
        "/api/v1/deployments/preview/",
        {"target": {"tags": ["cam"]}, "phases": [1, 50, 100]},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["cumulative"] == [1, 5, 10] and response.json()["total"] == 10


def test_bad_input(fleet, v2, operator_api):
    assert (
        operator_api.post(
            "/api/v1/releases/", {"name": "x", "variants": []}, format="json"
        ).status_code
        == 400
    )
    assert (
        operator_api.post(
            "/api/v1/releases/",
            {"name": "x", "variants": [{"model_version": 999999}]},
            format="json",
        ).status_code
        == 400
    )
    bad_policy = operator_api.post(
        "/api/v1/releases/",
        {
            "name": "x",
            "variants": [{"model_version": v2.pk}],
            "policy": {"rules": [{"when": {}, "use": "default"}]},
        },
        format="json",
    )
    assert bad_policy.status_code == 400 and bad_policy.json()["code"] == "bad_policy"
    release = create_release(operator_api, v2).json()["id"]
    assert create_deployment(operator_api, release, phases=[50, 10]).status_code == 400
    assert create_deployment(operator_api, 424242).status_code == 400
    assert (
        operator_api.post(
            "/api/v1/deployments/", {"release": release, "target": "all"}, format="json"
        ).status_code
        == 400
    )
    unphased = create_deployment(operator_api, release, phases=[100])
    assert unphased.status_code == 403 and unphased.json()["code"] == "needs_admin"


def test_read_only_fields_are_ignored(fleet, v2, operator_api):
    release = create_release(operator_api, v2).json()["id"]
    response = create_deployment(
        operator_api, release, status="completed", current_phase=1, target_count=1
    )
    body = response.json()
    assert body["status"] == "running" and body["current_phase"] == 0
    assert body["target_count"] == 10
