"""Real agents (onnxruntime) and the simulator against the real server's OTA flow.

live_server runs Django in this process; each agent is a separate process that
enrolls with the CLI and runs `edgefleet-agent run --once`: check-in, verify,
download, install, health check, report, telemetry — all over HTTP.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from devices.agent.state import State
from tests.agent.conftest import tiny_model
from tests.conftest import tiny_model_bytes
from tests.e2e.servers import run_agent, run_simulator, summary

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _server(settings, transactional_db):
    import importlib

    from django.apps import apps

    importlib.import_module("devices.migrations.0002_seed_hardware_profiles").seed(apps, None)
    settings.OTA_POLL_INTERVAL_S = 1


@pytest.fixture
def enrollment_token():
    from devices import services

    return services.create_enrollment_token(name="e2e-ota")[1]


def stored_version(name: str, data: bytes, *, p95: float):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from compression.models import MLModel, ModelVersion

    sha = hashlib.sha256(data).hexdigest()
    path = f"models/{sha}.onnx"
    if not default_storage.exists(path):
        default_storage.save(path, ContentFile(data))
    model, _ = MLModel.objects.get_or_create(name=name)
    return ModelVersion.objects.create(
        model=model,
        number=model.versions.count() + 1,
        artifact=path,
        sha256=sha,
        size_bytes=len(data),
        metrics={"latency_ms": {"p50": p95 / 2, "p95": p95}},
    )


def agent_cli(*args, timeout=180) -> subprocess.CompletedProcess:
    proc = run_agent([sys.executable, "-m", "devices.agent", *args], timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def enroll_agents(live_server, token, tmp_path, count: int) -> list[State]:
    states = []
    for i in range(count):
        root = tmp_path / f"agent-{i}"
        agent_cli(
            "enroll",
            "--server",
            live_server.url,
            "--token",
            token,
            "--state-dir",
            str(root),
            "--uid",
            f"e2e-pi-{i}",
            "--hardware-profile",
            "rpi4",
        )
        states.append(State(root))
    return states


def deploy(version, uids, admin_user, **kwargs):
    from ota import services

    release = services.create_release(
        name=f"{version.model.name} v{version.number}",
        variants=[{"name": "default", "model_version": version.pk}],
        actor=admin_user,
    )
    return services.start_deployment(release, {"devices": uids}, actor=admin_user, **kwargs)


def run_all(states) -> None:
    for state in states:
        agent_cli("run", "--once", "--state-dir", str(state.root))


def active_sha(state: State, slot: str = "default") -> str | None:
    pointer = state.pointer(slot)
    return pointer["variants"][pointer["active"]]["sha256"] if pointer else None


def updates(deployment) -> dict[str, tuple[str, str]]:
    return {
        u.device.uid: (u.state, u.error_code) for u in deployment.updates.select_related("device")
    }


def test_three_agents_install_report_and_the_deployment_completes(
    live_server, enrollment_token, admin_user, tmp_path
):
    from devices.models import Device, TelemetryPoint
    from ota import services

    states = enroll_agents(live_server, enrollment_token, tmp_path, 3)
    v2 = stored_version("digits", tiny_model_bytes(2), p95=1000.0)
    deployment = deploy(v2, [s.uid for s in states], admin_user)
    run_all(states)
    assert set(updates(deployment).values()) == {("succeeded", "")}
    assert all(active_sha(s) == v2.sha256 for s in states)
    label = f"digits:{v2.number}"
    assert TelemetryPoint.objects.filter(model_version=label).count() >= 3
    for device in Device.objects.filter(uid__in=[s.uid for s in states]):
        assert device.inventory["models"]["default"]["sha256"] == v2.sha256
    assert services.evaluate_deployment(deployment) == "completed"
    # The next check-in has nothing new: 304/no-op, nothing downloaded again.
    run_all(states[:1])
    assert updates(deployment)[states[0].uid] == ("succeeded", "")


def test_failed_health_check_rolls_back_and_pauses_the_deployment(
    live_server, enrollment_token, admin_user, tmp_path
):
    from ota import services

    states = enroll_agents(live_server, enrollment_token, tmp_path, 2)
    good = stored_version("digits", tiny_model_bytes(3), p95=1000.0)
    run_all(states)  # nothing assigned yet
    first = deploy(good, [s.uid for s in states], admin_user)
    run_all(states)
    assert set(updates(first).values()) == {("succeeded", "")}
    bad = stored_version("digits", tiny_model(nan=True), p95=1000.0)
    second = deploy(bad, [s.uid for s in states], admin_user)
    run_all(states)
    assert set(updates(second).values()) == {("rolled_back", "health_check")}
    assert all(active_sha(s) == good.sha256 for s in states)  # the old model runs on
    second.refresh_from_db()
    assert "not finite" in second.updates.first().error
    assert services.evaluate_deployment(second) == "paused"
    second.refresh_from_db()
    assert second.status == "paused" and second.pause_reason


def test_tampered_artifact_is_refused_and_reported(
    live_server, enrollment_token, admin_user, tmp_path
):
    from django.core.files.storage import default_storage

    (state,) = enroll_agents(live_server, enrollment_token, tmp_path, 1)
    version = stored_version("digits", tiny_model_bytes(4), p95=1000.0)
    deployment = deploy(version, [state.uid], admin_user)
    # Tamper through the storage API so this works on local disk and on S3 alike.
    from django.core.files.base import ContentFile

    with default_storage.open(version.artifact, "rb") as fh:
        data = bytearray(fh.read())
    data[100] ^= 0xFF
    default_storage.delete(version.artifact)
    assert default_storage.save(version.artifact, ContentFile(bytes(data))) == version.artifact
    run_all([state])
    assert updates(deployment)[state.uid] == ("failed", "hash_mismatch")
    assert active_sha(state) is None
    assert not list(state.model_dir("default").glob("*.onnx"))


def test_simulated_bad_variant_trips_the_latency_gate(
    live_server, enrollment_token, admin_user, tmp_path
):
    from ota import services

    def simulate(*extra):
        common = ("--devices", "3", "--uid-prefix", "sim", "--hardware-profile", "rpi4")
        pace = ("--poll-interval-s", "1", "--telemetry-interval-s", "0.5", "--ramp-s", "0.2")
        args = (*common, *pace, "--base-latency-ms", "20", *extra)
        return summary(run_simulator(live_server.url, enrollment_token, tmp_path, *args))

    assert simulate("--duration-s", "1.5")["enrolled"] == 3
    version = stored_version("digits", tiny_model_bytes(5), p95=20.0)
    deployment = deploy(version, [f"sim-{i:05d}" for i in range(3)], admin_user)
    ran = simulate("--duration-s", "5", "--fault", "bad-variant", "--bad-variant", "default")
    assert ran["update_succeeded"] == 3
    assert set(updates(deployment).values()) == {("succeeded", "")}
    assert services.evaluate_deployment(deployment) == "paused"
    deployment.refresh_from_db()
    assert "latency" in deployment.pause_reason.lower()


def test_sigkill_during_download_then_restart_resumes_with_range(
    live_server, enrollment_token, admin_user, tmp_path
):
    import onnx
    from django.core.signals import request_started

    from tests.agent.test_crash import assert_consistent, run_until_paused

    ranges = []

    def record(sender, environ=None, **kwargs):
        if environ and "/device/artifacts/" in environ.get("PATH_INFO", ""):
            ranges.append(environ.get("HTTP_RANGE"))

    request_started.connect(record)
    try:
        (state,) = enroll_agents(live_server, enrollment_token, tmp_path, 1)
        model = onnx.load_from_string(tiny_model_bytes(6))
        model.doc_string = "x" * 600_000  # many chunks to cut in the middle of
        data = model.SerializeToString()
        version = stored_version("digits", data, p95=1000.0)
        deployment = deploy(version, [state.uid], admin_user)
        run_until_paused(state, "download:65536", tmp_path / "marker")
        part = state.download_path(version.sha256)
        k = part.stat().st_size
        assert 0 < k < len(data) and state.pointer("default") is None
        run_all([state])
    finally:
        request_started.disconnect(record)
    assert ranges[0] is None and ranges[-1] == f"bytes={k}-"
    assert assert_consistent(state, "default") == data
    assert updates(deployment)[state.uid] == ("succeeded", "")


def test_rollback_restores_the_previous_version_from_disk(
    live_server, enrollment_token, admin_user, tmp_path
):
    from django.core.signals import request_started

    from ota import services

    states = enroll_agents(live_server, enrollment_token, tmp_path, 2)
    old = stored_version("digits", tiny_model_bytes(7), p95=1000.0)
    new = stored_version("digits", tiny_model_bytes(8), p95=1000.0)
    deploy(old, [s.uid for s in states], admin_user)
    run_all(states)
    second = deploy(new, [s.uid for s in states], admin_user)
    run_all(states)
    assert all(active_sha(s) == new.sha256 for s in states)
    downloads = []

    def record(sender, environ=None, **kwargs):
        if environ and "/device/artifacts/" in environ.get("PATH_INFO", ""):
            downloads.append(environ["PATH_INFO"])

    request_started.connect(record)
    try:
        back = services.rollback(second, actor=admin_user)
        run_all(states)
    finally:
        request_started.disconnect(record)
    assert set(updates(back).values()) == {("succeeded", "")}
    assert all(active_sha(s) == old.sha256 for s in states)
    assert downloads == []  # the previous version was kept on the device


def test_upload_answers_stand_for_polls_until_an_update_is_assigned(
    live_server, enrollment_token, admin_user, tmp_path, settings
):
    """The agent learns the upload interval at check-in; an upload answer with its own
    ETag defers the next poll, one after an assignment makes it poll at once."""
    import time

    from devices.agent.agent import Agent
    from devices.models import TelemetryPoint

    settings.OTA_POLL_INTERVAL_S = 30
    settings.DEVICE_UPLOAD_INTERVAL_S = 45
    (state,) = enroll_agents(live_server, enrollment_token, tmp_path, 1)
    agent = Agent(state)
    try:
        agent.check_in()
        assert agent.upload_pacer.interval_s == 45
        agent.next_poll = time.monotonic() + 1
        agent.outbox.add("telemetry", {"ts": time.time(), "inferences": 1})
        agent.deliver()
        assert agent.next_poll - time.monotonic() >= 29  # the upload stood for that poll
        v2 = stored_version("digits", tiny_model_bytes(2), p95=1000.0)
        deploy(v2, [state.uid], admin_user)
        agent.outbox.add("telemetry", {"ts": time.time(), "inferences": 2})
        agent.deliver()
        assert agent.next_poll <= time.monotonic()  # an update waits: poll now
        assert TelemetryPoint.objects.filter(device__uid=state.uid).count() == 2
    finally:
        agent.close()
