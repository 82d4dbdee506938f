"""Rollout guards an operator cannot talk past: gate settings are type-checked
when the deployment is created, one broken deployment cannot stop the gate
task for the others, and "fleet-wide needs admin" counts the devices reached
without a passing gate, however the phases are split."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from ota import services
from ota.choices import DeploymentStatus, UpdateState
from ota.models import Deployment
from tests.ota.conftest import finish

pytestmark = pytest.mark.django_db

NO_LATENCY = {"max_latency_ratio": None}


def uids(fleet, part):
    return [device.uid for device, _token in fleet[part]]


@pytest.mark.parametrize(
    ("gates", "field"),
    [
        ({"max_confidence_drop": "x"}, "gates[0].max_confidence_drop"),
        ({"max_failure_rate": "0.1"}, "gates[0].max_failure_rate"),
        ({"min_successful": True}, "gates[0].min_successful"),
        ({"min_soak_s": 1.5}, "gates[0].min_soak_s"),
        ({"max_latency_ratio": float("nan")}, "gates[0].max_latency_ratio"),
        ([NO_LATENCY, {"min_latency_samples": [3]}], "gates[1].min_latency_samples"),
        ([NO_LATENCY, "fast"], "gates[1].gates"),
    ],
)
def test_gate_values_are_type_checked_at_creation(fleet, release, operator_user, gates, field):
    with pytest.raises(services.OtaError) as exc:
        services.start_deployment(
            release, {"tags": ["cam"]}, actor=operator_user, phases=[10, 100], gates=gates
        )
    assert exc.value.status == 400 and exc.value.code == "bad_gates"
    assert exc.value.field == field
    assert not Deployment.objects.exists()


def test_gate_typo_is_a_400_naming_the_field(fleet, release, operator_api):
    response = operator_api.post(
        "/api/v1/deployments/",
        {
            "release": release.pk,
            "target": {"tags": ["cam"]},
            "phases": [10, 100],
            "gates": {"max_confidence_drop": "x"},
        },
        format="json",
    )
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "bad_gates" and body["field"] == "gates[0].max_confidence_drop"
    assert "max_confidence_drop" in body["detail"]
    ok = operator_api.post(
        "/api/v1/deployments/",
        {
            "release": release.pk,
            "target": {"tags": ["cam"]},
            "phases": [10, 100],
            "gates": {"max_confidence_drop": 0.05, "min_successful": 1.0},
        },
        format="json",
    )
    assert ok.status_code == 201, ok.content
    assert ok.json()["gates"][0]["min_successful"] == 1


def test_one_raising_deployment_does_not_stop_the_others(fleet, release, operator_user):
    # Written before gates were checked (or by hand): this deployment raises when judged.
    broken = services.start_deployment(
        release,
        {"devices": uids(fleet, slice(0, 5))},
        actor=operator_user,
        phases=[20, 100],
        gates=NO_LATENCY,
    )
    Deployment.objects.filter(pk=broken.pk).update(gates=[{"max_failure_rate": "x"}] * 2)
    healthy = services.start_deployment(
        release,
        {"devices": uids(fleet, slice(5, 10))},
        actor=operator_user,
        phases=[20, 100],
        gates=NO_LATENCY,
    )
    finish(healthy.updates.get(phase=0))
    pending = broken.updates.get(phase=0)
    assert pending.state == UpdateState.PENDING
    later = timezone.now() + timedelta(hours=settings.OTA_MANIFEST_TTL_H * 0.75)

    outcome = services.evaluate_deployments(now=later)

    assert outcome == {broken.pk: "error", healthy.pk: "advanced"}
    healthy.refresh_from_db()
    assert (
        healthy.current_phase == 1
        and healthy.updates.filter(state=UpdateState.PENDING).count() == 4
    )
    broken.refresh_from_db()
    assert broken.status == DeploymentStatus.RUNNING and broken.gate_report["verdict"] == "error"
    # the broken deployment's pending manifest was still re-signed before it expired
    resigned = broken.updates.get(pk=pending.pk)
    assert resigned.manifest_version > pending.manifest_version
    assert resigned.envelope["manifest"]["expires_at"] > pending.envelope["manifest"]["expires_at"]


def test_tiny_canary_then_approve_is_not_a_way_around_admin(
    fleet, release, operator_user, admin_user
):
    deployment = services.start_deployment(
        release, {"tags": ["cam"]}, actor=operator_user, phases=[0.0001, 100], gates=NO_LATENCY
    )
    assert deployment.ungated_count == 1  # one canary: an operator may start it
    with pytest.raises(services.OtaError) as exc:
        services.approve(deployment, actor=operator_user)  # 9 more with no gate
    assert exc.value.code == "needs_admin" and exc.value.status == 403
    deployment.refresh_from_db()
    assert deployment.current_phase == 0
    assert deployment.updates.exclude(state=UpdateState.QUEUED).count() == 1
    assert services.approve(deployment, actor=admin_user)
    assert deployment.current_phase == 1 and deployment.ungated_count == 10
    assert deployment.updates.filter(state=UpdateState.PENDING).count() == 10


def test_approve_through_the_api_refuses_an_operator(fleet, release, operator_api, admin_api):
    pk = operator_api.post(
        "/api/v1/deployments/",
        {
            "release": release.pk,
            "target": {"tags": ["cam"]},
            "phases": [0.0001, 100],
            "gates": NO_LATENCY,
        },
        format="json",
    ).json()["id"]
    refused = operator_api.post(f"/api/v1/deployments/{pk}/approve/")
    assert refused.status_code == 403 and refused.json()["code"] == "needs_admin"
    assert admin_api.post(f"/api/v1/deployments/{pk}/approve/").json()["current_phase"] == 1


def test_a_large_first_phase_needs_admin(fleet, release, operator_user, admin_user):
    with pytest.raises(services.OtaError) as exc:
        services.start_deployment(
            release, {"tags": ["cam"]}, actor=operator_user, phases=[50, 100], gates=NO_LATENCY
        )
    assert exc.value.code == "needs_admin"
    assert (
        services.start_deployment(
            release, {"tags": ["cam"]}, actor=admin_user, phases=[50, 100], gates=NO_LATENCY
        ).ungated_count
        == 5
    )


def test_ordinary_canary_stays_with_operators(fleet, release, operator_user):
    deployment = services.start_deployment(
        release, {"tags": ["cam"]}, actor=operator_user, phases=[10, 50, 100], gates=NO_LATENCY
    )
    finish(deployment.updates.get(phase=0))
    assert services.evaluate_deployment(deployment) == "advanced"  # the gate passed
    deployment.refresh_from_db()
    for update in deployment.updates.filter(phase=1):
        finish(update)
    # the gate passes anyway: approving now only saves waiting for the next tick
    assert services.approve(deployment, actor=operator_user)
    assert deployment.current_phase == 2 and deployment.ungated_count == 1
