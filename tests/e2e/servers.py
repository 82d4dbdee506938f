"""Servers the end-to-end tests start in subprocesses against the test database:
gunicorn (`web_env` + `benchmarks._harness.start_gunicorn`), a Celery worker, and
an enrolled device's token to call them with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from django.db import connection

from tests.compression import jobs_support
from tests.conftest import need_service

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The test database for a subprocess: PostgreSQL only (a server shares it)."""
    if connection.vendor != "postgresql":
        need_service("PostgreSQL", "a server in a subprocess needs a shared database")
    return jobs_support.database_url()


def web_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a gunicorn serving the test database (a subprocess):
    production settings behind a proxy on loopback, no broker, no MQTT, no device
    throttle; plus `extra`."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": "memory://",
        "DEBUG": "0",
        "LOG_LEVEL": "ERROR",
        "THROTTLE_DEVICE": "100000/min",
        "TRUSTED_PROXIES": "127.0.0.1",
        "EDGEFLEET_VAR_DIR": str(var_dir),
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
        **extra,
    }
    env.pop("MQTT_URL", None)
    return env


def start_worker(env: dict, queue: str, name: str, *extra: str, stderr=subprocess.DEVNULL):
    """`celery -A fleet worker` on `queue` alone, two pool processes, node `name`, in
    its own process group (`benchmarks._harness.stop` stops it)."""
    return subprocess.Popen(
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
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )


def enrolled_device_token(actor, uid: str) -> str:
    """The bearer token of a new device `uid`."""
    from devices import services

    _pk, token = services.create_enrollment_token(name=uid, actor=actor)
    _device, device_token = services.enroll(token, {"uid": uid})
    return device_token


def agent_env() -> dict[str, str]:
    """The environment of an agent or simulator subprocess (Django-free)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def simulate_command(server: str, token: str, tmp_path: Path, *args: str) -> list[str]:
    """`devices.agent.simulate` enrolling with `token` at `server`, its state in
    `tmp_path`/fleet.json (a second run goes on with the same devices)."""
    return [
        sys.executable,
        "-m",
        "devices.agent.simulate",
        "--server",
        server,
        "--enrollment-token",
        token,
        "--state-file",
        str(tmp_path / "fleet.json"),
        *args,
    ]


def run_agent(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """An agent-side `command` (agent CLI, simulator) run to its end, output captured."""
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=agent_env(),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def run_simulator(server: str, token: str, tmp_path: Path, *args: str, timeout: float = 120):
    """A simulator run to its end (`--duration-s` in `args`), which must succeed."""
    proc = run_agent(simulate_command(server, token, tmp_path, *args), timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def summary(proc) -> dict:
    """The JSON summary a simulator run prints last."""
    return json.loads(proc.stdout[proc.stdout.index("{") :])
