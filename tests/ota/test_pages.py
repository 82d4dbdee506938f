"""Server-rendered rollout pages: roles, forms, actions, partials."""

from __future__ import annotations

import pytest

from ota import services
from ota.choices import DeploymentStatus
from ota.models import Deployment, Release
from tests.ota.conftest import WIZARD_FORM, finish, telemetry

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(fleet, release, operator_user):
    return services.start_deployment(
        release,
        {"tags": ["cam"]},
        actor=operator_user,
        phases=[20, 100],
        gates={"max_latency_ratio": 1.5, "min_latency_samples": 3},
    )


def test_pages_render_for_viewer(client, viewer_user, deployment):
    client.force_login(viewer_user)
    for url in (
        "/deployments/",
        "/deployments/widget/",
        f"/deployments/{deployment.pk}/",
        f"/deployments/{deployment.pk}/live/",
        f"/deployments/releases/{deployment.release_id}/",
        "/",
    ):
        response = client.get(url)
        assert response.status_code == 200, url
    assert client.get("/deployments/new/").status_code == 403
    assert client.get("/deployments/releases/new/").status_code == 403
    assert client.post(f"/deployments/{deployment.pk}/pause/").status_code == 403


def test_anonymous_is_sent_to_login(client, deployment):
    assert client.get(f"/deployments/{deployment.pk}/").status_code == 302
    assert (
        client.get(
            f"/deployments/device/{deployment.updates.first().device_id}/updates/"
        ).status_code
        == 302
    )


def test_release_form_creates_release(client, operator_user, v2):
    client.force_login(operator_user)
    page = client.get(f"/deployments/releases/new/?version={v2.pk}")
    assert f'value="{v2.pk}" selected' in page.content.decode()
    response = client.post(
        "/deployments/releases/new/",
        {
            "name": "from page",
            "slot": "default",
            "default_variant": "default",
            "variant_0_name": "default",
            "variant_0_version": v2.pk,
            "policy": "",
        },
    )
    assert response.status_code == 302
    assert Release.objects.get(name="from page").variants.count() == 1
    bad = client.post(
        "/deployments/releases/new/",
        {
            "name": "bad",
            "slot": "default",
            "default_variant": "default",
            "variant_0_version": v2.pk,
            "policy": "{not json",
        },
    )
    assert bad.status_code == 400 and "Not JSON" in bad.content.decode()


def test_wizard_preview_and_start(client, operator_user, fleet, release):
    client.force_login(operator_user)
    form = {**WIZARD_FORM, "release": release.pk}
    preview = client.post("/deployments/preview/", form).content.decode()
    assert "10" in preview and 'id="preview-phases"' in preview
    bad = client.post("/deployments/preview/", {**form, "phases": "50, 10"}).content.decode()
    assert "preview-error" in bad
    response = client.post("/deployments/new/", form)
    assert response.status_code == 302
    deployment = Deployment.objects.get()
    assert deployment.phases == [10, 50, 100] and deployment.target_count == 10


def test_action_buttons_and_rollback(client, operator_user, deployment):
    client.force_login(operator_user)
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'id="action-pause"' in page and 'id="action-rollback"' in page
    client.post(f"/deployments/{deployment.pk}/pause/")
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.PAUSED
    client.post(f"/deployments/{deployment.pk}/resume/")
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.RUNNING
    for update in deployment.updates.exclude(state="queued"):
        finish(update)
    response = client.post(f"/deployments/{deployment.pk}/rollback/")
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    assert response["Location"] == f"/deployments/{deployment.rollbacks.get().pk}/"


def test_gate_values_and_chart(client, viewer_user, deployment):
    for update in deployment.updates.exclude(state="queued"):
        finish(update)
        telemetry(update.device, "digits:2", [30.0, 31.0, 29.0])
    services.evaluate_deployments()
    client.force_login(viewer_user)
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'id="pause-reason"' in page and "3.1× the estimate" in page
    chart = client.get(f"/deployments/{deployment.pk}/chart.json").json()
    assert chart["estimate"] == 10.0 and chart["limit"] == 15.0 and chart["p95"]


def _live(client, deployment) -> str:
    response = client.get(f"/deployments/{deployment.pk}/live/")
    assert response.status_code == 200
    return response.content.decode()


def test_live_partial_tells_one_state(client, operator_user, deployment):
    """Status, buttons, chart data and device rows come from one response, so they agree."""
    client.force_login(operator_user)
    running = _live(client, deployment)
    assert 'data-status="running"' in running and 'id="action-pause"' in running
    assert 'id="action-resume"' not in running and 'hx-trigger="every 2s"' in running
    assert 'id="latency-data"' in running and 'id="device-updates"' in running
    client.post(f"/deployments/{deployment.pk}/pause/", {"reason": "lunch"})
    paused = _live(client, deployment)
    assert 'id="action-resume"' in paused and 'id="action-pause"' not in paused
    assert ">Paused<" in paused and "lunch" in paused
    assert 'hx-trigger="every 2s"' in paused  # devices already updating still report
    client.post(f"/deployments/{deployment.pk}/resume/")
    deployment.refresh_from_db()
    for update in deployment.updates.exclude(state="queued"):
        finish(update)
    rows = _live(client, deployment)
    assert (
        rows.count('data-state="succeeded"')
        == deployment.updates.filter(state="succeeded").count() + 1
    )  # the rows and the state-count badge
    client.post(f"/deployments/{deployment.pk}/abort/")
    over = _live(client, deployment)
    assert ">Aborted<" in over and "hx-trigger" not in over and 'id="action-abort"' not in over


def test_gate_reason_and_target_in_the_readers_language(client, viewer_user, deployment):
    for update in deployment.updates.exclude(state="queued"):
        finish(update)
        telemetry(update.device, "digits:2", [30.0, 31.0, 29.0])
    services.evaluate_deployments()
    deployment.refresh_from_db()
    assert deployment.gate_report["reason_codes"][0]["code"] == "latency_ratio"
    client.force_login(viewer_user)
    client.cookies["django_language"] = "zh-hans"
    page = client.get(f"/deployments/{deployment.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    text = page.content.decode()
    assert "on-device p95 latency" not in text and "3.1×" in text
    assert "已暂停" in text or "暂停" in text


def test_preview_names_phases_that_add_no_device(client, operator_user, fleet):
    client.force_login(operator_user)
    form = {
        "tags": "cam",
        "phases": "1, 5, 100",
        "max_failure_rate": "0.2",
        "min_successful": "1",
        "min_latency_samples": "3",
        "min_soak_s": "0",
    }
    text = client.post("/deployments/preview/", form).content.decode()
    assert 'id="preview-empty"' in text and "Phase 2 adds no device" in text
    bad = client.post("/deployments/preview/", {**form, "phases": "50, 10, 100"})
    assert "phase percentages must increase" in bad.content.decode()


def test_widget_counts_running_and_paused_apart(client, viewer_user, operator_user, deployment):
    services.pause(deployment, "x")
    client.force_login(viewer_user)
    text = client.get("/deployments/widget/").content.decode()
    assert "running" not in text.split('id="rollouts"')[0] and "paused" in text
    assert text.count('class="progress"') == 2  # one bar per phase
