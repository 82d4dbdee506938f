"""Shared setup for the compression job tests: the demo model with its datasets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from django.db import connection

from compression import services
from compression.choices import DatasetPurpose, ModelTask
from compression.models import Dataset, ModelVersion
from tests.conftest import FIXTURES

FAST_RECIPES = ["int8-static", "fp16"]


@dataclass
class Demo:
    version: ModelVersion
    calibration: Dataset
    evaluation: Dataset


def load_demo(name: str = "digits-cnn") -> Demo:
    model = services.create_model(name=name, task=ModelTask.CLASSIFICATION)
    version = services.register_version(
        model, FIXTURES / "digits_cnn.onnx", original_filename="digits_cnn.onnx"
    ).version
    datasets = {
        purpose: services.register_dataset(
            FIXTURES / filename,
            name=f"digits-{purpose}",
            purpose=purpose,
            original_filename=filename,
            model=model,
        )
        for purpose, filename in (
            (DatasetPurpose.CALIBRATION, "digits_calibration.npz"),
            (DatasetPurpose.EVALUATION, "digits_eval.npz"),
        )
    }
    return Demo(version, datasets["calibration"], datasets["evaluation"])


def job_payload(demo: Demo, **extra) -> dict:
    return {
        "source": demo.version.pk,
        "mode": "recipes",
        "recipes": FAST_RECIPES,
        "calibration": demo.calibration.pk,
        "evaluation": demo.evaluation.pk,
        "time_budget_s": 120,
        **extra,
    }


CELERY = str(Path(sys.executable).with_name("celery"))


def database_url() -> str:
    """The test database as a DATABASE_URL a worker subprocess can open."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def live_worker_env(tmp_path, settings, queues: tuple[str, ...], **extra: str) -> dict[str, str]:
    """The environment of a worker that serves this test's live server: its database,
    media directory and broker (the live server enqueues through it), a job directory
    under `tmp_path`; `queues` are emptied of earlier runs' leftovers."""
    # Local storage: the worker shares this test's media directory. On S3 the
    # "location" option is a key prefix (inherited through AWS_LOCATION), not a path.
    default = settings.STORAGES["default"]
    media = (
        Path(default["OPTIONS"]["location"])
        if default["BACKEND"].endswith("FileSystemStorage")
        else tmp_path / "media"
    )
    media.mkdir(parents=True, exist_ok=True)
    settings.EDGEFLEET_JOB_DIR = tmp_path / "jobs"
    from fleet.celery import app

    with app.connection_for_write() as conn:
        for queue in queues:
            with contextlib.suppress(Exception):  # a queue that does not exist yet
                conn.default_channel.queue_purge(queue)
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": str(media),
        "EDGEFLEET_JOB_DIR": str(tmp_path / "jobs"),
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
        "EDGEFLEET_VAR_DIR": str(settings.VAR_DIR),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        **extra,
    }


def wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: worker exited\n" + proc.log_path.read_text()[-3000:])
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class WorkerPool:
    """Real `celery -A fleet worker` processes on the compression queue, stopped at the end."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env = logs, env
        self.procs: list[subprocess.Popen] = []
        self.files: list = []

    def start(self, name: str, **extra: str) -> subprocess.Popen:
        log_path = self.logs / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in stop_all
        self.files.append(log)
        proc = subprocess.Popen(
            [
                CELERY,
                "-A",
                "fleet",
                "worker",
                "-Q",
                "compression",
                "-c",
                "1",
                "-P",
                "prefork",
                "-n",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            env={**self.env, **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stop_all reaches the pool children too
        )
        proc.log_path = log_path
        self.procs.append(proc)
        wait_for(lambda: b"ready." in log_path.read_bytes(), 60, f"worker {name} ready", proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for log in self.files:
            log.close()
