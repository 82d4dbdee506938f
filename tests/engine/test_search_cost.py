"""What the search spends its time on: the reference runs once, evaluation stops once a
variant cannot reach the KPIs, slow candidates are not timed round after round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from compression.engine import evaluate as ev_module
from compression.engine.datasets import load_dataset
from compression.engine.evaluate import checkpoints, evaluate
from compression.engine.search import auto, children
from tests.engine.conftest import make_cnn, make_dataset


@pytest.fixture
def data64(tmp_path, cnn_path) -> str:
    return make_dataset(tmp_path / "data64.npz", cnn_path, n=64)


def _copy_with_new_bytes(src: str, dst) -> str:
    """The same network in a file that is not byte-identical (a doc string added)."""
    model = onnx.load(src)
    model.doc_string = "a copy"
    onnx.save(model, str(dst))
    return str(dst)


def test_checkpoints_double_and_respect_a_fixed_batch(tmp_path, cnn_path, data64):
    ds = load_dataset(data64, cnn_path)
    assert checkpoints(ds) == [8, 16, 32, 64]
    ds.batch = 5  # a fixed batch of 5: whole feeds only, the ragged tail dropped
    assert checkpoints(ds) == [10, 20, 40, 60]


def test_a_hopeless_variant_stops_early_with_upper_bounds(tmp_path, cnn_path, data64):
    other = make_cnn(tmp_path / "other.onnx", seed=7)  # another network: agrees by chance
    full = evaluate(other, data64, reference_path=cnn_path)
    seq = evaluate(other, data64, reference_path=cnn_path, stop_below={"min_fidelity": 0.98})
    assert seq["stopped"] == {"samples": 8, "of": 64}
    f_full, f_seq = full["fidelity"]["logits"], seq["fidelity"]["logits"]
    # the figures of a stopped evaluation are the best it could still have reached
    assert f_full["fidelity"] <= f_seq["fidelity"] < 0.98
    assert full["accuracy"]["top1"] <= seq["accuracy"]["top1"]
    # an accuracy KPI stops it too (labels are the reference's own answers)
    acc = evaluate(other, data64, reference_path=cnn_path, stop_below={"max_accuracy_drop": 1})
    assert acc["stopped"]["samples"] < 64


def test_a_faithful_variant_is_evaluated_on_every_sample(tmp_path, cnn_path, data64):
    same = _copy_with_new_bytes(cnn_path, tmp_path / "same.onnx")
    plain = evaluate(same, data64, reference_path=cnn_path)
    seq = evaluate(same, data64, reference_path=cnn_path, stop_below={"min_fidelity": 0.98})
    assert "stopped" not in seq
    assert seq["fidelity"] == plain["fidelity"] and seq["accuracy"] == plain["accuracy"]


def test_the_reference_runs_once_per_search_and_an_identical_copy_not_at_all(
    tmp_path, cnn_path, data64, monkeypatch
):
    opened = []
    real = ev_module._session
    monkeypatch.setattr(
        ev_module, "_session", lambda path, threads: opened.append(str(path)) or real(path, threads)
    )
    cache = str(tmp_path / "reference-outputs.npz")
    copy = tmp_path / "fp32.onnx"
    copy.write_bytes(Path(cnn_path).read_bytes())
    variant = _copy_with_new_bytes(cnn_path, tmp_path / "variant.onnx")
    first = children.evaluate_many({"fp32": str(copy)}, data64, cnn_path, 1, None, None, cache)
    second = children.evaluate_many({"v": variant}, data64, cnn_path, 1, None, None, cache)
    assert opened == [cnn_path, variant]  # the reference once (then from the cache)
    assert first["fp32"]["ok"]["fidelity"]["logits"]["fidelity"] == 1.0
    assert second["v"]["ok"]["fidelity"]["logits"]["fidelity"] == 1.0
    plain = evaluate(variant, data64, reference_path=cnn_path)
    assert second["v"]["ok"]["fidelity"] == plain["fidelity"]


def test_auto_stops_evaluating_what_cannot_reach_the_floor(tmp_path, cnn_path, data64):
    """No variant can reach fidelity 1.01: each evaluation stops at the first checkpoint,
    says so, and the choice is never a violator."""
    r = auto(
        cnn_path,
        calibration_path=data64,
        evaluation_path=data64,
        kpis={"min_fidelity": 1.01},
        out_dir=tmp_path / "auto",
        recipes=("int8-static", "fp16"),
        runs=10,
    )
    evaluated = [c for c in r["candidates"] if c.get("evaluated") and c["recipe"] != "fp32"]
    assert evaluated
    for c in evaluated:
        assert c["metrics"]["evaluation_stopped"] == {"samples": 8, "of": 64}
        assert any("evaluation stopped after 8 of 64 samples" in v for v in c["violations"])
    assert r["chosen"] is None
    assert (tmp_path / "auto" / "reference-outputs.npz").exists()
    assert np.isfinite(r["seconds"])


def _conv_stack(path, layers: int, ch: int = 64) -> str:
    """x [N, 3, 16, 16] -> ``layers`` 3x3 convolutions of ``ch`` channels -> 10 logits: the
    cost grows with ``layers``, the feeds stay those of ``make_cnn``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, last, cin = [], [], "x", 3
    for i in range(layers):
        w = rng.normal(0, 0.1, (ch, cin, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [last, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        last, cin = f"r{i}", ch
    inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (10, ch)).astype(np.float32), "fc"))
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_first_timing_stops_timing_what_is_far_slower_than_the_reference(tmp_path, cnn_data):
    from compression.engine.benchmark import compare

    paths = {
        "ref": _conv_stack(tmp_path / "ref.onnx", 2),
        "same": _conv_stack(tmp_path / "same.onnx", 2),
        "slow": _conv_stack(tmp_path / "slow.onnx", 16),
    }
    kw = {"reference": "ref", "data_path": cnn_data, "runs": 5, "min_rounds": 3}
    r = compare(paths, max_rounds=3, drop_slower_than=1.5, **kw)
    m = r["models"]
    assert m["slow"]["rounds"] == 1 and m["slow"]["ratio"] > 1.5  # measured, then left out
    assert m["same"]["rounds"] == 3 and r["rounds"] == 3
    # contenders (the re-measuring of finalists) are never dropped
    r = compare(paths, max_rounds=5, contenders=["same", "slow"], drop_slower_than=1.5, **kw)
    assert r["models"]["slow"]["rounds"] == r["rounds"] >= 3


def test_timing_groups_by_count_and_by_model_bytes(tmp_path):
    from compression.engine.search.candidates import Search

    def search(memory_mb):
        return Search(
            tmp_path, tmp_path, calibration=None, evaluation=None, kpis={}, threads=1,
            provider="CPUExecutionProvider", runs=10, step_timeout_s=60, memory_mb=memory_mb,
            kinds=None, progress=None, should_stop=None,
        )  # fmt: skip

    def files(n, size):
        out = []
        for i in range(n):
            path = tmp_path / f"m{size}_{i}.onnx"
            path.write_bytes(b"\0" * size)
            out.append({"recipe": f"m{i}", "path": str(path)})
        return out

    fp32 = files(1, 100_000)[0]
    small = files(20, 1000)
    assert [len(c) for c in search(4096)._chunks(small, fp32)] == [16, 4]  # the count cap
    big = files(5, 300_000)  # 16 MB limit: 1 MB of model files per process, fp32 included
    assert [len(c) for c in search(16)._chunks(big, fp32)] == [3, 2]
    huge = files(2, 3_000_000)  # larger than the share alone: still timed, one per process
    assert [len(c) for c in search(16)._chunks(huge, fp32)] == [1, 1]
