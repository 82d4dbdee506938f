"""Shadow mode on the server: the request is checked when the deployment is created
and signed into manifests, device reports are kept bounded, and the "min shadow
agreement" gate pauses with the reason."""

from __future__ import annotations

import pytest

from ota import services
from ota.gates import GateConfig, GateError, PhaseStats, Verdict, evaluate
from ota.models import Deployment
from tests.ota.conftest import finish

pytestmark = pytest.mark.django_db
SHADOW = {"inferences": 20, "min_agreement": 0.9}


def post(api, release, **fields):
    body = {"release": release.pk, "target": {"devices": ["cam-00"]}, "phases": [100], **fields}
    return api.post("/api/v1/deployments/", body, format="json")


@pytest.mark.parametrize(
    "shadow",
    [[1], "yes", {"inferences": 0}, {"min_agreement": 1.5}, {"seconds": True}, {"inferences": "5"}],
)
def test_a_bad_shadow_request_is_a_400(fleet, release, operator_api, shadow):
    response = post(operator_api, release, shadow=shadow)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "bad_shadow"
    assert not Deployment.objects.exists()


def test_a_bad_agreement_gate_is_a_400(fleet, release, operator_api):
    response = post(operator_api, release, gates=[{"min_shadow_agreement": 2}])
    assert response.status_code == 400 and response.json()["code"] == "bad_gates"
    response = post(operator_api, release, gates=[{"min_shadow_agreement": "high"}])
    assert response.status_code == 400 and response.json()["code"] == "bad_gates"


def test_viewers_cannot_start_a_shadowed_deployment(fleet, release, viewer_api, anon_api):
    assert post(viewer_api, release, shadow=SHADOW).status_code == 403
    assert post(anon_api, release, shadow=SHADOW).status_code == 401


def test_the_request_is_signed_into_the_manifest_and_shown(fleet, release, operator_api):
    response = post(operator_api, release, shadow=SHADOW)
    assert response.status_code == 201, response.content
    assert response.json()["shadow"] == {"inferences": 20, "seconds": None, "min_agreement": 0.9}
    update = Deployment.objects.get().updates.get()
    assert update.envelope["manifest"]["shadow"] == response.json()["shadow"]
    plain = post(operator_api, release)
    assert plain.status_code == 201 and plain.json()["shadow"] is None


def test_reports_are_kept_bounded_and_the_gate_pauses(fleet, release, operator_user):
    deployment = services.start_deployment(
        release,
        {"devices": ["cam-00", "cam-01"]},
        actor=operator_user,
        phases=[100],
        gates=[{"min_shadow_agreement": 0.9, "max_failure_rate": 1.0, "max_latency_ratio": None}],
        shadow=SHADOW,
    )
    low, high = deployment.updates.order_by("device__uid")
    finish(
        low,
        "failed",
        error_code="shadow_agreement",
        shadow={
            "agreement": 0.4,
            "inferences": 20,
            "metric": "top1_agreement" * 20,
            "active_p50_ms": float("inf"),
            "junk": {"deep": [1]},
        },
    )
    finish(high, shadow={"agreement": 1.0, "inferences": 20, "passed": True})
    low.refresh_from_db()
    assert low.shadow == {
        "agreement": 0.4,
        "inferences": 20,
        "metric": ("top1_agreement" * 20)[:60],
    }
    assert services.evaluate_deployment(deployment) == "paused"
    deployment.refresh_from_db()
    assert "shadow agreement 0.400 < 0.9 on device cam-00 (2 devices shadowed)" in (
        deployment.pause_reason
    )
    # A report without an agreement keeps nothing.
    assert services._shadow_report({"inferences": 3}) is None
    assert services._shadow_report("high") is None


def test_gate_function():
    config = GateConfig.from_dict({"min_shadow_agreement": 0.8, "max_latency_ratio": None})
    waiting = evaluate(config, PhaseStats(targeted=1, succeeded=1))
    assert waiting.verdict == Verdict.PASS  # no shadow report: nothing to judge
    bad = PhaseStats(
        targeted=1,
        succeeded=1,
        shadow_reports=1,
        shadow_min_agreement=0.5,
        shadow_worst_device="d1",
    )
    decision = evaluate(config, bad)
    assert decision.verdict == Verdict.FAIL and decision.codes[0]["code"] == "shadow_agreement"
    with pytest.raises(GateError):
        GateConfig.from_dict({"min_shadow_agreement": -0.1})
