"""Metrics from real processes: gunicorn workers counted together (multiprocess
mode), and a Celery worker's task failures on its internal metrics port."""

from __future__ import annotations

import http.client
import os
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._harness import free_port, start_gunicorn, stop
from tests.compression.jobs_support import wait_for
from tests.conftest import port_open
from tests.e2e.servers import enrolled_device_token, start_worker, web_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
TOKEN = "scrape-secret"
CHECKINS = 24


def sample(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return item.value
    return 0.0


def test_gunicorn_workers_are_counted_together(db, admin_user, tmp_path):
    device_token = enrolled_device_token(admin_user, "metrics-e2e")
    port = free_port()
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "counter_stale.db").write_bytes(b"left by a previous run")
    env = web_env(
        tmp_path / "var", METRICS_TOKEN=TOKEN, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom")
    )
    web = start_gunicorn(env, port, 3, timeout_s=90)
    try:
        for _ in range(CHECKINS):  # a new connection each: the workers share them
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(
                "GET", "/api/v1/device/update", headers={"Authorization": f"Bearer {device_token}"}
            )
            assert conn.getresponse().status in (200, 204)
            conn.close()
        pids = {p.name.split("_")[-1] for p in (tmp_path / "prom").glob("counter_*.db")}
        assert "stale.db" not in pids  # the directory was emptied at start
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        text = urllib.request.urlopen(request, timeout=30).read().decode()
        served = sum(
            sample(text, "edgefleet_device_requests_total", endpoint="device-update", status=status)
            for status in ("200", "204")
        )
        assert served == CHECKINS  # whichever worker answered the scrape
        assert sample(text, "edgefleet_devices", state="online") == 1
    finally:
        stop(web)


def test_worker_counts_task_failures_on_its_port(tmp_path, redis_url):
    """A worker whose database is gone: every task fails, and its metrics port says so."""
    from celery import Celery

    broker = redis_url
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/absent",
        "CELERY_BROKER_URL": broker,
        "METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "EDGEFLEET_VAR_DIR": str(tmp_path / "var"),
        "LOG_LEVEL": "ERROR",
    }
    env.pop("MQTT_URL", None)
    queue = f"metrics-{port}"
    worker = start_worker(env, queue, queue)
    try:
        wait_for(lambda: port_open("127.0.0.1", port, 0.2), 90, "the worker's metrics port")
        sender = Celery(broker=broker)
        for _ in range(3):
            sender.send_task("devices.tasks.detect_offline", queue=queue)

        def failures() -> float:
            url = f"http://127.0.0.1:{port}/metrics"
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            return sample(
                text, "edgefleet_celery_task_failures_total", task="devices.tasks.detect_offline"
            )

        wait_for(lambda: failures() == 3, 120, "three failures counted")
    finally:
        stop(worker)
