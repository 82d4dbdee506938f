"""The CLI and main loop against the peer: enroll, run once, report, buffer offline."""

from __future__ import annotations

import json
import stat
import time

from devices.agent import cli
from devices.agent.agent import Agent
from devices.agent.state import State
from tests.agent.peer import DEVICE_UID


def enroll(peer, tmp_path, capsys) -> State:
    root = tmp_path / "agent"
    assert (
        cli.main(
            [
                "enroll",
                "--server",
                peer.url,
                "--token",
                "enroll-me",
                "--state-dir",
                str(root),
                "--name",
                "pi-1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    return State(root)


def test_enroll_stores_credential_and_pinned_key(peer, tmp_path, capsys):
    state = enroll(peer, tmp_path, capsys)
    assert state.uid == DEVICE_UID and state.enrolled
    assert state.pinned_keys()[0]["public_key"] == peer.public_b64
    assert stat.S_IMODE((state.root / "credential.json").stat().st_mode) == 0o600
    sent = peer.enrollments[0]
    assert sent["token"] == "enroll-me" and sent["facts"]["name"] == "pi-1"
    facts = sent["facts"]
    assert {
        "arch",
        "cpu",
        "cpu_count",
        "os",
        "agent_version",
        "onnxruntime",
        "execution_providers",
    } <= set(facts)
    assert "CPUExecutionProvider" in facts["execution_providers"]


def test_enroll_refused(peer, tmp_path, capsys):
    code = cli.main(
        ["enroll", "--server", peer.url, "--token", "wrong", "--state-dir", str(tmp_path / "a")]
    )
    assert code == 1
    assert "refused" in capsys.readouterr().err
    assert not State(tmp_path / "a").enrolled


def test_run_once_installs_runs_and_reports(peer, tmp_path, capsys, good_model):
    state = enroll(peer, tmp_path, capsys)
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    assert cli.main(["run", "--once", "--state-dir", str(state.root)]) == 0
    assert [s["state"] for s in peer.statuses][-1] == "succeeded"
    batch = peer.telemetry[-1]
    point = batch["batch"][0]
    assert batch["boot_id"] and point["boot_id"] == batch["boot_id"] and point["seq"] == 1
    assert point["model_version"] == "1" and point["inferences"] > 0
    assert point["latency_ms"] > 0 and point["extra"]["variant"] == "fp32"
    assert point["mem_mb"] > 0
    assert peer.inventory[-1]["models"]["classifier"]["sha256"] == point["extra"]["sha256"]
    assert any("succeeded" in line["message"] for b in peer.logs for line in b["batch"])
    capsys.readouterr()
    assert cli.main(["status", "--state-dir", str(state.root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["slots"]["classifier"]["active"] == "fp32"


def test_policy_switches_variant(peer, tmp_path, capsys, good_model, monkeypatch):
    state = enroll(peer, tmp_path, capsys)
    small = good_model.replace(b"relu", b"rel8")
    peer.add_artifact(good_model)
    peer.add_artifact(small)
    peer.offer(
        peer.manifest(
            [("fp32", good_model), ("int8", small)],
            policy={
                "rules": [{"when": {"battery_pct": {"lt": 20}}, "use": "int8"}],
                "default": "fp32",
            },
        )
    )
    battery = {"value": 80.0}
    monkeypatch.setattr(
        "devices.agent.runtime.read_power",
        lambda root=None: {"battery_pct": battery["value"], "on_ac": False, "power_w": 3.0},
    )
    agent = Agent(state)
    try:
        agent.step(window_s=0.2, max_inferences=3)
        assert agent.runtime.active["classifier"].variant == "fp32"
        battery["value"] = 10.0
        agent.runtime.refresh()
        agent.step(window_s=0.2, max_inferences=3)
        assert agent.runtime.active["classifier"].variant == "int8"
        assert peer.telemetry[-1]["batch"][-1]["extra"]["variant"] == "int8"
        assert peer.telemetry[-1]["batch"][-1]["battery_pct"] == 10.0
    finally:
        agent.close()


def test_e3_offline_buffer_then_exact_drop_count(peer, tmp_path, capsys, good_model):
    state = enroll(peer, tmp_path, capsys)
    agent = Agent(state, {"buffer_cap": {"telemetry": 5, "logs": 50, "status": 50}})
    try:
        peer.down = True
        for i in range(12):
            agent.outbox.add("telemetry", {"ts": time.time(), "inferences": i})
            agent.deliver_after = 0  # skip the wait: we test the buffer, not the clock
            agent.deliver(kinds=("telemetry",))
        assert agent.buffer.count("telemetry") == 5
        peer.down = False
        agent.deliver_after = 0
        agent.deliver(kinds=("telemetry",))
        delivered = [p for b in peer.telemetry for p in b["batch"]]
        assert [p["seq"] for p in delivered] == [8, 9, 10, 11, 12]
        assert peer.telemetry[0]["dropped"] == 7
        assert agent.buffer.count("telemetry") == 0
        agent.deliver(kinds=("logs",))
        lines = [line["message"] for b in peer.logs for line in b["batch"]]
        assert any("dropped the 7 oldest telemetry" in m for m in lines)
    finally:
        agent.close()


def test_e4_overload_waits_retry_after(peer, tmp_path, capsys):
    state = enroll(peer, tmp_path, capsys)
    agent = Agent(state)
    try:
        agent.outbox.add("telemetry", {"ts": time.time()})
        peer.overload = [30]
        agent.deliver(kinds=("telemetry",))
        assert agent.deliver_after - time.monotonic() >= 29
        posts = len(peer.seen("POST", "/api/v1/device/telemetry"))
        agent.deliver(kinds=("telemetry",))  # too early: nothing sent
        assert len(peer.seen("POST", "/api/v1/device/telemetry")) == posts
        assert agent.buffer.count("telemetry") == 1
    finally:
        agent.close()


def test_e5_agent_splits_oversize_batches(peer, tmp_path, capsys):
    state = enroll(peer, tmp_path, capsys)
    agent = Agent(state)
    try:
        for _ in range(40):
            agent.outbox.add("telemetry", {"ts": time.time()})
        peer.max_batch = 8
        agent.deliver(kinds=("telemetry",))
        seqs = sorted(p["seq"] for b in peer.telemetry for p in b["batch"])
        assert seqs == list(range(1, 41))
        assert any(
            r["body"] and len(r["body"]["batch"]) > 8
            for r in peer.seen("POST", "/api/v1/device/telemetry")
        )
    finally:
        agent.close()


def test_u10_check_in_backoff_never_faster_than_advised(peer, tmp_path, capsys):
    state = enroll(peer, tmp_path, capsys)
    agent = Agent(state)
    try:
        peer.poll_interval_s = 45
        agent.check_in()
        assert agent.next_poll - time.monotonic() >= 44
        peer.down = True
        gaps = []
        for _ in range(6):
            agent.check_in()
            gaps.append(agent.next_poll - time.monotonic())
        assert min(gaps) >= 44  # errors never make it poll sooner than advised
        peer.overload, peer.down = [300], False
        agent.check_in()
        assert agent.next_poll - time.monotonic() >= 299
    finally:
        agent.close()


def test_an_idle_agent_reports_onnxruntime_without_loading_it(peer, state):
    """No model, no onnxruntime in memory (some 30 MB): the inventory still names its
    version and execution providers, asked once by a child process."""
    probe = (
        "import sys, json\n"
        "from devices.agent.agent import Agent\n"
        "from devices.agent.state import State\n"
        "agent = Agent(State(sys.argv[1]))\n"
        "agent.send_inventory(); agent.step(window_s=0.05)\n"
        "print(json.dumps('onnxruntime' in sys.modules))"
    )
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(state.root)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=root,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) is False
    facts = peer.inventory[-1]
    assert facts["onnxruntime"] and "CPUExecutionProvider" in facts["execution_providers"]


def test_telemetry_carries_energy_per_inference_only_with_a_power_sensor(
    peer, tmp_path, capsys, good_model
):
    state = enroll(peer, tmp_path, capsys)
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    board = tmp_path / "board"
    (board / "sys/class/hwmon/hwmon0").mkdir(parents=True)
    (board / "sys/class/hwmon/hwmon0/name").write_text("ina219\n")
    (board / "sys/class/hwmon/hwmon0/power1_input").write_text("2500000\n")  # 2.5 W
    bare = tmp_path / "bare"
    bare.mkdir()
    points = {}
    for name, root in (("sensor", board), ("none", bare)):
        agent = Agent(state, {"power_root": str(root)})
        try:
            agent.updater.background = False
            agent.step(window_s=0.3)
            agent.step(window_s=0.3)
        finally:
            agent.close()
        points[name] = [p for b in peer.telemetry for p in b["batch"]][-1]
    measured = points["sensor"]
    assert measured["power_w"] == 2.5 and measured["extra"]["power_sensor"] == "hwmon:ina219"
    # 2.5 W over a ~0.3 s window shared by its inferences
    per = measured["extra"]["energy_mj"]
    assert 0 < per < 2500 * 0.3 * 5 / measured["inferences"]
    assert "energy_mj" not in points["none"]["extra"]
    assert "power_sensor" not in points["none"]["extra"]
