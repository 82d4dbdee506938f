"""Which Celery workers can train: those consuming the ``training`` queue.

A worker advertises the training extra by consuming that queue (``make run``
adds it when torch is importable). The web process asks the workers with a
broadcast (``inspect().active_queues()``), at most every ``CACHE_S`` seconds;
no answer means no training worker, and the job form says so.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

from fleet.celery import Queue

log = logging.getLogger(__name__)

CACHE_S = 30.0
_cache: dict[str, tuple[float, list[str]]] = {}


def training_workers(*, refresh: bool = False) -> list[str]:
    """Host names of live workers that consume the training queue (cached per process)."""
    now = time.monotonic()
    hit = _cache.get("training")
    if hit is not None and not refresh and now - hit[0] < CACHE_S:
        return hit[1]
    hosts: list[str] = []
    try:
        from fleet.celery import app

        replies = (
            app.control.inspect(timeout=settings.EDGEFLEET_WORKER_INSPECT_TIMEOUT_S).active_queues()
            or {}
        )
        hosts = sorted(
            h
            for h, queues in replies.items()
            if any(q.get("name") == Queue.TRAINING for q in queues or [])
        )
    except Exception as exc:  # broker down or unreachable: nobody can be asked
        log.info("worker inspection failed (%s: %s)", type(exc).__name__, exc)
    _cache["training"] = (now, hosts)
    return hosts


def remember(hosts: list[str]) -> None:
    """Set the cached answer (a worker that just started, and tests)."""
    _cache["training"] = (time.monotonic(), list(hosts))
