"""An operator creates a release, deploys it in phases through the wizard, devices
report over HTTP, the gate pauses the rollout with its reason, one click rolls back."""

from __future__ import annotations

import os

import pytest
import requests

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _seed_profiles():
    import importlib

    from django.apps import apps

    importlib.import_module("devices.migrations.0002_seed_hardware_profiles").seed(apps, None)


def test_release_wizard_gate_pause_and_rollback(
    page, live_server, login, operator_user, admin_user, tmp_path
):
    from devices import services as fleet
    from ota import services
    from ota.models import Deployment
    from tests.ota.conftest import make_version, telemetry

    _seed_profiles()
    v1, v2 = make_version(seed=1, p95=10.0), make_version(seed=2, p95=10.0)
    _token_row, enroll_token = fleet.create_enrollment_token(
        name="b", actor=admin_user, tags=["cam"]
    )
    tokens = {}
    for i in range(10):
        device, token = fleet.enroll(
            enroll_token,
            {
                "uid": f"cam-{i}",
                "hardware_profile": "rpi4",
                "models": {"default": {"model_version": "digits:1", "sha256": v1.sha256}},
            },
        )
        tokens[device.uid] = token

    login(operator_user, "pw-oscar-operator")
    page.goto(f"{live_server.url}/deployments/releases/new/?version={v2.pk}")
    page.fill("#id_name", "digits v2 canary")
    page.click("#release-form button[type=submit]")
    page.click("#deploy-release")
    page.fill("#id_tags", "cam")
    page.fill("#id_phases", "20, 100")
    page.fill("#id_min_latency_samples", "3")
    page.wait_for_selector("#preview-phases")
    page.wait_for_function(  # the preview follows the form (debounced): phase 1 = 20 % = 2
        "document.querySelector('#preview-phases tbody tr:first-child')?.innerText"
        ".replace(/\\s+/g, ' ').trim() === '1 20 2'"
    )
    assert "10" in page.inner_text("#preview-total")
    page.click("#start-deployment")
    page.wait_for_selector("#deployment-status[data-status=running]")
    deployment = Deployment.objects.get()
    assert deployment.target_count == 10

    # The two canaries check in, install and run the new version 3× slower than estimated.
    api = f"{live_server.url}/api/v1/device"
    canaries = deployment.updates.exclude(state="queued").select_related("device")
    for update in canaries:
        headers = {"Authorization": f"Bearer {tokens[update.device.uid]}"}
        manifest = requests.get(f"{api}/update", headers=headers, timeout=10).json()["manifest"]
        for state in ("downloading", "downloaded", "installing", "succeeded"):
            sent = requests.post(
                f"{api}/update/status",
                headers=headers,
                timeout=10,
                json={
                    "deployment": manifest["deployment"],
                    "manifest_version": manifest["version"],
                    "slot": manifest["slot"],
                    "state": state,
                },
            )
            assert sent.status_code == 200, sent.text
        telemetry(update.device, "digits:2", [30.0, 32.0, 31.0, 29.0])
    # The live partial polls while the deployment runs: progress shows up by itself.
    page.wait_for_function(
        "document.querySelector('#state-counts [data-state=succeeded]') !== null"
    )
    assert services.evaluate_deployments()[deployment.pk] == "paused"  # the beat task's body
    page.reload()
    reason = page.inner_text("#pause-reason")
    assert "p95 latency" in reason and "estimate 10.0 ms" in reason
    assert "fail" in page.inner_text("#gate-verdict")
    assert "≤ 1.5×" in page.inner_text("#gate-values")
    page.wait_for_function("document.getElementById('latency-chart').dataset.ready === '1'")
    limit = page.evaluate("Chart.getChart('latency-chart').data.datasets[2].data[0]")
    assert limit == 15.0
    assert page.locator("#device-updates tbody tr").count() == 10
    page.screenshot(
        path=os.environ.get("EDGEFLEET_SCREENSHOT", str(tmp_path / "deployment.png")),
        full_page=True,
    )

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#action-rollback")
    page.wait_for_selector("text=rollback of")
    back = Deployment.objects.get(kind="rollback")
    assert page.url.endswith(f"/deployments/{back.pk}/")
    first = canaries[0].device.uid
    manifest = requests.get(
        f"{api}/update", timeout=10, headers={"Authorization": f"Bearer {tokens[first]}"}
    ).json()["manifest"]
    assert manifest["artifacts"][0]["sha256"] == v1.sha256

    # The device page can embed this device's update history.
    page.goto(f"{live_server.url}/deployments/device/{canaries[0].device_id}/updates/")
    history = page.inner_text("#device-update-history")
    assert "Superseded" in history or "Cancelled" in history or "Succeeded" in history
    assert "digits:1" in history
