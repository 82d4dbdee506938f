"""State files, pacing, buffer, local signal readers, switching policy (unit level)."""

from __future__ import annotations

import json
import random
import stat

import pytest

from devices.agent.buffer import Backoff, Buffer, Outbox
from devices.agent.client import Pacer, Response, Unreachable, parse_retry_after
from devices.agent.runtime import percentile, read_power, read_temperature
from devices.agent.state import State, atomic_write, safe
from devices.agent.updater import in_window


# --- state -------------------------------------------------------------------------------
def test_state_files_are_0600_and_atomic(tmp_path):
    state = State(tmp_path / "s").ensure()
    state.save_credential("dev-1", "secret")
    state.save_config({"server": "http://x"})
    for name in ("credential.json", "config.json"):
        mode = stat.S_IMODE((state.root / name).stat().st_mode)
        assert mode == 0o600
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
    assert state.token == "secret" and state.uid == "dev-1"
    assert not [p for p in state.root.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_failure_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "d" / "f"
    atomic_write(target, b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("devices.agent.state.os.fsync", broken_fsync)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["f"]


def test_pin_key_refuses_garbage(tmp_path):
    state = State(tmp_path).ensure()
    with pytest.raises(ValueError):
        state.pin_key("bm90IGEga2V5")  # base64 of "not a key"
    assert state.pinned_keys() == []


def test_safe_names():
    assert safe("../../etc") == "______etc"
    with pytest.raises(ValueError):
        safe("")


# --- pacing (U10, E4) ------------------------------------------------------------------
def test_pacer_never_faster_than_advised_and_grows():
    pacer = Pacer(30, base_s=1, cap_s=600, rng=random.Random(1))
    assert all(30 <= pacer.success() <= 36 for _ in range(100))
    delays = [pacer.failure() for _ in range(12)]
    assert min(delays) >= 30
    assert max(delays) > 60  # the cap grew past the interval: it is really exponential
    assert pacer.failure(retry_after=900) >= 900
    pacer.success()
    assert pacer.failures == 0


def test_pacer_full_jitter_spreads_devices():
    delays = {
        round(Pacer(0.001, base_s=1, cap_s=600, rng=random.Random(seed)).failure(), 3)
        for seed in range(50)
    }
    assert len(delays) > 40  # not a thundering herd


def test_retry_after_parsing():
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == 10
    assert parse_retry_after("soon") is None


def test_install_window():
    from datetime import UTC, datetime

    noon = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert in_window(None, noon)
    assert in_window({"start": "11:00", "end": "13:00"}, noon)
    assert not in_window({"start": "22:00", "end": "04:00"}, noon)
    assert in_window({"start": "22:00", "end": "04:00"}, noon.replace(hour=23))


# --- buffer (E3, E4, E5) ---------------------------------------------------------------
def fill(tmp_path, n, cap):
    buffer = Buffer(tmp_path / "b.sqlite3", caps={"telemetry": cap})
    outbox = Outbox(buffer, "boot-1")
    for i in range(n):
        outbox.add("telemetry", {"i": i})
    return buffer, outbox


def test_e3_buffer_never_exceeds_cap_and_counts_drops(tmp_path):
    buffer, _ = fill(tmp_path, 250, 100)
    assert buffer.count("telemetry") == 100
    assert buffer.dropped("telemetry") == 150
    sent = []

    def send(boot, items, dropped):
        sent.append((boot, [x["seq"] for x in items], dropped))
        return Response(200)

    result = buffer.flush("telemetry", send, batch_size=60)
    assert sent[0] == ("boot-1", list(range(151, 211)), 150)  # oldest kept first
    assert sent[1][2] == 0  # the drop count is reported once
    assert result.sent == 100 and buffer.count("telemetry") == 0
    assert buffer.dropped("telemetry") == 0


def test_e3_drops_during_delivery_are_not_lost(tmp_path):
    buffer, outbox = fill(tmp_path, 12, 10)

    def send(boot, items, dropped):
        outbox.add("telemetry", {"late": True})  # overflows again while we send
        return Response(200)

    buffer.flush("telemetry", send, batch_size=10, max_batches=1)
    # 2 reported with the batch; the 3rd was pushed out while in flight yet delivered.
    assert buffer.dropped("telemetry") == 0
    assert buffer.count("telemetry") == 1


def test_buffer_survives_reopen(tmp_path):
    buffer, _ = fill(tmp_path, 5, 3)
    buffer.close()
    again = Buffer(tmp_path / "b.sqlite3", caps={"telemetry": 3})
    assert again.count("telemetry") == 3 and again.dropped("telemetry") == 2


def test_e5_413_splits_until_it_fits(tmp_path):
    buffer, _ = fill(tmp_path, 100, 1000)
    seen = []

    def send(boot, items, dropped):
        seen.append(len(items))
        return Response(413) if len(items) > 30 else Response(200)

    result = buffer.flush("telemetry", send, batch_size=100)
    assert result.sent == 100 and result.splits >= 3
    assert max(n for n in seen[1:] if n <= 30) <= 30
    assert buffer.count("telemetry") == 0


@pytest.mark.parametrize("status", [429, 503])
def test_e4_overload_backs_off_and_keeps_records(tmp_path, status):
    buffer, _ = fill(tmp_path, 10, 100)
    with pytest.raises(Backoff) as err:
        buffer.flush("telemetry", lambda *a: Response(status, {"retry-after": "12"}))
    assert err.value.retry_after == 12
    assert buffer.count("telemetry") == 10


def test_unreachable_keeps_records(tmp_path):
    buffer, _ = fill(tmp_path, 10, 100)

    def send(*args):
        raise Unreachable("down")

    with pytest.raises(Backoff):
        buffer.flush("telemetry", send)
    assert buffer.count("telemetry") == 10


def test_batches_do_not_mix_boots(tmp_path):
    buffer = Buffer(tmp_path / "b.sqlite3")
    Outbox(buffer, "old").add("logs", {"m": 1})
    Outbox(buffer, "new").add("logs", {"m": 2})
    boots = []
    buffer.flush("logs", lambda boot, items, d: boots.append((boot, len(items))) or Response(200))
    assert boots == [("old", 1), ("new", 1)]


# --- local signals ------------------------------------------------------------------------
def test_sysfs_readers(tmp_path):
    assert read_temperature(tmp_path / "none") is None
    assert read_power(tmp_path / "none") == {"battery_pct": None, "on_ac": None, "power_w": None}
    for zone, milli in (("thermal_zone0", "45000"), ("thermal_zone1", "61500")):
        (tmp_path / "t" / zone).mkdir(parents=True)
        (tmp_path / "t" / zone / "temp").write_text(milli)
    assert read_temperature(tmp_path / "t") == 61.5
    bat, ac = tmp_path / "p" / "BAT0", tmp_path / "p" / "AC"
    bat.mkdir(parents=True)
    ac.mkdir()
    (bat / "type").write_text("Battery\n")
    (bat / "capacity").write_text("17\n")
    (bat / "power_now").write_text("4500000\n")
    (ac / "type").write_text("Mains\n")
    (ac / "online").write_text("0\n")
    assert read_power(tmp_path / "p") == {"battery_pct": 17.0, "on_ac": False, "power_w": 4.5}


def test_percentile():
    assert percentile([], 50) is None
    values = list(range(1, 101))
    assert percentile(values, 50) in (50, 51) and percentile(values, 95) in (95, 96)


def test_mqtt_answer_matching():
    from devices.agent.mqtt import answer_status, payload

    assert answer_status({"accepted": {"b": [1, 2, 3]}, "count": 3}, "b", [2, 3]) == 200
    assert answer_status({"accepted": {"b": [1]}, "count": 1}, "b", [2]) is None  # older ack
    assert answer_status({"accepted": {}, "rejected": [{"seq": 2}]}, "b", [2]) == 200
    assert answer_status({"code": "too_large"}, "b", [1]) == 413
    body = json.loads(payload("tok", {"boot_id": "b", "batch": [{"seq": 1}], "dropped": 2}))
    assert body == {"token": "tok", "batch": [{"seq": 1}], "boot_id": "b", "dropped": 2}


def test_runtime_runs_inputs_from_a_folder(tmp_path, good_model):
    import numpy as np

    from devices.agent.runtime import Inputs, Runtime

    state = State(tmp_path / "s").ensure()
    model_dir = state.model_dir("classifier")
    model_dir.mkdir(parents=True)
    sha = "a" * 64
    (model_dir / f"{sha}.onnx").write_bytes(good_model)
    payload = {"default": "fp32", "policy": {}}
    state.set_pointer(
        "classifier",
        {
            "version": 1,
            "manifest": payload,
            "active": "fp32",
            "variants": {"fp32": {"sha256": sha, "model_version": 3, "path": f"{sha}.onnx"}},
        },
    )
    samples = tmp_path / "inputs"
    samples.mkdir()
    np.save(samples / "a.npy", np.ones((1, 4), dtype=np.float32))
    np.savez(samples / "b.npz", x=-np.ones((1, 4), dtype=np.float32))
    runtime = Runtime(state, inputs=Inputs(samples))
    runtime.refresh()
    runtime.run_for(5, max_inferences=10)
    (point,) = runtime.points()
    assert point["inferences"] == 10 and point["errors"] == 0
    assert point["model_version"] == "3" and point["latency_ms"] > 0
    assert point["extra"]["latency_p95_ms"] >= point["latency_ms"]
    assert runtime.inputs._next == 10  # cycled through the folder


def test_status_reports_the_server_moved_past_are_dropped_not_retried(tmp_path):
    buffer = Buffer(tmp_path / "b.sqlite3")
    outbox = Outbox(buffer, "boot")
    outbox.add("status", {"state": "downloading"})
    outbox.add("status", {"state": "succeeded"})
    answers = iter([Response(409), Response(200)])
    buffer.flush("status", lambda *a: next(answers), batch_size=1)
    assert buffer.count("status") == 0
    outbox.add("telemetry", {"x": 1})
    with pytest.raises(Backoff):  # a 404 on telemetry is a misconfiguration: keep the data
        buffer.flush("telemetry", lambda *a: Response(404))
    assert buffer.count("telemetry") == 1
