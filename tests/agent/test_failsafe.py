"""Fail-safe installs, memory-bounded health checks and slow retrieval."""

from __future__ import annotations

import hashlib
import logging
import time

import pytest

from devices.agent.agent import Agent
from devices.agent.updater import Updater
from tests.agent.test_updater import active_bytes, states


def bomb_model(n: int = 8192) -> bytes:
    """Fine to load; at inference a ConstantOfShape of n×n floats (256 MB for 8192)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [n, n])
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=value),
        helper.make_node("ReduceMax", ["big"], ["m"], keepdims=0),
        helper.make_node("Mul", ["x", "m"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "bomb", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.slow
def test_inference_memory_bomb_fails_the_health_check_under_the_limit(
    peer, state, client, good_model
):
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    updater = Updater(state, client, health_memory_mb=320)  # the real check, in a child
    assert updater.check_in().outcome == "succeeded"  # a normal model fits
    bomb = bomb_model()
    peer.add_artifact(bomb)
    peer.offer(peer.manifest([("fp32", bomb)], version=2))
    assert updater.check_in().outcome == "rolled_back"
    assert active_bytes(state) == good_model
    assert peer.statuses[-1]["error_code"] == "health_check"
    assert "alloc" in peer.statuses[-1]["error"].lower()


def test_an_unverified_pointer_left_by_an_older_agent_is_undone_first(
    peer, state, client, good_model, nan_model
):
    """An agent that switched before its health check and then died leaves the new
    pointer active; the next start puts the verified one back before anything runs."""
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    Updater(state, client, health_check=lambda p: None).check_in()
    v1 = state.pointer("classifier")
    sha = hashlib.sha256(nan_model).hexdigest()
    (state.model_dir("classifier") / f"{sha}.onnx").write_bytes(nan_model)
    payload = {**v1["manifest"], "version": 2}
    state.update_slot("classifier", pending=payload, trusted_version=2)
    state.set_pointer(
        "classifier",
        {
            "version": 2,
            "manifest": payload,
            "active": "fp32",
            "variants": {"fp32": {"sha256": sha, "path": f"{sha}.onnx"}},
            "previous": {k: v for k, v in v1.items() if k != "previous"},
        },
    )
    Updater(state, client).recover()
    assert active_bytes(state) == good_model


@pytest.mark.slow
def test_slow_retrieval_neither_stalls_the_agent_nor_lasts_forever(peer, state, good_model, caplog):
    import onnx

    peer.poll_interval_s = 1
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    settings = {
        "poll_interval_s": 1,
        "telemetry_interval_s": 0.2,
        "download_min_rate_bps": 20_000,
        "download_grace_s": 1,
    }
    agent = Agent(state, settings)
    try:
        agent.updater.background = True
        deadline = time.monotonic() + 60
        while state.slot("classifier").get("result") != "succeeded":
            agent.step(window_s=0.1, max_inferences=5)
            assert time.monotonic() < deadline
        model = onnx.load_from_string(good_model)
        model.doc_string = "x" * 100_000  # 100 kB: 5 s at the minimum rate, 25 s trickled
        new = model.SerializeToString()
        sha = peer.add_artifact(new, "trickle")
        peer.offer(peer.manifest([("fp32", new)], version=2))
        caplog.set_level(logging.INFO, "edgefleet.agent")
        peer.requests.clear()
        start = time.monotonic()
        while not any("too_slow" in r.getMessage() for r in caplog.records):
            agent.step(window_s=0.2, max_inferences=5)
            assert time.monotonic() - start < 30, "the trickle was never cut off"
        took = time.monotonic() - start
        # While the trickle ran: check-ins and telemetry went on.
        assert len(peer.seen("GET", "/api/v1/device/update")) >= 3
        assert any(r["t"] > start + 2 for r in peer.seen("POST", "/api/v1/device/telemetry"))
        assert took < 1 + 100_000 / 20_000 + 10  # the deadline, plus one read timeout
        assert active_bytes(state) == good_model
        # The attacker leaves: the download resumes where it stopped.
        peer.faults[sha] = "good"
        while (
            state.slot("classifier").get("result") != "succeeded"
            or state.slot("classifier").get("done_version") != 2
        ):
            agent.step(window_s=0.1, max_inferences=5)
            assert time.monotonic() - start < 90
        ranges = [r["headers"].get("range") for r in peer.seen("GET", "/api/v1/device/artif")]
        assert ranges[-1] and ranges[-1] != "bytes=0-"
        assert active_bytes(state) == new
        assert states(peer).count("succeeded") == 2  # v1, then v2 once
    finally:
        agent.close()
