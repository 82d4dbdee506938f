"""Periodic fleet tasks: thin wrappers around devices.metrics (queue `default`)."""

from __future__ import annotations

from celery import shared_task

from devices import authcache, metrics, overview, partitions


@shared_task(ignore_result=True)
def rollup_telemetry() -> int:
    return metrics.rollup()


@shared_task(ignore_result=True)
def detect_offline() -> int:
    return metrics.detect_offline()


@shared_task(ignore_result=True)
def flush_presence() -> int:
    return authcache.flush_presence()


@shared_task(ignore_result=True)
def check_latency() -> int:
    return metrics.check_latency()


@shared_task(ignore_result=True)
def check_drift() -> int:
    return metrics.check_drift()


@shared_task(ignore_result=True)
def apply_retention() -> dict:
    return metrics.apply_retention()


@shared_task(ignore_result=True)
def create_partitions() -> list[str]:
    return partitions.ensure_partitions()


@shared_task(ignore_result=True)
def sample_fleet() -> None:
    overview.sample_fleet()
