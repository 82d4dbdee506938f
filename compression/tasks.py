"""Celery tasks: ids in, a plain function called.

Hard and soft time limits are CELERY_TASK_TIME_LIMIT / CELERY_TASK_SOFT_TIME_LIMIT
(Celery copies them onto every task and into each message it sends), the queue
is routed by CELERY_TASK_ROUTES; both live in fleet/settings.py next to the
Redis visibility timeout that must exceed the hard limit (docs/reliability.md C6).
"""

from __future__ import annotations

from celery import shared_task

from compression import device_choice, jobs, runner, uploads


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=runner.TRANSIENT_ERRORS,
    retry_backoff=5,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=5,
)
def run_compression_job(job_id: int) -> str:
    return runner.run_job(job_id)


@shared_task(acks_late=True)
def requeue_stale_jobs() -> list[int]:
    return jobs.requeue_stale_jobs()


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OSError,),
    retry_backoff=5,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=5,
)
def validate_model_version(version_id: int) -> str:
    """An upload's sandboxed validation, off the request path (OSError: storage
    unreachable, retried)."""
    return uploads.do_validate_version(version_id)


@shared_task(acks_late=True)
def requeue_stale_validations() -> list[int]:
    return uploads.requeue_stale_validations()


@shared_task(acks_late=True)
def sweep_device_choices() -> dict:
    """Periodic: jobs still to ask their devices, waiting jobs complete or timed out."""
    return {str(k): v for k, v in device_choice.sweep().items()}
