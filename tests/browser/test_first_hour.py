"""The first hour with EdgeFleet, in a browser: `make run` on a fresh checkout's
defaults, log in with the printed admin account, watch the demo rollout complete by
itself, find the installed version everywhere, Ctrl-C, `make run` again: the same
five devices come back without enrolling again."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from tests.browser.demo import DemoRun, load_scale, wait_for

DEVICES = 5
SOAK_S = 10  # the demo rollout's soak per phase (DEMO_SOAK_S; 30 s by default)

SERVER_ERROR = re.compile(r'"[A-Z]+ (\S+) HTTP/1\.1" 5\d\d')

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture
def demo(tmp_path):
    run = DemoRun(tmp_path / "var", devices=DEVICES, soak_s=SOAK_S)
    yield run
    run.kill()


def _deployment_url(page, demo: DemoRun) -> str | None:
    page.goto(f"{demo.url}/deployments/")
    link = page.locator("#deployments a").first
    return link.get_attribute("href") if link.count() else None


def _devices(page, demo: DemoRun) -> dict[str, dict]:
    answer = page.request.get(f"{demo.url}/api/v1/devices/?page_size=100")
    assert answer.ok, answer.status
    body = answer.json()
    rows = body["results"] if isinstance(body, dict) else body
    return {row["uid"]: row for row in rows}


def test_first_hour(page, demo):
    scale = load_scale()
    demo.start()
    # migrate + a real compression job of the demo model (45 s budget) + startup
    demo.wait_ready(timeout=600 * scale)
    demo.log_in(page)

    # The demo rollout starts once the devices enrolled, and completes by itself.
    path = wait_for(lambda: _deployment_url(page, demo), 300 * scale, "the demo deployment", demo)
    page.goto(demo.url + path)
    page.wait_for_selector(
        "#deployment-status[data-status=completed]", timeout=600_000 * scale
    )  # the live partial polls every 2 s and stops when done
    rows = page.locator("#device-updates tbody tr")
    assert rows.count() == DEVICES
    versions = set(page.locator("#device-updates tbody tr td:nth-child(5)").all_inner_texts())
    assert len(versions) == 1, versions
    version = versions.pop()
    assert re.fullmatch(r"digits-cnn:\d+", version), version
    assert version != "digits-cnn:1"  # the factory model: the chosen variant was installed
    states = page.locator("#device-updates tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.state)"
    )
    assert states == ["succeeded"] * DEVICES

    # The inventory agrees everywhere: device list, each device page, the home chart.
    page.goto(f"{demo.url}/devices/list/")
    table = page.locator("#device-table tbody tr")
    assert table.count() == DEVICES
    assert set(page.locator("#device-table tbody td:nth-child(5)").all_inner_texts()) == {version}
    uids = page.locator("#device-table tbody td:first-child a").all_inner_texts()
    for uid in uids:
        page.goto(f"{demo.url}/devices/d/{uid}/")
        assert page.locator("#inventory dd.mono").first.inner_text() == version, uid
    page.goto(f"{demo.url}/devices/list/?model_version={version}")
    assert page.locator("#device-table tbody tr").count() == DEVICES
    page.goto(f"{demo.url}/")
    page.wait_for_selector("canvas[data-chart=by_version][data-ready]")
    charts = json.loads(page.locator("#fleet-chart-data").text_content())
    assert charts["by_version"] == {"labels": [version], "counts": [DEVICES]}
    before = _devices(page, demo)
    assert sorted(before) == sorted(uids)

    # Ctrl-C stops web, worker and devices; the whole run is gone.
    elapsed = demo.stop(timeout=120 * scale)
    first = demo.log.read_text(errors="replace")
    assert "still running after" not in first, "a child needed SIGKILL: " + demo.log_tail(1500)
    print(f"make run stopped in {elapsed:.1f} s")
    restarted = datetime.now().astimezone()

    # `make run` again: the same devices come back, none enrolls again.
    demo.start()
    demo.wait_ready(timeout=300 * scale)
    page.goto(f"{demo.url}/")  # the session survived: its secret key is kept in the var dir
    assert page.url == f"{demo.url}/", page.url

    def all_back():
        rows = _devices(page, demo)
        seen = [r["last_seen"] for r in rows.values() if r["last_seen"]]
        fresh = len(seen) == DEVICES and all(
            datetime.fromisoformat(s) > restarted for s in seen
        )  # fmt: skip
        return rows if fresh else None

    after = wait_for(all_back, 300 * scale, "the devices to check in again", demo)
    assert sorted(after) == sorted(before)
    assert {uid: r["created_at"] for uid, r in after.items()} == {
        uid: r["created_at"] for uid, r in before.items()
    }
    assert {r["model_version"] for r in after.values()} == {version}
    page.goto(f"{demo.url}/")
    page.wait_for_selector("#overview .stat")
    assert re.search(rf"\b{DEVICES} / {DEVICES} online", page.inner_text("#overview"))
    second = demo.log.read_text(errors="replace")
    assert "/api/v1/device/enroll" not in second, "a device enrolled again after the restart"
    for log in (first, second):
        assert not SERVER_ERROR.findall(log), SERVER_ERROR.findall(log)[:5]
