"""Two real Celery workers (separate processes and node names, two pool processes
each) receive the same periodic task several times at once: the gate task moves
a deployment one phase and assigns its devices once; the partition task creates
each day once (PostgreSQL); the offline sweep opens one alert per silent device;
the overview takes one fleet sample."""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from benchmarks._harness import stop
from devices.choices import AlertKind, DeviceStatus
from devices.models import Alert, Device, FleetSample
from ota import services
from ota.choices import UpdateState
from ota.models import Deployment, DeviceUpdate
from tests.compression.jobs_support import database_url, wait_for
from tests.e2e.servers import start_worker
from tests.ota.conftest import finish

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
COPIES = 8


def workers(tmp_path, broker: str, queue: str) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker,
        "EDGEFLEET_VAR_DIR": str(tmp_path / "var"),
        "LOG_LEVEL": "WARNING",
        "MEDIA_ROOT": str(tmp_path / "media"),
        # the signing key in the test database is encrypted with the test's secret
        "SECRET_KEY": settings.SECRET_KEY,
        "SERVER_KEY_PASSPHRASE": settings.SERVER_KEY_PASSPHRASE,
    }
    env.pop("MQTT_URL", None)
    return [
        start_worker(
            env,
            queue,
            f"{queue}-{n}",
            "--loglevel",
            "WARNING",
            stderr=open(tmp_path / f"worker-{n}.log", "wb"),
        )
        for n in range(2)
    ]


def drained(client: redis.Redis, queue: str) -> bool:
    """Nothing waiting and nothing delivered but unacknowledged (acks_late)."""
    return client.llen(queue) == 0 and client.hlen("unacked") == 0


def test_periodic_tasks_run_once_per_tick_with_two_workers(
    tmp_path, redis_url, fleet, release, operator_user
):
    from celery import Celery

    if connection.vendor != "postgresql":
        pytest.skip("worker processes share the test database on PostgreSQL")
    deployment = services.start_deployment(
        release,
        {"tags": ["cam"]},
        actor=operator_user,
        phases=[10, 50, 100],
        gates={"max_latency_ratio": None, "min_successful": 1},
    )
    (first,) = deployment.updates.exclude(state=UpdateState.QUEUED)
    finish(first)  # phase 1's gate now passes
    step = Deployment.objects.get(pk=deployment.pk).step
    silent = [device.pk for device, _token in fleet[:4]]
    Device.objects.filter(pk__in=silent).update(
        status=DeviceStatus.ONLINE, last_seen=timezone.now() - timedelta(days=1)
    )
    queue = f"two-workers-{os.getpid()}"
    client = redis.Redis.from_url(redis_url)
    procs = workers(tmp_path, redis_url, queue)
    try:
        sender = Celery(broker=redis_url)
        for _ in range(COPIES):  # overlapping ticks, redeliveries, two beats by mistake
            sender.send_task("ota.tasks.evaluate_deployments", queue=queue)
            sender.send_task("devices.tasks.create_partitions", queue=queue)
            sender.send_task("devices.tasks.detect_offline", queue=queue)
            sender.send_task("devices.tasks.sample_fleet", queue=queue)
        wait_for(lambda: client.llen(queue) == 0, 120, "the workers took every message")
        wait_for(lambda: drained(client, queue), 120, "every message acknowledged")
    finally:
        for proc in procs:
            stop(proc)
    for n in range(2):
        log = (tmp_path / f"worker-{n}.log").read_text()
        assert "Traceback" not in log, log[-3000:]
    deployment.refresh_from_db()
    assert (deployment.current_phase, deployment.step) == (1, step + 1)  # moved once
    assigned = DeviceUpdate.objects.filter(deployment=deployment).exclude(state=UpdateState.QUEUED)
    assert assigned.count() == 5  # phase 2 = 50 % of 10 devices, each assigned once
    assert assigned.values("device").distinct().count() == 5
    alerts = Alert.objects.filter(kind=AlertKind.OFFLINE)
    assert sorted(alerts.values_list("device", flat=True)) == sorted(silent)  # one each
    assert set(Device.objects.filter(pk__in=silent).values_list("status", flat=True)) == {
        DeviceStatus.OFFLINE
    }
    assert FleetSample.objects.count() == 1  # one overview sample for the tick
