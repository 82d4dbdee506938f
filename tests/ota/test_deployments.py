"""Rollout workflows: phases, gates (advance / auto-pause with reason), supersede,
abort, rollback, the idempotent gate task."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from ota import services
from ota.choices import DeploymentStatus, UpdateState
from ota.models import DeviceUpdate
from tests.conftest import bearer
from tests.ota.conftest import finish, make_version, telemetry

pytestmark = pytest.mark.django_db

NO_LATENCY = {"max_latency_ratio": None, "min_successful": 1}


def start(release, fleet, actor, phases=(10, 50, 100), gates=None, **kwargs):
    return services.start_deployment(
        release,
        {"tags": ["cam"]},
        actor=actor,
        phases=list(phases),
        gates=gates or NO_LATENCY,
        **kwargs,
    )


def start_in_two(release, fleet, actor, **gates):
    """Two phases, 20% then everyone, judged by `gates` only."""
    return start(release, fleet, actor, phases=(20, 100), gates=gates)


def assigned(deployment):
    return list(deployment.updates.exclude(state=UpdateState.QUEUED).select_related("device"))


def test_phases_assign_devices_in_steps(fleet, release, operator_user):
    deployment = start(release, fleet, operator_user)
    assert deployment.status == DeploymentStatus.RUNNING and deployment.target_count == 10
    first = assigned(deployment)
    assert len(first) == 1 and first[0].state == UpdateState.PENDING
    assert first[0].envelope["manifest"]["device"] == first[0].device.uid
    assert services.evaluate_deployments()[deployment.pk] == "wait"
    finish(first[0])
    assert services.evaluate_deployments()[deployment.pk] == "advanced"
    deployment.refresh_from_db()
    assert deployment.current_phase == 1 and len(assigned(deployment)) == 5
    for update in assigned(deployment):
        if update.state == UpdateState.PENDING:
            finish(update)
    assert services.evaluate_deployment(deployment) == "advanced"
    for update in assigned(deployment):
        if update.state == UpdateState.PENDING:
            finish(update)
    deployment.refresh_from_db()
    assert services.evaluate_deployment(deployment) == "completed"
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.COMPLETED
    assert services.state_counts(deployment)["succeeded"] == 10
    versions = [u.manifest_version for u in deployment.updates.all()]
    assert len(set(versions)) == 10


def test_gate_task_is_idempotent(fleet, release, operator_user):
    deployment = start(release, fleet, operator_user)
    finish(assigned(deployment)[0])
    stale = type(deployment).objects.get(pk=deployment.pk)  # a second worker's view
    assert services.evaluate_deployment(deployment) == "advanced"
    assert services.evaluate_deployment(stale) == "skipped"  # its claim touches no row
    deployment.refresh_from_db()
    assert deployment.current_phase == 1 and len(assigned(deployment)) == 5


def test_failure_rate_gate_pauses_with_reason(fleet, release, operator_user):
    deployment = start_in_two(
        release, fleet, operator_user, max_failure_rate=0.2, max_latency_ratio=None
    )
    one, two = assigned(deployment)
    finish(one, "failed", error="onnxruntime: bad op", error_code="health_check")
    finish(two)
    assert services.evaluate_deployments()[deployment.pk] == "paused"
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.PAUSED
    assert "install failure rate 50%" in deployment.pause_reason
    assert deployment.gate_report["verdict"] == "fail"
    assert len(assigned(deployment)) == 2  # nobody else got it
    assert services.evaluate_deployments() == {}  # paused: nothing judged


def test_latency_gate_pauses_on_device_regression(fleet, release, operator_user, v2):
    deployment = start_in_two(
        release, fleet, operator_user, max_latency_ratio=1.5, min_latency_samples=5
    )
    updates = assigned(deployment)
    for update in updates:
        finish(update)
    assert services.evaluate_deployment(deployment) == "wait"  # no telemetry yet
    deployment.refresh_from_db()
    assert "waiting for on-device latency telemetry" in deployment.gate_report["reasons"]
    for update in updates:
        telemetry(update.device, "digits:2", [30.0] * 10)  # estimate is 10 ms
    assert services.evaluate_deployment(deployment) == "paused"
    deployment.refresh_from_db()
    assert "p95 latency 30.0 ms is 3.0× the estimate 10.0 ms" in deployment.pause_reason
    assert deployment.gate_report["values"]["latency_ratio"] == 3.0


def test_latency_gate_passes_within_ratio(fleet, release, operator_user):
    deployment = start_in_two(
        release, fleet, operator_user, max_latency_ratio=1.5, min_latency_samples=5
    )
    for update in assigned(deployment):
        finish(update)
        telemetry(update.device, "digits:2", [9.0, 11.0, 12.0, 10.0, 10.5])
    assert services.evaluate_deployment(deployment) == "advanced"


def test_resume_after_pause_and_manual_approve(fleet, release, operator_user, admin_user):
    deployment = start(release, fleet, operator_user)
    assert services.pause(deployment, "looking at logs")
    assert deployment.status == DeploymentStatus.PAUSED
    assert not services.pause(deployment, "twice")
    assert services.resume(deployment) and deployment.status == DeploymentStatus.RUNNING
    assert services.approve(deployment, actor=admin_user)  # 5 of 10 devices with no gate
    assert deployment.current_phase == 1 and len(assigned(deployment)) == 5


def test_abort_cancels_unfinished_updates(fleet, release, operator_user):
    deployment = start(release, fleet, operator_user)
    pending = assigned(deployment)[0]
    client = bearer_for(pending.device, fleet)
    assert client.get("/api/v1/device/update").status_code == 200
    assert services.abort(deployment)
    counts = services.state_counts(deployment)
    assert counts["cancelled"] == 10 and counts["pending"] == 0
    assert client.get("/api/v1/device/update").status_code == 204


def bearer_for(device, fleet):
    return bearer(next(token for d, token in fleet if d.pk == device.pk))


def test_new_deployment_supersedes_pending_update(fleet, release, operator_user, admin_user):
    first = start(release, fleet, admin_user, phases=(100,))
    v3 = make_version(seed=3)
    newer = services.create_release(
        name="digits v3", variants=[{"name": "default", "model_version": v3.pk}]
    )
    second = start(newer, fleet, admin_user, phases=(100,))
    assert services.state_counts(first)["superseded"] == 10
    device, token = fleet[0]
    envelope = bearer(token).get("/api/v1/device/update").json()
    assert envelope["manifest"]["deployment"] == second.pk
    old = first.updates.get(device=device)
    assert envelope["manifest"]["version"] > old.manifest_version


def test_unphased_fleet_wide_needs_admin(fleet, release, operator_user, admin_user):
    with pytest.raises(services.OtaError) as exc:
        start(release, fleet, operator_user, phases=(100,))
    assert exc.value.code == "needs_admin" and exc.value.status == 403
    small = services.start_deployment(
        release, {"devices": [fleet[0][0].uid]}, actor=operator_user, phases=[100]
    )
    assert small.target_count == 1  # 10 % of the fleet: an operator may
    assert start(release, fleet, admin_user, phases=(100,)).target_count == 10


def test_bad_input_is_refused(fleet, release, operator_user):
    cases = [
        ({"tags": ["cam"]}, [50, 40, 100], {}),
        ({"tags": ["cam"]}, [10, 50], {}),
        ({"colour": ["red"]}, [100], {}),
        ({"tags": ["nobody"]}, [10, 100], {}),
        ({"tags": ["cam"]}, [10, 100], {"max_failure_rate": 3}),
        ({"tags": ["cam"]}, [10, 100], {"bogus": 1}),
    ]
    for target, phases, gates in cases:
        with pytest.raises(services.OtaError):
            services.start_deployment(
                release, target, actor=operator_user, phases=phases, gates=gates
            )
    with pytest.raises(services.OtaError):
        services.start_deployment(
            release,
            {"tags": ["cam"]},
            actor=operator_user,
            phases=[10, 100],
            install_window={"start": "25:00"},
        )


def test_scheduled_start_waits(fleet, release, operator_user):
    later = timezone.now() + timedelta(hours=1)
    deployment = start(
        release,
        fleet,
        operator_user,
        scheduled_at=later,
        install_window={"start": "01:00", "end": "04:00"},
    )
    assert deployment.status == DeploymentStatus.SCHEDULED and not assigned(deployment)
    services.evaluate_deployments(now=later + timedelta(seconds=1))
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.RUNNING
    update = assigned(deployment)[0]
    assert update.envelope["manifest"]["install_window"] == {"start": "01:00", "end": "04:00"}


def test_rollback_returns_touched_devices_to_previous_version(fleet, release, operator_user, v1):
    deployment = start_in_two(
        release, fleet, operator_user, max_failure_rate=0.0, max_latency_ratio=None
    )
    good, bad = assigned(deployment)
    finish(good)
    finish(bad, "failed", error="crash", error_code="health_check")
    assert services.evaluate_deployment(deployment) == "paused"
    deployment.refresh_from_db()
    back = services.rollback(deployment, actor=operator_user)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    assert services.state_counts(deployment)["cancelled"] == 8  # later phases never ran
    # Only the device that installed the new version is touched; the failed one runs v1.
    updates = list(back.updates.all())
    assert [u.device_id for u in updates] == [good.device_id]
    envelope = bearer_for(good.device, fleet).get("/api/v1/device/update").json()
    manifest = envelope["manifest"]
    assert manifest["deployment"] == back.pk and manifest["version"] > good.manifest_version
    assert manifest["artifacts"][0]["sha256"] == v1.sha256
    assert manifest["artifacts"][0]["model_version"] == "digits:1"
    # The device can fetch the old artifact and reports success: the rollback completes.
    # 200 from local storage, 302 to a presigned URL on S3 (CI)
    assert bearer_for(good.device, fleet).get(
        f"/api/v1/device/artifacts/{v1.sha256}"
    ).status_code in (200, 302)
    finish(updates[0])
    assert services.evaluate_deployment(back) == "completed"
    with pytest.raises(services.OtaError):
        services.rollback(deployment, actor=operator_user)


def test_variant_per_hardware_profile_and_policy(enrollment, v1, v2, admin_user):
    from tests.ota.conftest import enroll

    int8 = make_version(seed=4)
    release = services.create_release(
        name="multi",
        variants=[
            {"name": "fp32", "model_version": v2.pk},
            {"name": "fp32", "model_version": v2.pk, "hardware_profile": "rpi4"},
            {"name": "int8", "model_version": int8.pk, "hardware_profile": "rpi4"},
        ],
        default_variant="fp32",
        policy={"rules": [{"when": {"battery_pct": {"lt": 20}}, "use": "int8"}], "default": "fp32"},
    )
    _pi, _t = enroll(enrollment, "pi", profile="rpi4")
    _gw, _t = enroll(enrollment, "gw", profile="x86-gateway-2c")
    deployment = services.start_deployment(
        release, {"devices": ["pi", "gw"]}, actor=admin_user, phases=[50, 100]
    )
    services.approve(deployment, actor=admin_user)
    by_uid = {u.device.uid: u.envelope["manifest"] for u in assigned(deployment)}
    assert {a["name"] for a in by_uid["pi"]["artifacts"]} == {"fp32", "int8"}
    assert by_uid["pi"]["policy"]["rules"][0]["use"] == "int8"
    assert [a["name"] for a in by_uid["gw"]["artifacts"]] == ["fp32"]
    assert by_uid["gw"]["policy"] == {"rules": [], "default": "fp32"}
    with pytest.raises(services.OtaError):
        services.create_release(
            name="bad policy",
            variants=[{"name": "fp32", "model_version": v2.pk}],
            policy={"rules": [{"when": {"moon_phase": {"eq": 1}}, "use": "fp32"}]},
        )


def test_key_rotation_is_announced_in_manifests(fleet, release, admin_user):
    from ota import keys
    from ota.keys import _new_key

    keys.active_key()
    upcoming = _new_key()
    upcoming.active = False
    upcoming.save()
    deployment = start(release, fleet, admin_user, phases=(100,))
    manifest = assigned(deployment)[0].envelope["manifest"]
    assert manifest["next_key"]["public_key"] == upcoming.public_key_b64


def test_update_history_partial_lists_device_updates(fleet, release, operator_user, client):
    deployment = start(release, fleet, operator_user)
    update = assigned(deployment)[0]
    client.force_login(operator_user)
    response = client.get(f"/deployments/device/{update.device_id}/updates/")
    assert response.status_code == 200
    assert str(update.manifest_version) in response.content.decode()
    assert DeviceUpdate.objects.filter(device=update.device).count() == 1


def test_pending_manifests_are_re_signed_before_they_expire(fleet, release, operator_user):
    deployment = start(release, fleet, operator_user)
    update = assigned(deployment)[0]
    old = update.envelope["manifest"]
    DeviceUpdate.objects.filter(pk=update.pk).update(assigned_at=timezone.now() - timedelta(days=4))
    services.evaluate_deployments(now=timezone.now() + timedelta(hours=1))
    update.refresh_from_db()
    new = update.envelope["manifest"]
    assert new["version"] > old["version"] and new["expires_at"] > old["expires_at"]
    assert update.state == UpdateState.PENDING
    assert services.refresh_manifests() == 0  # fresh now: nothing to do


def test_confidence_gate_pauses_when_accuracy_proxy_drops(fleet, release, operator_user):
    deployment = start_in_two(
        release, fleet, operator_user, max_latency_ratio=None, max_confidence_drop=0.05
    )
    updates = assigned(deployment)
    for update in updates:  # before the update: v1 answers with confidence ≈ 0.9
        telemetry(update.device, "digits:1", [10.0] * 5, extra={"confidence": 0.9})
    for update in updates:
        DeviceUpdate.objects.filter(pk=update.pk).update(
            assigned_at=timezone.now() + timedelta(seconds=1)
        )
        finish(update)
    for update in updates:
        from devices import services as fleet_services

        fleet_services.ingest_telemetry(
            update.device,
            [
                {
                    "seq": 100 + i,
                    "boot_id": "b2",
                    "ts": timezone.now().timestamp() + 2,
                    "model_version": "digits:2",
                    "latency_ms": 10.0,
                    "extra": {"confidence": 0.7},
                }
                for i in range(5)
            ],
        )
    assert services.evaluate_deployment(deployment) == "paused"
    deployment.refresh_from_db()
    assert "mean confidence dropped by 0.200" in deployment.pause_reason


def test_gate_decisions_are_counted(fleet, release, operator_user):
    from fleet.prometheus import REGISTRY

    def counted(decision):
        return (
            REGISTRY.get_sample_value("edgefleet_gate_decisions_total", {"decision": decision})
            or 0.0
        )

    deployment = start(release, fleet, operator_user)
    waits, advances = counted("wait"), counted("advanced")
    assert services.evaluate_deployments()[deployment.pk] == "wait"
    finish(assigned(deployment)[0])
    assert services.evaluate_deployments()[deployment.pk] == "advanced"
    assert (counted("wait"), counted("advanced")) == (waits + 1, advances + 1)
