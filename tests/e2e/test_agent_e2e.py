"""The real agent and simulator against the real Django server (live_server).

Covers the device endpoints on main today (enroll, inventory, telemetry, logs).
The OTA endpoints (check-in, artifacts, status) are not on main yet: the agent
meets a 404 at check-in, logs it and keeps reporting.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices.agent.agent import Agent
from devices.agent.state import State
from tests.e2e.servers import run_agent, run_simulator

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def enrollment_token(transactional_db):
    from devices import services

    _row, value = services.create_enrollment_token(name="e2e", tags=["e2e"])
    return value


def agent_cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return run_agent([sys.executable, "-m", "devices.agent", *args], timeout)


def enrolled_state(live_server, token, root: Path) -> State:
    proc = agent_cli(
        "enroll",
        "--server",
        live_server.url,
        "--token",
        token,
        "--state-dir",
        str(root),
        "--name",
        "e2e-pi",
    )
    assert proc.returncode == 0, proc.stderr
    return State(root)


def test_cli_enrolls_and_reports_inventory_and_logs(live_server, enrollment_token, tmp_path):
    from devices.models import Device, LogLine
    from ota import keys

    state = enrolled_state(live_server, enrollment_token, tmp_path / "agent")
    device = Device.objects.get(uid=state.uid)
    assert device.name == "e2e-pi"
    assert {"arch", "cpu", "cpu_count", "onnxruntime", "agent_version"} <= set(device.inventory)
    assert state.pinned_keys()[0]["public_key"] == keys.public_key_b64()
    proc = agent_cli("run", "--once", "--state-dir", str(state.root))
    assert proc.returncode == 0, proc.stderr
    device.refresh_from_db()
    assert device.inventory["agent_version"] and "models" in device.inventory
    messages = list(LogLine.objects.filter(device=device).values_list("message", flat=True))
    assert any("starting" in m for m in messages), messages
    # Enrolling again with the same state is refused locally (the token stays unused).
    again = agent_cli(
        "enroll",
        "--server",
        live_server.url,
        "--token",
        enrollment_token,
        "--state-dir",
        str(state.root),
    )
    assert again.returncode == 1


def test_telemetry_buffered_offline_delivered_once(
    live_server, enrollment_token, tmp_path, settings
):
    from devices.models import Device, LogLine, TelemetryPoint

    state = enrolled_state(live_server, enrollment_token, tmp_path / "agent")
    device = Device.objects.get(uid=state.uid)
    agent = Agent(state, {"buffer_cap": {"telemetry": 20, "logs": 100, "status": 10}})
    try:
        agent.client.server = "http://127.0.0.1:9"  # the server is unreachable
        for i in range(30):
            agent.outbox.add(
                "telemetry",
                {
                    "ts": time.time(),
                    "latency_ms": 10.0 + i,
                    "inferences": i,
                    "model_version": "digits:1",
                },
            )
            agent.deliver_after = 0
            agent.deliver(kinds=("telemetry",))
        assert agent.buffer.count("telemetry") == 20  # E3: capped
        assert TelemetryPoint.objects.filter(device=device).count() == 0
        agent.client.server = live_server.url
        settings.DEVICE_MAX_BATCH_ITEMS = 6  # E5: the server answers 413 to bigger batches
        agent.deliver_after = 0
        agent.deliver()
        seqs = sorted(TelemetryPoint.objects.filter(device=device).values_list("seq", flat=True))
        assert seqs == list(range(11, 31))
        assert agent.buffer.count("telemetry") == 0
        assert LogLine.objects.filter(
            device=device, message__contains="dropped the 10 oldest"
        ).exists()
        # E1: a batch resent (e.g. its answer was lost) is stored once, same answer.
        # Records are resent unchanged (the key is device, boot, seq and ts).
        stored = TelemetryPoint.objects.filter(device=device, seq__in=(11, 12)).order_by("seq")
        items = [
            {"seq": p.seq, "boot_id": agent.boot_id, "ts": p.ts.timestamp(), "latency_ms": 1.0}
            for p in stored
        ]
        first = agent._send_telemetry(agent.boot_id, items, 0)
        second = agent._send_telemetry(agent.boot_id, items, 0)
        assert first.status == second.status == 200 and first.json() == second.json()
        assert TelemetryPoint.objects.filter(device=device).count() == 20
    finally:
        agent.close()


def test_revoked_device_keeps_its_buffer(live_server, enrollment_token, tmp_path):
    from devices import services
    from devices.models import Device

    state = enrolled_state(live_server, enrollment_token, tmp_path / "agent")
    services.revoke_device(Device.objects.get(uid=state.uid))
    agent = Agent(state)
    try:
        agent.outbox.add("telemetry", {"ts": time.time()})
        agent.deliver(kinds=("telemetry",))
        assert agent.buffer.count("telemetry") == 1  # 401: not dropped, retried later
        assert agent.deliver_after > time.monotonic()
    finally:
        agent.close()


def test_simulated_fleet_enrolls_and_reports(live_server, enrollment_token, tmp_path):
    from devices.models import Device

    proc = run_simulator(
        live_server.url,
        enrollment_token,
        tmp_path,
        "--devices",
        "3",
        "--duration-s",
        "10",
        "--poll-interval-s",
        "1",
        "--telemetry-interval-s",
        "1",
        "--uid-prefix",
        "sim-e2e",
        timeout=60,
    )
    uids = set(Device.objects.filter(uid__startswith="sim-e2e").values_list("uid", flat=True))
    assert uids == {"sim-e2e-00000", "sim-e2e-00001", "sim-e2e-00002"}, proc.stdout[-2000:]


@pytest.mark.services
def test_agent_telemetry_over_mqtt(transactional_db, mqtt_url, tmp_path):
    """Agent → Mosquitto → the server's bridge → stored; the batch leaves the buffer on ack."""
    import threading
    import uuid

    from devices import services
    from devices.models import TelemetryPoint
    from devices.mqtt import Bridge
    from ota import keys

    _row, value = services.create_enrollment_token(name="mqtt")
    device, token = services.enroll(value, {"uid": f"mqtt-{uuid.uuid4().hex[:8]}"})
    state = State(tmp_path / "agent").ensure()
    state.save_config({"server": "http://127.0.0.1:9"})  # HTTP unused for telemetry here
    state.save_credential(device.uid, token)
    state.pin_key(keys.public_key_b64())
    bridge = Bridge(mqtt_url, client_id=f"e2e-bridge-{uuid.uuid4().hex[:8]}", persistent=False)
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    assert bridge.subscribed.wait(10)
    agent = Agent(state, {"mqtt_url": mqtt_url})
    try:
        for i in range(25):
            agent.outbox.add("telemetry", {"ts": time.time(), "latency_ms": 5.0 + i})
        agent.deliver(kinds=("telemetry",))
        assert agent.buffer.count("telemetry") == 0
        assert TelemetryPoint.objects.filter(device=device).count() == 25
    finally:
        agent.close()
        bridge.stop()
        thread.join(10)
