"""Jobs under a real Celery worker process (docs/reliability.md C1–C6).

Each test starts `celery -A fleet worker` subprocesses that share the test
database (a file on SQLite, the test database on PostgreSQL), the test's media
directory and a broker: Redis when REDIS_URL is set (CI), else a kombu
filesystem broker in a temporary folder. Nothing of our stack is mocked in the
worker; faults come from the EDGEFLEET_JOB_TEST_HOOK setting and from signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from compression.choices import JobStatus
from compression.models import CompressionJob, ModelVersion
from tests.compression.jobs_support import WorkerPool, database_url, load_demo, wait_for
from tests.conftest import stored_names

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(120)]

REDIS_URL = os.environ.get("REDIS_URL", "")


class Broker:
    """Where the test enqueues and the workers consume."""

    def __init__(self, root: Path):
        self.root = root
        if REDIS_URL:
            self.url, self.options = REDIS_URL, {}
        else:
            folder = root / "broker" / "queue"
            (root / "broker" / "processed").mkdir(parents=True, exist_ok=True)
            folder.mkdir(parents=True, exist_ok=True)
            self.url = "filesystem://"
            self.options = {
                "data_folder_in": str(folder),
                "data_folder_out": str(folder),
                "processed_folder": str(root / "broker" / "processed"),
                "store_processed": False,
            }

    def connection(self):
        from fleet.celery import app

        return app.connection_for_write(self.url, transport_options=self.options)

    def purge(self) -> None:
        # suppress: a queue that does not exist yet
        with self.connection() as conn, contextlib.suppress(Exception):
            conn.default_channel.queue_purge("compression")

    def send(self, job_id: int, **options) -> None:
        from compression.tasks import run_compression_job

        with self.connection() as conn:
            run_compression_job.apply_async((job_id,), connection=conn, **options)


@pytest.fixture
def env(tmp_path, settings):
    media = (
        Path(settings.STORAGES["default"]["OPTIONS"]["location"])
        if settings.STORAGES["default"]["BACKEND"].endswith("FileSystemStorage")
        else None
    )
    settings.EDGEFLEET_JOB_DIR = tmp_path / "jobs"
    values = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "EDGEFLEET_VAR_DIR": str(tmp_path / "var"),
        "EDGEFLEET_JOB_DIR": str(tmp_path / "jobs"),
        "EDGEFLEET_JOB_STALE_S": "600",
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
        "PYTHONUNBUFFERED": "1",
    }
    if media is not None:
        media.mkdir(parents=True, exist_ok=True)
        values["MEDIA_ROOT"] = str(media)
    if REDIS_URL:
        values["CELERY_BROKER_URL"] = REDIS_URL
    else:
        values["CELERY_BROKER_URL"] = "filesystem://"
    return values


@pytest.fixture
def broker(tmp_path, env):
    b = Broker(tmp_path / "var")
    b.purge()
    return b


@pytest.fixture
def workers(tmp_path, env):
    pool = WorkerPool(tmp_path, env)
    yield pool.start
    pool.stop_all()


def new_job(demo, recipes, **fields) -> CompressionJob:
    # a row, not create_job: its on_commit would enqueue on the default broker
    return CompressionJob.objects.create(
        source=demo.version,
        mode="recipes",
        recipes=recipes,
        calibration=demo.calibration,
        evaluation=demo.evaluation,
        time_budget_s=120,
        **fields,
    )


def job_state(pk: int) -> CompressionJob:
    return CompressionJob.objects.get(pk=pk)


def finished(pk: int):
    job = job_state(pk)
    return job if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING) else None


def assert_exactly_once(job: CompressionJob, recipes: list[str]) -> None:
    variants = ModelVersion.objects.filter(parent=job.source)
    assert sorted(v.recipe["name"] for v in variants) == sorted(recipes)
    assert job.candidates.count() == len(recipes) + 1  # + the fp32 original
    assert all(c.version_id for c in job.candidates.all() if not c.error)
    assert stored_names("models") == set(ModelVersion.objects.values_list("artifact", flat=True))
    assert not (Path(os.environ.get("EDGEFLEET_JOB_DIR", "")) / f"job-{job.pk}").exists()


def test_c1_sigkill_mid_job_is_redelivered_and_finishes_once(workers, broker, settings):
    demo = load_demo()
    recipes = ["int8-static", "fp16", "optimize"]
    job = new_job(demo, recipes)
    hook = {"EDGEFLEET_JOB_TEST_HOOK": f"slow:0.4@{job.pk}"}
    procs = [workers("a", **hook), workers("b", **hook)]
    broker.send(job.pk)
    running = wait_for(
        lambda: (j := job_state(job.pk)).status == JobStatus.RUNNING and j.progress > 0.1 and j,
        60,
        "job running",
    )
    victim = running.worker_pid
    owner = next(p for p in procs if p.pid == psutil.Process(victim).ppid())
    other = next(p for p in procs if p is not owner)
    os.kill(victim, signal.SIGKILL)  # the pool child doing the work: a power cut mid-job
    owner.send_signal(signal.SIGTERM)  # and its worker goes away: the other one must finish
    done = wait_for(lambda: finished(job.pk), 90, "job finished after redelivery")
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.attempts == 2 and done.worker_pid != victim
    assert done.worker_pid in {c.pid for c in psutil.Process(other.pid).children()}
    assert_exactly_once(done, recipes)
    assert not (settings.EDGEFLEET_JOB_DIR / f"job-{job.pk}").exists()


def test_c2_duplicate_delivery_gives_one_result(workers, broker, settings):
    demo = load_demo()
    recipes = ["fp16", "optimize"]
    job = new_job(demo, recipes)
    hook = {"EDGEFLEET_JOB_TEST_HOOK": f"slow:0.3@{job.pk}"}
    a, b = workers("a", **hook), workers("b", **hook)
    broker.send(job.pk)
    broker.send(job.pk)  # the same message twice: both workers get one
    done = wait_for(lambda: finished(job.pk), 90, "job finished")
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.attempts == 1
    assert_exactly_once(done, recipes)
    wait_for(
        lambda: b"not-claimed" in a.log_path.read_bytes() + b.log_path.read_bytes(),
        20,
        "the duplicate returned early",
    )
    broker.send(job.pk)  # and once more after the end: still nothing new
    wait_for(
        lambda: (a.log_path.read_bytes() + b.log_path.read_bytes()).count(b"not-claimed") >= 2,
        20,
        "late duplicate returned early",
    )
    assert_exactly_once(job_state(job.pk), recipes)


def test_c3_always_crashing_job_fails_after_n_attempts_others_run(workers, broker, settings):
    demo = load_demo()
    bad = new_job(demo, ["fp16"])
    good = new_job(demo, ["fp16"])
    workers("a", EDGEFLEET_JOB_TEST_HOOK=f"crash@{bad.pk}", EDGEFLEET_JOB_MAX_ATTEMPTS="2")
    broker.send(bad.pk)
    broker.send(good.pk)
    failed = wait_for(lambda: finished(bad.pk), 90, "crashing job failed")
    assert failed.status == JobStatus.FAILED
    assert failed.error.startswith("crashed") and failed.attempts == 2, failed.error
    ok = wait_for(lambda: finished(good.pk), 60, "other job finished")
    assert ok.status == JobStatus.SUCCEEDED, ok.error
    assert not ModelVersion.objects.filter(recipe__job=bad.pk).exists()
    assert not (settings.EDGEFLEET_JOB_DIR / f"job-{bad.pk}").exists()


def test_c4_time_limit_fails_with_timeout_and_next_job_runs(workers, broker, settings):
    demo = load_demo()
    slow = new_job(demo, ["fp16", "optimize"])
    cancel = new_job(demo, ["fp16", "optimize"])
    fast = new_job(demo, ["fp16"])
    worker = workers("a", EDGEFLEET_JOB_TEST_HOOK=f"slow:2@{slow.pk}")
    # the limits travel in the message (the sender's settings), as in production
    broker.send(slow.pk, soft_time_limit=6, time_limit=12)
    timed_out = wait_for(lambda: finished(slow.pk), 60, "slow job ended")
    assert timed_out.status == JobStatus.FAILED and timed_out.error.startswith("timeout")
    pool_children = psutil.Process(worker.pid).children()
    assert [p.pid for c in pool_children for p in c.children(recursive=True)] == []
    assert not (settings.EDGEFLEET_JOB_DIR / f"job-{slow.pk}").exists()
    assert not ModelVersion.objects.filter(recipe__job=slow.pk).exists()
    # a queued job cancelled before it starts never runs
    cancel.request_cancel()
    broker.send(cancel.pk)
    broker.send(fast.pk)
    ok = wait_for(lambda: finished(fast.pk), 60, "next job finished")
    assert ok.status == JobStatus.SUCCEEDED, ok.error
    assert job_state(cancel.pk).status == JobStatus.CANCELLED
    assert job_state(cancel.pk).started_at is None


def test_running_job_stops_on_cancel_and_cleans_up(workers, broker, settings):
    demo = load_demo()
    job = new_job(demo, ["int8-static", "fp16", "optimize"])
    workers("a", EDGEFLEET_JOB_TEST_HOOK=f"slow:0.5@{job.pk}")
    broker.send(job.pk)
    wait_for(lambda: job_state(job.pk).status == JobStatus.RUNNING, 60, "job running")
    assert job_state(job.pk).request_cancel()
    done = wait_for(lambda: finished(job.pk), 30, "job stopped")
    assert done.status == JobStatus.CANCELLED
    assert not (settings.EDGEFLEET_JOB_DIR / f"job-{job.pk}").exists()
    assert not ModelVersion.objects.filter(recipe__job=job.pk).exists()


def python(script: str, env: dict, timeout: float) -> str:
    """What `script` prints, run by a fresh interpreter with `env`."""
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )
    run.check_returncode()
    return run.stdout


def test_c6_visibility_timeout_exceeds_the_longest_time_limit():
    script = (
        "import django; django.setup(); from django.conf import settings as s; "
        "from fleet.celery import app; "
        "from compression.tasks import run_compression_job as t; "
        "print(s.CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'], "
        "s.CELERY_TASK_TIME_LIMIT, app.conf.task_time_limit, app.conf.task_soft_time_limit, "
        "t.acks_late, t.reject_on_worker_lost, "
        "app.amqp.router.route({}, t.name)['queue'].name)"
    )
    for limit in ("1800", "60"):
        env = {
            **os.environ,
            "REDIS_URL": "redis://127.0.0.1:6390/0",
            "CELERY_BROKER_URL": "",
            "CELERY_TASK_TIME_LIMIT": limit,
            "CELERY_TASK_SOFT_TIME_LIMIT": "50",
            "DJANGO_SETTINGS_MODULE": "fleet.settings",
        }
        env.pop("CELERY_BROKER_URL")
        out = python(script, env, 60).split()
        visibility, hard, task_hard, task_soft = (float(x) for x in out[:4])
        assert visibility > hard == task_hard > task_soft
        assert out[4:] == ["True", "True", "compression"]


def test_c5_broker_down_at_enqueue_keeps_the_job_and_the_sweeper_sends_it(env, broker, workers):
    demo = load_demo()
    job = new_job(demo, ["fp16"])
    down = {**env, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}  # nothing listens there
    script = (
        "import django; django.setup(); from compression.jobs import enqueue_job; "
        f"print(enqueue_job({job.pk}))"
    )
    out = python(script, down, 90).split()
    assert out[-1] == "False"
    stranded = job_state(job.pk)
    assert stranded.status == JobStatus.QUEUED and stranded.enqueued_at is None
    # the broker is back: the periodic sweeper (run in the worker's settings) re-sends it
    later = "from datetime import timedelta; from django.utils import timezone; "
    sweep = (
        "import django; django.setup(); "
        + later
        + "from compression.jobs import requeue_stale_jobs; "
        "print(requeue_stale_jobs(now=timezone.now() + timedelta(minutes=5)))"
    )
    out = python(sweep, env, 60)
    assert str(job.pk) in out
    workers("a")
    done = wait_for(lambda: finished(job.pk), 60, "swept job finished")
    assert done.status == JobStatus.SUCCEEDED, done.error
