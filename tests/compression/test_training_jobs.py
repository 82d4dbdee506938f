"""Training jobs on the platform: options, the training queue, the form, curves on the page."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings

from compression import jobs, runner, workers
from compression.engine import training
from compression.models import CompressionJob
from fleet.celery import Queue, app
from tests.compression.jobs_support import job_payload, load_demo

pytestmark = pytest.mark.django_db

needs_torch = pytest.mark.skipif(
    not training.available(), reason="needs the train extra (torch, onnx2torch)"
)


@pytest.fixture(autouse=True)
def _job_dir(settings, tmp_path):
    settings.EDGEFLEET_JOB_DIR = tmp_path / "jobs"


@pytest.fixture
def demo():
    return load_demo()


def _queue_depth(name: str) -> int:
    with app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(name, passive=False).message_count


def _purge(name: str) -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(name)


def test_options_are_validated(operator_api, demo):
    other = load_demo("other-model")
    for options, _field in (
        ({"epochs": 0}, "epochs"),
        ({"epochs": "2.5"}, "epochs"),
        ({"finetune_epochs": 500}, "finetune_epochs"),
        ({"distill": {"ratio": 1.5}}, "distill_ratio"),
        ({"distill": {"student_version": other.version.pk}}, "distill_student"),
        ({"bogus": 1}, "options"),
    ):
        response = operator_api.post(
            "/api/v1/jobs/", job_payload(demo, options=options), format="json"
        )
        assert response.status_code == 400, (options, response.content)
        assert response.json()["code"] == "bad_option"
    assert not CompressionJob.objects.exists()
    ok = operator_api.post(
        "/api/v1/jobs/",
        job_payload(demo, recipes=["distill"], options={"epochs": 3, "distill": {"ratio": "0.4"}}),
        format="json",
    )
    assert ok.status_code == 201, ok.content
    assert ok.json()["options"]["distill"] == {"ratio": 0.4}


def test_viewer_cannot_start_a_training_job(viewer_api, demo):
    response = viewer_api.post("/api/v1/jobs/", job_payload(demo, recipes=["qat"]), format="json")
    assert response.status_code == 403


def test_auto_with_training_adds_qat_and_training_jobs_go_to_the_training_queue(demo):
    if not django_settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("needs the Redis broker to count queued messages")
    _purge(Queue.TRAINING)
    _purge(Queue.COMPRESSION)
    auto = jobs.create_job(
        demo.version,
        mode="auto",
        options={"training": True},
        calibration=demo.calibration,
        evaluation=demo.evaluation,
        enqueue=False,
    )
    assert auto.recipes[-1] == "qat" and "prune-unstructured" in auto.recipes
    plain = jobs.create_job(
        demo.version,
        mode="auto",
        calibration=demo.calibration,
        evaluation=demo.evaluation,
        enqueue=False,
    )
    assert "qat" not in (plain.recipes or jobs.default_search_recipes())
    assert jobs.enqueue_job(auto.pk) and jobs.enqueue_job(plain.pk)
    assert _queue_depth(Queue.TRAINING) == 1 and _queue_depth(Queue.COMPRESSION) == 1
    _purge(Queue.TRAINING)
    _purge(Queue.COMPRESSION)


def test_form_explains_the_training_extra_when_no_worker_has_it(client, operator_user, demo):
    client.force_login(operator_user)
    url = f"/models/versions/{demo.version.pk}/compress/"
    workers.remember([])
    page = client.get(url).content.decode()
    assert 'id="training-unavailable"' in page and "training extra on the worker" in page
    workers.remember(["celery@trainer"])
    page = client.get(url).content.decode()
    assert 'id="training-ready"' in page and 'id="training-unavailable"' not in page
    workers.remember([])


def test_form_rejects_bad_training_fields_without_a_500(client, operator_user, demo):
    client.force_login(operator_user)
    response = client.post(
        f"/models/versions/{demo.version.pk}/compress/",
        {
            "mode": "recipes",
            "recipes": ["distill"],
            "epochs": "-3",
            "distill_ratio": "7",
            "calibration": demo.calibration.pk,
            "evaluation": demo.evaluation.pk,
            "time_budget_s": 120,
        },
    )
    assert response.status_code == 400
    assert not CompressionJob.objects.exists()


@needs_torch
def test_qat_job_runs_with_epochs_in_the_log_and_curves_on_the_page(client, operator_user, demo):
    job = jobs.create_job(
        demo.version,
        mode="recipes",
        recipes=["qat", "prune-structured"],
        options={"epochs": 2, "finetune_epochs": 1},
        calibration=demo.calibration,
        evaluation=demo.evaluation,
        time_budget_s=300,
        enqueue=False,
    )
    assert runner.run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert any("qat epoch 2/2" in line for line in job.log), job.log
    qat = job.candidates.get(recipe="qat")
    curve = qat.metrics["training"][0]
    assert curve["pass"] == "qat" and [r["epoch"] for r in curve["history"]] == [0, 1, 2]
    pruned = job.candidates.get(recipe="prune-structured").metrics["training"][0]
    assert pruned["pass"] == "prune-structured" and len(pruned["history"]) == 2
    client.force_login(operator_user)
    assert 'id="training-chart"' in client.get(f"/models/jobs/{job.pk}/").content.decode()
    chart = client.get(f"/models/jobs/{job.pk}/chart.json").json()
    assert {t["recipe"] for t in chart["training"]} == {"qat", "prune-structured"}
