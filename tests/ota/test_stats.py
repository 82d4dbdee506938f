"""The numbers the gates judge: the worst (version, profile) latency group, in a fixed
number of queries however many groups a phase has."""

from __future__ import annotations

import pytest
from django.utils import timezone

from devices.models import HardwareProfile, LatencyBaseline
from ota import services, stats
from ota.choices import UpdateState
from ota.gates import PhaseStats
from tests.ota.conftest import enroll, finish, telemetry

pytestmark = pytest.mark.django_db


def test_latency_judges_the_worst_group_in_two_queries(
    enrollment, v2, admin_user, django_assert_num_queries
):
    pis = [enroll(enrollment, f"pi-{i}", profile="rpi4")[0] for i in range(2)]
    gateways = [enroll(enrollment, f"gw-{i}", profile="x86-gateway-2c")[0] for i in range(2)]
    release = services.create_release(
        name="v2", variants=[{"name": "fp32", "model_version": v2.pk}], actor=admin_user
    )
    deployment = services.start_deployment(
        release, {"tags": ["cam"]}, actor=admin_user, phases=[100], gates={}
    )
    for update in deployment.updates.all():
        finish(update)
    label = f"{v2.model.name}:{v2.number}"
    gateway = HardwareProfile.objects.get(slug="x86-gateway-2c")
    LatencyBaseline.objects.create(model_version=label, hardware_profile=gateway, p95_ms=4.0)
    for device in pis:
        telemetry(device, label, [12.0] * 5)  # 1.2x its estimate of 10 ms
    for device in gateways:
        telemetry(device, label, [8.0] * 5)  # 2x its baseline of 4 ms: the worst
    updates = deployment.updates.filter(phase=0)
    assert updates.filter(state=UpdateState.SUCCEEDED).count() == 4
    judged = PhaseStats(targeted=4)
    with django_assert_num_queries(2):
        stats._latency(judged, updates)
    assert (judged.p95_latency_ms, judged.latency_samples, judged.estimate_p95_ms) == (8.0, 10, 4.0)
    assert stats.phase_stats(deployment, 0, timezone.now()).estimate_p95_ms == 4.0
