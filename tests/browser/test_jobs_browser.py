"""A person starts an auto compression job from the browser and gets the chosen variant.

The job runs on a real Celery worker process that shares the test database,
the media directory and the broker the live server enqueues to.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from playwright.sync_api import Error as PlaywrightError

from compression.choices import JobStatus
from compression.models import CompressionJob
from devices.models import HardwareProfile
from tests.compression.jobs_support import WorkerPool, live_worker_env, load_demo

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def worker(tmp_path, settings):
    # slow enough that the page sees the progress bar move
    env = live_worker_env(tmp_path, settings, ("compression",), EDGEFLEET_JOB_TEST_HOOK="slow:0.3")
    pool = WorkerPool(tmp_path, env)
    pool.start("browser")
    yield pool
    pool.stop_all()


def test_start_auto_job_watch_it_and_download_the_choice(
    page, live_server, login, operator_user, worker, tmp_path
):
    demo = load_demo()
    profile, _ = HardwareProfile.objects.get_or_create(
        slug="x86-gateway-1c", defaults={"name": "x86 gateway, 1 core", "arch": "x86_64"}
    )
    login(operator_user, "pw-oscar-operator")
    page.goto(f"{live_server.url}/models/{demo.version.model_id}/")
    page.click("text=Compress…")
    page.check("input[name=mode][value=auto]")
    page.fill("#id_max_latency_ms", "50")
    page.fill("#id_max_accuracy_drop", "1")
    page.select_option("#id_hardware_profile", value=str(profile.pk))
    page.click("#job-form button[type=submit]")
    page.wait_for_selector("#job-live")
    assert "/models/jobs/" in page.url

    seen = set()
    for _ in range(600):
        try:  # the page reloads itself once the job ends (HX-Refresh)
            if page.query_selector("#results"):
                break
            text = page.text_content("#job-percent", timeout=1000)
        except PlaywrightError:
            text = None
        if text and text.strip().isdigit():
            seen.add(int(text))
        page.wait_for_timeout(100)
    page.wait_for_selector("#results", timeout=120_000)
    assert len(seen - {0, 100}) >= 2, f"progress never moved: {sorted(seen)}"
    job = CompressionJob.objects.get()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.kpis == {"max_latency_ms": 50.0, "max_accuracy_drop": 1.0}

    page.wait_for_selector("#pareto-chart[data-ready='1']")
    points = page.evaluate(
        "document.getElementById('pareto-chart').chart.data.datasets.map(d => d.data.length)"
    )
    plotted = [  # measured and evaluated: the candidates the quality axis can place
        c
        for c in job.candidates.exclude(metrics={})
        if c.metrics.get("accuracy") is not None or c.metrics.get("fidelity") is not None
    ]
    assert sum(points) == len(plotted) and points[0] == 1
    assert page.query_selector("#job-live[hx-trigger]") is None  # no polling once done

    chosen = job.candidates.get(chosen=True)
    row = page.locator("#results tr.chosen")
    assert chosen.recipe in row.inner_text()
    with page.expect_download() as info:
        row.locator("a.download").click()
    path = tmp_path / "chosen.onnx"
    info.value.save_as(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == chosen.version.sha256
    assert chosen.version.parent_id == demo.version.pk
    page.screenshot(
        path=os.environ.get("EDGEFLEET_SCREENSHOT", str(tmp_path / "job.png")), full_page=True
    )
