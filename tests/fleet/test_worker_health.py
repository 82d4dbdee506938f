"""Worker health: a banner when no worker was seen, queue depth, "waiting for a worker"."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

from fleet import health

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_client(client, operator_user):
    client.force_login(operator_user)
    return client


@pytest.fixture(params=["shared-cache", "file"])
def heartbeat_store(request, settings, tmp_path):
    """The heartbeat in the shared cache (Redis) or, embedded, a file in the var dir."""
    if request.param == "file":
        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        settings.VAR_DIR = tmp_path
    elif "locmem" in settings.CACHES["default"]["BACKEND"]:
        pytest.skip("no shared cache configured")
    settings.CELERY_TASK_ALWAYS_EAGER = False
    return request.param


def test_banner_when_no_worker_was_ever_seen(operator_client, heartbeat_store):
    page = operator_client.get(reverse("home")).content.decode()
    assert 'id="worker-banner"' in page


def test_no_banner_after_a_heartbeat_and_again_when_it_is_stale(
    operator_client, heartbeat_store, settings
):
    health.note_worker()
    assert 'id="worker-banner"' not in operator_client.get(reverse("home")).content.decode()
    health.note_worker(time.time() - settings.WORKER_STALE_S - 1)  # the worker stopped
    assert 'id="worker-banner"' in operator_client.get(reverse("home")).content.decode()


def test_heartbeat_task_notes_the_worker(heartbeat_store):
    from fleet.tasks import worker_heartbeat

    assert health.worker_down()
    worker_heartbeat.run()
    assert not health.worker_down()


def test_no_banner_for_anonymous_or_eager(client, settings, heartbeat_store):
    assert 'id="worker-banner"' not in client.get(reverse("login")).content.decode()
    settings.CELERY_TASK_ALWAYS_EAGER = True
    assert not health.worker_down()


def test_jobs_page_shows_queue_depth_and_waiting_jobs(operator_client, heartbeat_store):
    from django.core.management import call_command

    from compression import jobs
    from compression.choices import DatasetPurpose, JobMode
    from compression.models import Dataset, ModelVersion

    call_command("seed_demo")  # the demo model and its datasets, no job
    version = ModelVersion.objects.get()
    data = {d.purpose: d for d in Dataset.objects.all()}
    jobs.create_job(
        version,
        mode=JobMode.AUTO,
        kpis={},
        calibration=data[DatasetPurpose.CALIBRATION],
        evaluation=data[DatasetPurpose.EVALUATION],
        enqueue=False,
    )
    page = operator_client.get(reverse("compression:job-list")).content.decode()
    assert 'id="queue-depth"' in page and "compression <strong>" in page
    assert "waiting for a worker" in page
    health.note_worker()
    page = operator_client.get(reverse("compression:job-list")).content.decode()
    assert "waiting for a worker" not in page


def test_queue_depth_counts_embedded_broker_files(settings, tmp_path):
    (tmp_path / "1_a.compression.msg").write_text("{}")
    (tmp_path / ".tmp-2_b.compression.msg.part").write_text("")
    (tmp_path / "3_c.default.msg").write_text("{}")
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(tmp_path)}
    assert health.queue_depth("compression") == 1
    assert health.queue_depth("default") == 1
