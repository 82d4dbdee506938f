"""Input drift on the agent: the calibration summary, the PSI score, and the score in
telemetry when the real inputs move away from the calibration data."""

from __future__ import annotations

import numpy as np

from devices.agent.agent import Agent
from devices.agent.drift import DriftMonitor, psi, summarize, valid_stats
from tests.agent.conftest import tiny_model


def test_summary_and_score_same_versus_shifted():
    rng = np.random.default_rng(0)
    reference = summarize(rng.normal(0.0, 1.0, (500, 16)))
    assert reference["count"] == 8000 and abs(reference["mean"]) < 0.05
    assert abs(reference["std"] - 1.0) < 0.05 and sum(reference["counts"]) == 8000
    assert valid_stats(reference)
    same, shifted = DriftMonitor({"x": reference}), DriftMonitor({"x": reference})
    for _ in range(20):
        same.observe({"x": rng.normal(0.0, 1.0, (4, 16))})
        shifted.observe({"x": rng.normal(1.5, 1.0, (4, 16))})
    calm, moved = same.report(), shifted.report()
    assert calm["drift_score"] < 0.1 and calm["drift_input"] == "x"
    assert moved["drift_score"] > 0.5
    assert moved["drift_inputs"]["x"]["mean_shift_std"] > 1.0
    assert shifted.report() is None  # a new window: nothing observed yet


def test_bad_references_and_inputs_are_ignored():
    assert summarize(np.array(["a", "b"])) is None
    assert summarize(np.array([])) is None
    constant = summarize(np.full(100, 3.0))
    assert constant["edges"][0] < 3.0 < constant["edges"][1]
    monitor = DriftMonitor(
        {
            "x": {"edges": [1, 0], "counts": [1, 2]},
            "y": "junk",
            "z": {"edges": [0, 1], "counts": [0, 0]},
        }
    )
    assert not monitor and monitor.report() is None
    assert psi([1, 1], [0, 0]) == 0.0


def test_large_inputs_are_strided():
    reference = summarize(np.random.default_rng(1).random((2, 3, 224, 224)))
    monitor = DriftMonitor({"image": reference})
    monitor.observe({"image": np.random.default_rng(2).random((1, 3, 224, 224))})
    assert 2048 <= monitor.seen["image"] <= 4096


def test_a_shifted_input_source_raises_the_score_in_telemetry(peer, state, tmp_path):
    model = tiny_model()  # x: [1, 4]
    rng = np.random.default_rng(3)
    reference = summarize(rng.normal(0.0, 1.0, (400, 1, 4)).astype("float32"))
    peer.add_artifact(model)
    peer.offer(
        peer.manifest(
            [("fp32", model)], version=1, artifact_fields={"input_stats": {"x": reference}}
        )
    )
    scores = {}
    for name, mean in (("calm", 0.0), ("shifted", 2.0)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(40):
            np.save(folder / f"{i:03}.npy", rng.normal(mean, 1.0, (1, 4)).astype("float32"))
        agent = Agent(state, {"input_dir": str(folder)})
        try:
            agent.updater.background = False
            agent.step(window_s=5.0, max_inferences=80)
            agent.step(window_s=5.0, max_inferences=80)
        finally:
            agent.close()
        point = [p for b in peer.telemetry for p in b["batch"]][-1]
        scores[name] = point["extra"]["drift_score"]
        assert point["extra"]["drift_input"] == "x"
    assert scores["calm"] < 0.25 < scores["shifted"]
