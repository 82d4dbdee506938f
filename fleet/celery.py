"""The Celery app. JSON only; queues are an enum so nobody types a queue name twice."""

from __future__ import annotations

import os
from enum import StrEnum

from celery import Celery
from kombu import Queue as KombuQueue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


class Queue(StrEnum):
    DEFAULT = "default"
    COMPRESSION = "compression"  # CPU-heavy: one job per core
    TRAINING = "training"  # compression jobs that train: only workers with the train extra


def worker_queues() -> str:
    """The ``-Q`` of a local worker: the training queue only where torch is installed."""
    from compression.engine import training

    queues = [Queue.DEFAULT, Queue.COMPRESSION]
    if training.available():
        queues.append(Queue.TRAINING)
    return ",".join(queues)


app = Celery("edgefleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,  # job state lives in our tables, not a result backend
    task_default_queue=Queue.DEFAULT,
    task_queues=[KombuQueue(q.value) for q in Queue],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=5,
    worker_hijack_root_logger=False,
)
app.autodiscover_tasks()
