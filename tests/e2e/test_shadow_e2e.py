"""Shadow mode end to end: real agents (onnxruntime) against the real server over
HTTP. A candidate that disagrees with the active model is never switched to and
the "min shadow agreement" gate pauses the deployment with the reason; one that
agrees is switched to and the deployment completes."""

from __future__ import annotations

import pytest

from tests.conftest import seed_hardware_profiles, tiny_model_bytes
from tests.e2e.test_agent_ota_e2e import (
    active_sha,
    deploy,
    enroll_agents,
    run_all,
    stored_version,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SHADOW = {"inferences": 40, "min_agreement": 0.9}
GATES = [{"min_shadow_agreement": 0.9, "max_failure_rate": 1.0, "max_latency_ratio": None}]


def same_function(data: bytes) -> bytes:
    """Other bytes (another sha256), the same computation."""
    import onnx

    model = onnx.load_from_string(data)
    model.producer_name = "edgefleet-tests-rebuilt"
    return model.SerializeToString()


def test_disagreeing_candidate_stays_out_and_pauses_agreeing_one_switches(
    live_server, admin_user, tmp_path
):
    from devices import services as devices_services
    from ota import services

    seed_hardware_profiles()  # a transactional test starts with none; agents name rpi4

    token = devices_services.create_enrollment_token(name="shadow")[1]
    states = enroll_agents(live_server, token, tmp_path, 2)
    uids = [s.uid for s in states]
    first = stored_version("shadowed", tiny_model_bytes(1), p95=1000.0)
    deploy(first, uids, admin_user)
    run_all(states)
    assert all(active_sha(s) == first.sha256 for s in states)

    other = stored_version("shadowed", tiny_model_bytes(2), p95=1000.0)  # other weights
    rejected = deploy(other, uids, admin_user, phases=[100], gates=GATES, shadow=SHADOW)
    assert rejected.shadow == {"inferences": 40, "seconds": None, "min_agreement": 0.9}
    run_all(states)
    assert all(active_sha(s) == first.sha256 for s in states)  # never switched
    for update in rejected.updates.all():
        assert (update.state, update.error_code) == ("failed", "shadow_agreement")
        assert update.shadow["agreement"] < 0.9 and update.shadow["inferences"] == 40
        assert update.shadow["candidate_p50_ms"] > 0 and update.shadow["active_p50_ms"] > 0
    assert services.evaluate_deployment(rejected) == "paused"
    rejected.refresh_from_db()
    assert rejected.status == "paused" and "shadow agreement" in rejected.pause_reason
    assert "< 0.9" in rejected.pause_reason

    agreeing = stored_version("shadowed", same_function(tiny_model_bytes(1)), p95=1000.0)
    accepted = deploy(agreeing, uids, admin_user, phases=[100], gates=GATES, shadow=SHADOW)
    run_all(states)
    assert all(active_sha(s) == agreeing.sha256 for s in states)
    for update in accepted.updates.all():
        assert update.state == "succeeded" and update.shadow["agreement"] == 1.0
    assert services.evaluate_deployment(accepted) == "completed"
