"""Celery tasks: ids in, a plain function called (STYLE 5)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from compression import jobs, runner
from fleet.celery import Queue


@shared_task(
    queue=Queue.COMPRESSION, acks_late=True, reject_on_worker_lost=True,
    autoretry_for=runner.TRANSIENT_ERRORS, retry_backoff=5, retry_backoff_max=120,
    retry_jitter=True, max_retries=5,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
)
def run_compression_job(job_id: int) -> str:
    return runner.run_job(job_id)


@shared_task(queue=Queue.DEFAULT, acks_late=True)
def requeue_stale_jobs() -> list[int]:
    return jobs.requeue_stale_jobs()
