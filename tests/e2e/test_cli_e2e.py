"""A CI pipeline's whole story through the `edgefleet` CLI, against a real server, a real
Celery worker (compression jobs, and beat for the rollout gates) and simulated devices.

The CLI runs as a separate process with a `ci` token, exactly as a pipeline would:
push the demo model → compress with a KPI it meets (exit 0) and one it cannot (exit 3)
→ release the chosen variant → a phased canary deployment that completes (exit 0) →
one whose gate pauses it (exit 3, reason printed).

The simulator reports the same latency whatever the model, so the completing
deployment leaves the latency gate off and the pausing one asks for an on-device p95
of at most 0.01 x the server's estimate, which no device meets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import PUSH_DEMO
from tests.compression.jobs_support import live_worker_env, wait_for
from tests.e2e.servers import ROOT, agent_env, simulate_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420), pytest.mark.django_db(transaction=True)]
CELERY = str(Path(sys.executable).with_name("celery"))
DEVICES = 6  # a 10 % canary is 1 device: under the 20 % reach an ungated phase may have


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@pytest.fixture
def worker(tmp_path, settings):
    """One worker on both queues with beat: jobs, and the gate task every 5 s."""
    env = live_worker_env(
        tmp_path,
        settings,
        ("compression", "default"),
        OTA_GATE_INTERVAL_S="5",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                CELERY,
                "-A",
                "fleet",
                "worker",
                "-B",
                "-Q",
                "compression,default",
                "-c",
                "1",
                "-n",
                "cli-e2e@%h",
                "-s",
                str(tmp_path / "beat-schedule"),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.log_path = log_path
    try:
        wait_for(lambda: b"ready." in log_path.read_bytes(), 90, "worker ready", proc)
        yield proc
    finally:
        _stop(proc)


@pytest.fixture
def server(live_server, settings, transactional_db):
    import importlib

    from django.apps import apps

    importlib.import_module("devices.migrations.0002_seed_hardware_profiles").seed(apps, None)
    settings.OTA_POLL_INTERVAL_S = 1
    # The worker advances phases and forgets cached check-in answers under its own cache
    # keys; this process's cache has a per-test key prefix, so keep its answers short-lived.
    settings.OTA_CHECKIN_CACHE_S = 1
    return live_server.url


@pytest.fixture
def fleet(server, tmp_path):
    """DEVICES simulated rpi4 devices in group `ci-canary`, polling every second."""
    from devices import services
    from devices.models import Device, DeviceGroup

    group = DeviceGroup.objects.create(name="ci-canary")
    token = services.create_enrollment_token(name="ci-e2e", group=group)[1]
    with open(tmp_path / "simulator.log", "wb") as log:
        proc = subprocess.Popen(
            simulate_command(
                server,
                token,
                tmp_path,
                "--devices",
                str(DEVICES),
                "--uid-prefix",
                "ci",
                "--hardware-profile",
                "rpi4",
                "--poll-interval-s",
                "1",
                "--telemetry-interval-s",
                "0.5",
                "--ramp-s",
                "0.2",
                "--duration-s",
                "400",
            ),
            env=agent_env(),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: Device.objects.filter(group=group).count() == DEVICES,
            60,
            "simulated devices enrolled",
            proc,
        )
        yield group
    finally:
        _stop(proc, signal.SIGINT)


@pytest.fixture
def ci_token(transactional_db) -> str:
    """A pipeline's token: `manage.py api_token ci-bot --role ci`."""
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("api_token", "ci-bot", "--role", "ci", stdout=out)
    return out.getvalue().strip()


@pytest.fixture
def edgefleet(server, ci_token, tmp_path):
    """Run the CLI as a pipeline would: its own process, configured by environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE"))}
    env.update(
        EDGEFLEET_URL=server,
        EDGEFLEET_TOKEN=ci_token,
        PYTHONPATH=str(ROOT),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )

    def run(*args, timeout=300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "fleet.cli", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=timeout,
            check=False,
        )
        print(
            f"$ edgefleet {' '.join(map(str, args))}  -> {proc.returncode}\n{proc.stdout}"
            f"{proc.stderr}"
        )
        return proc

    return run


def test_pipeline_push_compress_gate_release_and_canary(edgefleet, worker, fleet):
    from ota.models import Deployment

    pushed = edgefleet(*PUSH_DEMO)
    assert pushed.returncode == 0, pushed.stderr
    version = int(pushed.stdout)
    again = edgefleet(*PUSH_DEMO)
    assert (again.returncode, int(again.stdout)) == (0, version)

    met = edgefleet(
        "compress",
        version,
        "--recipe",
        "int8-static",
        "--recipe",
        "fp16",
        "--profile",
        "rpi4",
        "--min-fidelity",
        "0.5",
        "--max-size-mb",
        "50",
        "--time-budget",
        "120",
        "--wait",
        "--timeout",
        "240",
    )
    assert met.returncode == 0, met.stderr
    assert "int8-static" in met.stdout and "meets KPIs" in met.stdout
    assert "job " in met.stderr and " 100% " in met.stderr  # plain progress lines, no TTY
    job = int(met.stderr.split("job ", 1)[1].split()[0])

    missed = edgefleet(
        "compress",
        version,
        "--recipe",
        "fp16",
        "--profile",
        "rpi4",
        "--max-latency-ms",
        "0.0001",
        "--time-budget",
        "120",
        "--wait",
        "--timeout",
        "240",
        "--json",
    )
    assert missed.returncode == 3, missed.stderr
    report = json.loads(missed.stdout)
    assert report["meets_kpis"] is False and report["exit_code"] == 3
    assert all("p50" in " ".join(c["violations"]) for c in report["job"]["candidates"])

    released = edgefleet("release", "create", "--from-job", job)
    assert released.returncode == 0, released.stderr
    release = int(released.stdout)

    done = edgefleet(
        "deploy",
        release,
        "--group",
        "ci-canary",
        "--phases",
        "10,50,100",
        "--max-latency-ratio",
        "off",
        "--wait",
        "--timeout",
        "180",
    )
    assert done.returncode == 0, done.stderr
    deployment = Deployment.objects.get(pk=int(done.stdout))
    assert deployment.status == "completed" and deployment.target_count == DEVICES
    assert set(deployment.updates.values_list("state", flat=True)) == {"succeeded"}
    assert "phase 3/3" in done.stderr and "completed" in done.stderr

    original = edgefleet(
        "release", "create", "--from-job", job, "--recipe", "fp32", "--name", "digits-cnn original"
    )
    assert original.returncode == 0, original.stderr
    paused = edgefleet(
        "deploy",
        int(original.stdout),
        "--group",
        "ci-canary",
        "--phases",
        "10,100",
        "--max-latency-ratio",
        "0.01",
        "--wait",
        "--timeout",
        "180",
    )
    assert paused.returncode == 3, paused.stderr
    stopped = Deployment.objects.get(pk=int(paused.stdout))
    assert stopped.status == "paused" and stopped.current_phase == 0
    assert "paused: Phase 1 gate failed: on-device p95 latency" in paused.stderr

    status = edgefleet("status")
    assert status.returncode == 0 and f"devices: {DEVICES} online" in status.stdout
    assert "paused" in status.stdout and "completed" in status.stdout
    logs = edgefleet("logs", "ci-00000")
    assert logs.returncode == 0


def test_the_ci_token_cannot_deploy_fleet_wide(edgefleet, fleet):
    from ota import services
    from ota.models import Deployment
    from tests.ota.conftest import make_version

    release = services.create_release(
        name="wide", variants=[{"model_version": make_version(seed=9).pk}]
    )
    wide = edgefleet("deploy", release.pk, "--group", "ci-canary", "--phases", "100")
    assert wide.returncode == 2
    assert "permission denied (403)" in wide.stderr and "canary" in wide.stderr
    assert not Deployment.objects.exists()
    missing = edgefleet("release", "create", "--from-job", 999_999)
    assert missing.returncode == 2 and "unknown compression job" in missing.stderr
