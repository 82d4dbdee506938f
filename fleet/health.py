"""Is a worker alive? A heartbeat the worker writes, the web reads.

A beat task (`fleet.tasks.worker_heartbeat`, every WORKER_HEARTBEAT_S) runs on
the default queue, so a fresh heartbeat means broker, beat and a worker all
work; the worker also notes itself when it starts. Celery's own inspect ping
costs a broadcast round trip per page; this costs one cache or file read.
With a shared cache (Redis) the heartbeat lives there; with the embedded,
per-process memory cache it is a file in EDGEFLEET_VAR_DIR.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.conf import settings
from django.core.cache import cache

CACHE_KEY = "fleet:worker:seen"


def _shared_cache() -> bool:
    return "locmem" not in settings.CACHES["default"]["BACKEND"].lower()


def _file() -> Path:
    return Path(settings.VAR_DIR) / "worker-heartbeat"


def note_worker(now: float | None = None) -> None:
    now = time.time() if now is None else now
    if _shared_cache():
        cache.set(CACHE_KEY, now, timeout=None)
        return
    path = _file()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(repr(now))
    tmp.replace(path)


def worker_last_seen() -> float | None:
    if _shared_cache():
        try:
            value = cache.get(CACHE_KEY)
        except Exception:  # Redis down: say "unknown", never break a page
            return None
        return float(value) if value is not None else None
    try:
        return float(_file().read_text())
    except (OSError, ValueError):
        return None


def worker_down(now: float | None = None) -> bool:
    """No worker seen for WORKER_STALE_S (never, counts too). Eager mode has none."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return False
    seen = worker_last_seen()
    now = time.time() if now is None else now
    return seen is None or now - seen > settings.WORKER_STALE_S


def queue_depth(queue: str) -> int | None:
    """Messages waiting in `queue`; None when the broker cannot say."""
    url = settings.CELERY_BROKER_URL
    try:
        if url.startswith("filesystem://"):
            from fleet.broker import queue_depth as files

            return files(queue, settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
            return int(client.llen(queue))
    except Exception:  # a health read must never break a page
        return None
    return None


def worker_context(request) -> dict:
    """Template context: `worker_down` for the banner on every operator page."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {"worker_down": worker_down(), "worker_stale_s": settings.WORKER_STALE_S}
