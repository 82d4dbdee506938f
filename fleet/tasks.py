"""Platform tasks: the worker heartbeat (see fleet.health)."""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_ready

from fleet import health


@shared_task(name="fleet.tasks.worker_heartbeat", ignore_result=True)
def worker_heartbeat() -> None:
    health.note_worker()


@worker_ready.connect
def _note_worker_started(**_kwargs) -> None:
    health.note_worker()
