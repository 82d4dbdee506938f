"""An admin creates an enrollment token; a device enrolls and reports; its chart shows it."""

from __future__ import annotations

import os
import time

import pytest
import requests

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_enroll_report_and_see_the_chart(page, live_server, login, admin_user, tmp_path):
    login(admin_user, "pw-alice-admin")
    page.goto(f"{live_server.url}/devices/enrollment/")
    page.fill("#id_name", "browser batch")
    page.fill("#id_tags", "lab")
    page.click("#token-form button[type=submit]")
    token = page.inner_text("#new-token-value").strip()
    assert token.startswith("efe_")

    api = f"{live_server.url}/api/v1/device"
    enrolled = requests.post(
        f"{api}/enroll",
        json={
            "token": token,
            "facts": {
                "uid": "browser-cam",
                "arch": "aarch64",
                "cpu": "Cortex-A72",
                "models": {"default": {"model_version": "digits:1"}},
            },
        },
        timeout=10,
    )
    assert enrolled.status_code == 201, enrolled.text
    headers = {"Authorization": f"Bearer {enrolled.json()['token']}"}
    now = time.time()
    batch = [
        {
            "seq": i,
            "boot_id": "b1",
            "ts": now - 120 + i,
            "latency_ms": 20 + i % 5,
            "throughput": 40.0,
            "mem_mb": 200.0,
            "cpu_pct": 35.0,
            "temp_c": 51.5,
            "battery_pct": 80.0,
            "model_version": "digits:1",
        }
        for i in range(120)
    ]
    posted = requests.post(f"{api}/telemetry", json={"batch": batch}, headers=headers, timeout=10)
    assert posted.status_code == 200 and posted.json()["count"] == 120

    page.goto(f"{live_server.url}/devices/")
    page.click("text=All devices")
    page.click("text=browser-cam")
    page.wait_for_function("document.getElementById('charts').dataset.points !== '0'")
    p95 = page.evaluate("Chart.getChart('chart-latency').data.datasets[1].data")
    assert [v for v in p95 if v is not None], p95
    assert max(v for v in p95 if v is not None) >= 20
    temps = page.evaluate("Chart.getChart('chart-temperature').data.datasets[0].data")
    assert 51.5 in temps
    assert "Cortex-A72" in page.inner_text("#inventory")
    assert "lab" in page.inner_text("#device-tags")
    page.screenshot(
        path=os.environ.get("EDGEFLEET_SCREENSHOT", str(tmp_path / "device.png")), full_page=True
    )
