"""The Celery app. JSON only; queues are an enum so nobody types a queue name twice."""

from __future__ import annotations

import os
from enum import StrEnum

from celery import Celery, signals
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


@signals.task_failure.connect
def _count_failure(sender=None, **kwargs):
    from fleet import prometheus

    prometheus.TASK_FAILURES.labels(getattr(sender, "name", "unknown")).inc()


@signals.worker_init.connect
def _serve_metrics(**kwargs):
    """METRICS_PORT: the worker's main process serves every pool process's events
    (multiprocess mode, PROMETHEUS_MULTIPROC_DIR, emptied here at start)."""
    from django.conf import settings

    from fleet import prometheus

    if settings.METRICS_PORT:
        prometheus.reset_multiprocess_dir()
        prometheus.serve(settings.METRICS_PORT, settings.METRICS_ADDR)


@signals.worker_process_shutdown.connect
def _pool_process_gone(pid=None, **kwargs):
    from fleet import prometheus

    prometheus.mark_process_dead(pid or os.getpid())
