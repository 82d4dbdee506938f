"""Metrics from real processes: gunicorn workers counted together (multiprocess
mode), and a Celery worker's task failures on its internal metrics port."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import port_open
from tests.e2e.test_reverse_proxy import ROOT, database_url, free_port, stop, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
TOKEN = "scrape-secret"
CHECKINS = 24


def sample(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return item.value
    return 0.0


@pytest.fixture
def device_token(db, admin_user):
    from devices import services

    _pk, token = services.create_enrollment_token(name="metrics", actor=admin_user)
    _device, device_token = services.enroll(token, {"uid": "metrics-e2e"})
    return device_token


def test_gunicorn_workers_are_counted_together(device_token, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "WEB_BIND": f"127.0.0.1:{port}",
        "WEB_WORKERS": "3",
        "CELERY_BROKER_URL": "memory://",
        "LOG_LEVEL": "ERROR",
        "THROTTLE_DEVICE": "100000/min",
        "EDGEFLEET_VAR_DIR": str(tmp_path / "var"),
        "METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "counter_stale.db").write_bytes(b"left by a previous run")
    env.pop("MQTT_URL", None)
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:fleet.gunicorn", "fleet.wsgi"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: port_open("127.0.0.1", port, 0.2), 90, "gunicorn")
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
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "fleet",
            "worker",
            "-Q",
            queue,
            "-c",
            "2",
            "-n",
            f"metrics-{port}@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: port_open("127.0.0.1", port, 0.2), 90, "the worker's metrics port")
        sender = Celery(broker=broker)
        for _ in range(3):
            sender.send_task("devices.tasks.detect_offline", queue=queue)

        def failures() -> float:
            url = f"http://127.0.0.1:{port}/metrics"
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            return sample(
                text, "edgefleet_celery_task_failures_total", task="devices.tasks.detect_offline"
            )

        wait_until(lambda: failures() == 3, 120, "three failures counted")
    finally:
        stop(worker)
