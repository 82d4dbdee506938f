"""Compression jobs in-process: API, roles, validation, state machine, runner."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from compression import jobs, runner
from compression.choices import JobStatus
from compression.models import Candidate, CompressionJob, ModelVersion
from compression.progress import ProgressReporter
from compression.services import register_dataset
from devices.models import HardwareProfile, LatencyBaseline
from tests.compression.jobs_support import FAST_RECIPES, job_payload, load_demo
from tests.conftest import stored_names

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _job_dir(settings, tmp_path):
    settings.EDGEFLEET_JOB_DIR = tmp_path / "jobs"


@pytest.fixture
def demo():
    return load_demo()


def create(client, payload, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/api/v1/jobs/", payload, format="json")
    return response, callbacks


def test_start_run_and_read_a_job(
    operator_api, demo, settings, tmp_path, django_capture_on_commit_callbacks
):
    profile, _ = HardwareProfile.objects.get_or_create(
        slug="x86-gateway-1c", defaults={"name": "x86 gateway, 1 core", "arch": "x86_64"}
    )
    response, callbacks = create(
        operator_api,
        job_payload(demo, hardware_profile=profile.slug, kpis={"max_latency_ms": 100}),
        django_capture_on_commit_callbacks,
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued" and body["recipes"] == FAST_RECIPES
    assert len(callbacks) == 1  # enqueued only after the commit

    assert runner.run_job(body["id"]) == "succeeded"
    job = CompressionJob.objects.get(pk=body["id"])
    assert job.status == JobStatus.SUCCEEDED and job.progress == 1.0
    assert job.attempts == 1 and job.worker_host and job.finished_at
    assert job.result["chosen"] in {"fp32", *FAST_RECIPES}
    assert job.result["hardware_profile"] == profile.name
    recipes = set(job.candidates.values_list("recipe", flat=True))
    assert recipes == {"fp32", *FAST_RECIPES}
    variants = ModelVersion.objects.filter(parent=demo.version)
    assert {v.recipe["name"] for v in variants} == set(FAST_RECIPES)
    for v in variants:
        assert v.metrics["p50_ms"] > 0 and v.recipe["job"] == job.pk
        assert default_storage.exists(v.artifact)
    assert stored_names("models") == set(ModelVersion.objects.values_list("artifact", flat=True))
    assert not runner.job_dir(job.pk).exists()
    # Each measured version's p95 becomes the estimate devices on that profile are judged by.
    estimates = dict(
        LatencyBaseline.objects.filter(hardware_profile=profile).values_list(
            "model_version", "p95_ms"
        )
    )
    measured = {
        c.version.device_label: c.metrics["p95_ms"]
        for c in job.candidates.select_related("version__model")
        if c.version_id
    }
    assert estimates == measured and len(measured) == 1 + len(FAST_RECIPES)

    detail = operator_api.get(f"/api/v1/jobs/{job.pk}/").json()
    assert detail["status"] == "succeeded"
    assert {c["recipe"] for c in detail["candidates"]} == recipes
    assert sum(c["chosen"] for c in detail["candidates"]) == 1
    listing = operator_api.get("/api/v1/jobs/").json()
    assert [j["id"] for j in listing["results"]] == [job.pk]


def test_duplicate_delivery_runs_once(demo):
    job = jobs.create_job(
        demo.version, mode="recipes", recipes=["fp16"], evaluation=demo.evaluation
    )
    assert runner.run_job(job.pk) == "succeeded"
    assert runner.run_job(job.pk) == "not-claimed"
    assert ModelVersion.objects.filter(parent=demo.version).count() == 1
    assert CompressionJob.objects.get(pk=job.pk).attempts == 1


def test_redelivery_after_a_dead_worker_finishes_once(demo):
    job = jobs.create_job(
        demo.version, mode="recipes", recipes=["fp16", "optimize"], evaluation=demo.evaluation
    )
    assert runner.run_job(job.pk) == "succeeded"
    first = set(ModelVersion.objects.filter(parent=demo.version).values_list("pk", flat=True))
    # As if the worker died after registering the variants but before finishing:
    # the row says running, owned by a pid that no longer exists.
    Candidate.objects.filter(job=job).update(version=None)
    CompressionJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, worker_pid=2**22 + 7)
    assert runner.run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.attempts == 2
    again = set(ModelVersion.objects.filter(parent=demo.version).values_list("pk", flat=True))
    assert again == first  # no duplicate versions
    assert stored_names("models") == set(ModelVersion.objects.values_list("artifact", flat=True))


def test_job_gives_up_after_max_attempts(demo, settings):
    settings.EDGEFLEET_JOB_MAX_ATTEMPTS = 2
    job = jobs.create_job(
        demo.version, mode="recipes", recipes=["fp16"], evaluation=demo.evaluation
    )
    CompressionJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, attempts=2, worker_pid=2**22 + 7
    )
    assert runner.run_job(job.pk) == "gave-up"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error.startswith("crashed")


def test_job_killed_at_the_hard_limit_ends_as_timeout(demo, settings):
    from django.utils import timezone

    job = jobs.create_job(
        demo.version, mode="recipes", recipes=["fp16"], evaluation=demo.evaluation, enqueue=False
    )
    long_ago = timezone.now() - timezone.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 5)
    CompressionJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, attempts=1, worker_pid=2**22 + 7, started_at=long_ago
    )
    assert runner.run_job(job.pk) == "gave-up"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error.startswith("timeout")


def test_engine_error_fails_the_job(demo, settings):
    settings.EDGEFLEET_JOB_TEST_HOOK = "fail"
    job = jobs.create_job(
        demo.version, mode="recipes", recipes=["fp16"], evaluation=demo.evaluation
    )
    assert runner.run_job(job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "test hook" in job.error
    assert not runner.job_dir(job.pk).exists()


def test_cancel_queued_job_never_starts(operator_api, demo, django_capture_on_commit_callbacks):
    response, _ = create(operator_api, job_payload(demo), django_capture_on_commit_callbacks)
    pk = response.json()["id"]
    cancel = operator_api.post(f"/api/v1/jobs/{pk}/cancel/")
    assert cancel.status_code == 202 and cancel.json()["status"] == "cancelled"
    assert runner.run_job(pk) == "not-claimed"
    assert CompressionJob.objects.get(pk=pk).started_at is None
    assert operator_api.post(f"/api/v1/jobs/{pk}/cancel/").status_code == 409


def test_running_job_sees_cancel_request(demo):
    job = jobs.create_job(
        demo.version, mode="recipes", recipes=["fp16"], evaluation=demo.evaluation
    )
    assert job.mark_running()
    reporter = ProgressReporter(job, cancel_check_s=0)
    assert not reporter.should_stop()
    assert job.request_cancel() and job.status == JobStatus.RUNNING
    assert reporter.should_stop()


def test_progress_reporter_throttles_writes(demo):
    job = jobs.create_job(
        demo.version, mode="recipes", recipes=["fp16"], evaluation=demo.evaluation
    )
    job.mark_running()
    now = [0.0]
    reporter = ProgressReporter(job, min_interval_s=1.0, clock=lambda: now[0])
    reporter(0.1, "a")
    for i in range(50):
        reporter(0.1 + i / 1000, "a")  # same step, no time passes: no writes
    assert reporter.writes == 1
    now[0] = 2.0
    reporter(0.5, "a")
    reporter(0.6, "b")
    assert reporter.writes == 3
    job.refresh_from_db()
    assert job.progress == 0.6 and job.current_step == "b" and len(job.log) == 2


def test_viewer_reads_but_cannot_start_or_cancel(
    viewer_api, operator_api, demo, django_capture_on_commit_callbacks
):
    response, _ = create(viewer_api, job_payload(demo), django_capture_on_commit_callbacks)
    assert response.status_code == 403
    response, _ = create(operator_api, job_payload(demo), django_capture_on_commit_callbacks)
    pk = response.json()["id"]
    assert viewer_api.get("/api/v1/jobs/").status_code == 200
    assert viewer_api.get(f"/api/v1/jobs/{pk}/").status_code == 200
    assert viewer_api.post(f"/api/v1/jobs/{pk}/cancel/").status_code == 403
    assert CompressionJob.objects.get(pk=pk).status == JobStatus.QUEUED
    assert viewer_api.get("/api/v1/hardware-profiles/").status_code == 200


def test_anonymous_gets_401(anon_api):
    assert anon_api.get("/api/v1/jobs/").status_code == 401
    assert anon_api.post("/api/v1/jobs/", {}, format="json").status_code == 401


def _npz(**arrays) -> io.BytesIO:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"recipes": ["int8-magic"]}, "unknown_recipe"),
        ({"recipes": []}, "no_recipes"),
        ({"kpis": {"max_latency_ms": -1}}, "bad_kpi"),
        ({"kpis": {"latency": 5}}, "bad_kpi"),
        ({"kpis": {"min_fidelity": 1.5}}, "bad_kpi"),
        ({"time_budget_s": 1}, "bad_budget"),
        ({"calibration": None}, "no_calibration"),
        ({"mode": "magic"}, "mode"),
        ({"evaluation": None, "kpis": {"min_fidelity": 0.9}}, "evaluation"),
    ],
)
def test_malformed_job_requests_are_refused(
    operator_api, demo, change, code, django_capture_on_commit_callbacks
):
    response, callbacks = create(
        operator_api, job_payload(demo, **change), django_capture_on_commit_callbacks
    )
    assert response.status_code == 400, response.content
    assert code in str(response.json())
    assert not callbacks and not CompressionJob.objects.exists()


def test_dataset_not_matching_the_model_is_refused(
    operator_api, demo, tmp_path, django_capture_on_commit_callbacks
):
    path = tmp_path / "other.npz"
    path.write_bytes(_npz(image=np.zeros((4, 1, 8, 8), "float32")).getvalue())
    wrong_shape = register_dataset(
        path, name="small", purpose="evaluation", original_filename="other.npz"
    )
    path.write_bytes(_npz(x=np.zeros((4, 3), "float32")).getvalue())
    wrong_name = register_dataset(
        path, name="x", purpose="evaluation", original_filename="other.npz"
    )
    for dataset in (wrong_shape, wrong_name):
        response, _ = create(
            operator_api,
            job_payload(demo, evaluation=dataset.pk),
            django_capture_on_commit_callbacks,
        )
        assert response.status_code == 400
        assert response.json()["code"] == "dataset_mismatch"
        assert response.json()["field"] == "evaluation"


def test_enqueue_failure_leaves_a_queued_row_for_the_sweeper(demo, settings, monkeypatch):
    job = jobs.create_job(
        demo.version, mode="recipes", recipes=["fp16"], evaluation=demo.evaluation
    )
    CompressionJob.objects.filter(pk=job.pk).update(enqueued_at=None)
    from django.utils import timezone

    later = timezone.now() + timezone.timedelta(minutes=5)
    sent = []
    from compression.tasks import run_compression_job

    monkeypatch.setattr(
        run_compression_job, "apply_async", lambda args, queue=None: sent.append((*args, queue))
    )
    assert jobs.requeue_stale_jobs(now=later) == [job.pk]
    assert sent == [(job.pk, "compression")]  # no training recipe: the compression queue
    assert CompressionJob.objects.get(pk=job.pk).enqueued_at is not None


def test_job_pages(client, operator_user, viewer_user, demo, django_capture_on_commit_callbacks):
    client.force_login(operator_user)
    url = f"/models/versions/{demo.version.pk}/compress/"
    assert client.get(url).status_code == 200
    assert b"Compress" in client.get(f"/models/{demo.version.model_id}/").content
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            url,
            {
                "mode": "auto",
                "recipes": ["fp16", "int8-static"],
                "max_latency_ms": "50",
                "calibration": demo.calibration.pk,
                "evaluation": demo.evaluation.pk,
                "time_budget_s": "120",
            },
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    job = CompressionJob.objects.get()
    assert job.kpis == {"max_latency_ms": 50.0}
    live = client.get(f"/models/jobs/{job.pk}/")
    assert b'hx-trigger="every 1s"' in live.content
    partial = client.get(f"/models/jobs/{job.pk}/live/").content.decode()
    assert 'data-status="queued"' in partial and 'id="job-cancel"' in partial  # one partial
    CompressionJob.objects.filter(pk=job.pk).update(
        status="running", progress=0.5, started_at=timezone.now() - timedelta(seconds=30)
    )
    assert 'id="job-eta"' in client.get(f"/models/jobs/{job.pk}/live/").content.decode()
    CompressionJob.objects.filter(pk=job.pk).update(status="queued", progress=0, started_at=None)
    assert runner.run_job(job.pk) == "succeeded"
    page = client.get(f"/models/jobs/{job.pk}/")
    assert b'hx-trigger="every 1s"' not in page.content  # the live partial stopped polling
    assert b'id="results"' in page.content
    assert b"pareto-chart" in page.content
    status = client.get(f"/models/jobs/{job.pk}/live/", HTTP_HX_REQUEST="true")
    assert status["HX-Refresh"] == "true"
    chart = client.get(f"/models/jobs/{job.pk}/chart.json").json()
    assert {p["recipe"] for p in chart["points"]} == {"fp32", "fp16", "int8-static"}
    assert sum(p["chosen"] for p in chart["points"]) == 1
    assert client.get("/models/jobs/").status_code == 200
    lineage = client.get(f"/models/{demo.version.model_id}/").content.decode()
    assert "int8-static" in lineage and f"/models/jobs/{job.pk}/" in lineage

    client.force_login(viewer_user)
    assert client.get(f"/models/jobs/{job.pk}/").status_code == 200
    assert client.get(url).status_code == 403
    assert client.post(f"/models/jobs/{job.pk}/cancel/").status_code == 403


def test_job_form_shows_refusal(client, operator_user, demo):
    client.force_login(operator_user)
    response = client.post(
        f"/models/versions/{demo.version.pk}/compress/",
        {
            "mode": "recipes",
            "recipes": ["int8-static"],
            "evaluation": demo.evaluation.pk,
            "time_budget_s": "120",
        },
    )
    assert response.status_code == 400
    assert b"calibration" in response.content
    assert not CompressionJob.objects.exists()


@pytest.mark.slow
def test_seed_demo_with_job_leaves_a_finished_job():
    from django.core.management import call_command

    call_command("seed_demo", "--with-job", stdout=io.StringIO())
    job = CompressionJob.objects.get()
    assert job.status == JobStatus.SUCCEEDED and "int8" in job.result["chosen"]
    # an auto job searches the engine's default plan, the quantizer grid included
    recipes = set(job.candidates.values_list("recipe", flat=True))
    assert any(r.startswith("int8-static[") for r in recipes), recipes
    # No wall-clock bound here: how fast the demo job runs is a benchmark's
    # question (benchmarks/jobs.py), and a loaded machine would fail it.
    assert ModelVersion.objects.filter(parent=job.source).count() >= 3


def test_job_list_query_count_does_not_grow(
    operator_api, client, operator_user, demo, django_assert_max_num_queries
):
    for _ in range(5):
        job = jobs.create_job(
            demo.version,
            mode="recipes",
            recipes=["fp16"],
            evaluation=demo.evaluation,
            enqueue=False,
        )
        Candidate.objects.create(job=job, recipe="fp16", version=demo.version)
    with django_assert_max_num_queries(8):
        assert operator_api.get("/api/v1/jobs/").status_code == 200
    client.force_login(operator_user)
    with django_assert_max_num_queries(10):
        assert client.get("/models/jobs/").status_code == 200


def test_release_link_on_results(client, operator_user, demo):
    job = jobs.create_job(
        demo.version, mode="recipes", recipes=["fp16"], evaluation=demo.evaluation, enqueue=False
    )
    assert runner.run_job(job.pk) == "succeeded"
    client.force_login(operator_user)
    variant = job.candidates.get(recipe="fp16").version
    page = client.get(f"/models/jobs/{job.pk}/").content.decode()
    assert f"/deployments/releases/new/?version={variant.pk}" in page


def test_job_form_accepts_inline_dataset_uploads(
    client, operator_user, demo, django_capture_on_commit_callbacks
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.conftest import FIXTURES

    client.force_login(operator_user)
    upload = SimpleUploadedFile("fresh-eval.npz", (FIXTURES / "digits_eval.npz").read_bytes())
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            f"/models/versions/{demo.version.pk}/compress/",
            {
                "mode": "recipes",
                "recipes": ["fp16"],
                "evaluation_file": upload,
                "time_budget_s": "60",
            },
        )
    assert response.status_code == 302, response.content.decode()[:1500]
    job = CompressionJob.objects.get()
    assert job.evaluation.name == "fresh-eval" and job.evaluation.model == demo.version.model
    assert job.evaluation.purpose == "evaluation"


def test_refused_job_leaves_no_uploaded_dataset_behind(client, operator_user, demo):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from compression.models import Dataset
    from tests.conftest import FIXTURES

    client.force_login(operator_user)
    with np.load(FIXTURES / "digits_eval.npz") as arrays:
        fresh = _npz(**{k: arrays[k] for k in arrays.files}, extra=np.zeros(3)).getvalue()
    datasets, stored = Dataset.objects.count(), stored_names("datasets")
    response = client.post(
        f"/models/versions/{demo.version.pk}/compress/",
        {
            "mode": "recipes",
            "recipes": ["int8-static"],  # needs calibration data: refused
            "evaluation_file": SimpleUploadedFile("fresh-eval.npz", fresh),
            "time_budget_s": "120",
        },
    )
    assert response.status_code == 400 and b"calibration" in response.content
    assert not CompressionJob.objects.exists()
    assert Dataset.objects.count() == datasets and stored_names("datasets") == stored
    # an upload of bytes another dataset already has leaves that dataset's file alone
    response = client.post(
        f"/models/versions/{demo.version.pk}/compress/",
        {
            "mode": "recipes",
            "recipes": ["int8-static"],
            "evaluation_file": SimpleUploadedFile(
                "again.npz", (FIXTURES / "digits_eval.npz").read_bytes()
            ),
            "time_budget_s": "120",
        },
    )
    assert response.status_code == 400
    assert Dataset.objects.count() == datasets and stored_names("datasets") == stored
    assert default_storage.exists(demo.evaluation.artifact)


def test_job_form_budget_is_create_jobs_rule(client, operator_user, demo):
    client.force_login(operator_user)
    for budget in ("5", str(jobs.MAX_BUDGET_S + 1)):
        response = client.post(
            f"/models/versions/{demo.version.pk}/compress/",
            {"mode": "recipes", "recipes": ["fp16"], "time_budget_s": budget},
        )
        assert response.status_code == 400
        assert "The time budget must be between 10 and 21600 s." in response.content.decode()
    assert not CompressionJob.objects.exists()


def test_job_form_shows_every_refusal_at_once(client, operator_user, demo):
    client.force_login(operator_user)
    response = client.post(
        f"/models/versions/{demo.version.pk}/compress/",
        {"mode": "recipes", "time_budget_s": "5", "epochs": "", "min_fidelity": "0.9"},
    )
    text = response.content.decode()
    assert response.status_code == 400
    assert "Pick at least one recipe." in text
    assert "The time budget must be between 10 and 21600 s." in text
    # the dataset checks in the same round: a fidelity KPI with no evaluation data
    assert "Fidelity and accuracy KPIs need an evaluation" in text
    assert not CompressionJob.objects.exists()


def test_job_chart_reads_the_candidates_once(client, viewer_user, demo):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    job = jobs.create_job(
        demo.version, mode="recipes", recipes=["fp16"], evaluation=demo.evaluation, enqueue=False
    )
    for recipe in ("fp32", "fp16", "int8-dynamic"):
        Candidate.objects.create(job=job, recipe=recipe, metrics={"p50_ms": 1.0, "accuracy": 0.9})
    client.force_login(viewer_user)
    with CaptureQueriesContext(connection) as queries:
        chart = client.get(f"/models/jobs/{job.pk}/chart.json").json()
    assert len(chart["points"]) == 3
    reads = [q["sql"] for q in queries if 'FROM "compression_candidate"' in q["sql"]]
    assert len(reads) == 1, reads
