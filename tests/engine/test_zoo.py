"""The zoo: every failure mode seen on third-party models, reproduced on a zoo model and handled.

The models are committed (built by compression/fixtures/make_zoo.py with torch);
their data is generated here from a seed (or committed, for the trained CRNN).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compression.engine import DatasetError, run_isolated
from compression.engine.benchmark import benchmark, compare
from compression.engine.datasets import check_contract, load_dataset, random_dataset
from compression.engine.evaluate import evaluate, output_kinds
from compression.engine.passes.quantize import StaticConfig, fallback_strategies
from compression.engine.recipes import run_recipe
from compression.fixtures import zoo


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo-data")


def _runs(path, data_path) -> None:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ds = load_dataset(data_path, path, max_samples=2)
    sess.run(None, next(ds.batches(2)))


def test_zoo_is_small_covers_the_forms_and_every_model_runs_on_its_data(cache):
    files = [p for p in zoo.ZOO_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 6_000_000
    opsets = set()
    for name in zoo.ZOO:
        model, _cal, ev = zoo.ensure(name, cache)
        opsets.add(next(o.version for o in onnx.load(str(model)).opset_import if not o.domain))
        _runs(model, ev)
    assert {11, 12, 13, 17} <= opsets
    kinds = {n: output_kinds(zoo.model_path(n)) for n in zoo.ZOO}
    assert kinds["crnn_ctc"] == {"log_probs": "sequence"}
    assert kinds["resnet_like_b1"] == {"logits": "classes", "label": "indices"}
    assert kinds["tiny_detector"]["boxes"] == "boxes"
    assert kinds["transformer_encoder"] == {"hidden": "embedding"}


@pytest.mark.parametrize("name", ["int_inputs_gather", "audio_kws_b1"])
def test_fp16_keeps_integer_inputs_and_casts_valid(tmp_path, cache, name):
    # onnxconverter-common alone leaves Cast(to=float) feeding fp16 ops: "Type Error" on load
    model, _cal, ev = zoo.ensure(name, cache)
    out = run_recipe("fp16", model, tmp_path / "fp16.onnx")
    _runs(out.output_path, ev)
    assert any("float32" in n for n in out.steps[0]["notes"])


def test_fp16_that_onnxruntime_cannot_load_is_refused_not_crashing(tmp_path):
    # fp16 LSTM: onnxruntime segfaults loading it; the check runs isolated and says why
    from compression.engine import PassRefused

    model, _cal, _ev = zoo.ensure("crnn_ctc", tmp_path)
    with pytest.raises(PassRefused, match="does not load"):
        run_recipe("fp16", model, tmp_path / "fp16.onnx")


@pytest.mark.parametrize("recipe", ["int8-static", "mixed-precision"])
def test_calibration_feeds_the_models_own_fixed_batch_of_one(tmp_path, cache, recipe):
    # "Got 8 Expected 1": mixed-precision used to feed batches of 8 to a batch-1 model
    model, cal, ev = zoo.ensure("resnet_like_b1", cache)
    out = run_recipe(
        recipe,
        model,
        tmp_path / "q.onnx",
        calibration_path=cal,
        overrides={"target_cosine": 1.0, "max_excluded": 2}
        if recipe == "mixed-precision"
        else None,
    )
    r = evaluate(out.output_path, ev, reference_path=model)
    assert r["fidelity"]["label"]["metric"] == "exact_agreement"


def test_scalar_input_one_contract_for_upload_and_job(tmp_path, cache):
    model, cal, _ev = zoo.ensure("audio_kws_b1", cache)
    inputs = [
        {"name": "audio", "shape": [1, "samples"], "dtype": "float32"},
        {"name": "sr", "shape": [], "dtype": "int64"},
    ]
    fixed = check_contract(
        {"audio": {"shape": [5, 16000], "dtype": "float32"}, "sr": {"shape": [], "dtype": "int64"}},
        inputs,
    )
    assert fixed == {"samples": 5, "roles": {"audio": "per-sample", "sr": "fixed"}}
    per = check_contract(
        {
            "audio": {"shape": [2, 16000], "dtype": "float32"},
            "sr": {"shape": [2], "dtype": "int64"},
        },
        inputs,
    )
    assert per["roles"]["sr"] == "per-sample"
    with pytest.raises(DatasetError, match="scalar"):
        check_contract(
            {
                "audio": {"shape": [2, 16000], "dtype": "float32"},
                "sr": {"shape": [2, 1], "dtype": "int64"},
            },
            inputs,
        )
    per_path = tmp_path / "per.npz"
    np.savez(per_path, audio=np.zeros((3, 16000), np.float32), sr=np.array([16000, 8000, 16000]))
    _runs(model, per_path)
    out = run_recipe("int8-static", model, tmp_path / "q.onnx", calibration_path=cal)
    r = evaluate(out.output_path, per_path, reference_path=model)
    assert r["samples"] == 3 and r["fidelity"]["logits"]["metric"] == "top1_agreement"


def test_quantizer_exception_triggers_the_next_strategy(tmp_path, cache):
    # a calibration cache onnxruntime cannot read makes quantize_static raise inside
    # calibration; the pass goes on with the next strategy instead of giving up
    model, cal, _ev = zoo.ensure("int_inputs_gather", cache)
    broken = tmp_path / "calibration.json"
    broken.write_text('{"calibration_method": ')
    out = run_recipe(
        "int8-static",
        model,
        tmp_path / "q.onnx",
        calibration_path=cal,
        overrides={"calibration_cache": str(broken)},
    )
    notes = " ".join(out.steps[0]["notes"])
    assert "failed as configured" in notes and "used: without pre-processing" in notes
    assert (
        out.steps[0]["metrics"]["integer_ops"] + out.steps[0]["metrics"]["quantize_linear_nodes"]
        > 0
    )


def _score_filter_model(path) -> str:
    """A detector-like head: scores above a threshold kept (NonZero + GatherND), so that
    tensor's length depends on the input - as in post-processed detection outputs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b"),
        numpy_helper.from_array(np.array(1.0, np.float32), "thr"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["scores"], name="flat"),
        helper.make_node("Greater", ["scores", "thr"], ["keep"], name="gt"),
        helper.make_node("NonZero", ["keep"], ["nz"], name="nonzero"),
        helper.make_node("Transpose", ["nz"], ["idx"], name="tr", perm=[1, 0]),
        helper.make_node("GatherND", ["scores", "idx"], ["picked"], name="gather"),
        helper.make_node("Mul", ["picked", "two"], ["kept"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "score_filter",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("kept", TensorProto.FLOAT, ["K"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_on_data_dependent_shapes_falls_back_to_minmax(tmp_path, method):
    # onnxruntime's histogram calibration stacks each tensor's values over the samples
    # with np.asarray: a tensor whose length depends on the data makes that ragged. With
    # numpy < 1.24 the ragged stack became an object array and the quantizer raised "The
    # truth value of an array with more than one element is ambiguous"; numpy 2 raises
    # "inhomogeneous shape" at the same line. Either way the next strategy must take over.
    model = _score_filter_model(tmp_path / "filter.onnx")
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (12, 3, 16, 16)) * rng.uniform(0.2, 2.0, (12, 1, 1, 1))
    np.savez(tmp_path / "cal.npz", x=x.astype(np.float32))
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    lengths = {sess.run(None, {"x": v[None].astype(np.float32)})[1].shape[0] for v in x}
    assert len(lengths) > 1  # the ragged case, really
    out = run_recipe(
        "int8-static",
        model,
        tmp_path / "q.onnx",
        calibration_path=str(tmp_path / "cal.npz"),
        overrides={"calibrate_method": method},
    )
    step = out.steps[0]
    notes = " ".join(step["notes"])
    assert "failed as configured: ValueError" in notes and "used: MinMax calibration" in notes
    assert step["metrics"]["calibrate_method"] == "minmax"
    assert len(step["notes"]) == len(set(step["notes"]))  # a retry does not repeat notes
    assert step["metrics"]["quantize_linear_nodes"] > 0
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": x[:1].astype(np.float32)})[0].shape == (1, 8)


def test_fallback_order_handles_old_opsets_without_per_channel():
    labels = [(label, o) for label, o in fallback_strategies(StaticConfig(), opset=11)]
    assert labels[0] == ("as configured", {})
    assert labels[1] == ("without pre-processing", {"preprocess": False, "per_channel": False})
    assert any("qoperator" in label for label, _ in labels)


def test_mixed_precision_streams_long_sequences_in_bounded_memory(tmp_path, cache):
    # 32 one-second clips: holding every probed activation of every sample (the old way)
    # needs well over a gigabyte here; streaming keeps a few activations of one batch
    model, _cal, _ev = zoo.ensure("audio_kws_b1", cache)
    long_cal = tmp_path / "long.npz"
    rng = np.random.default_rng(0)
    np.savez(
        long_cal, audio=(0.2 * rng.normal(size=(32, 64000))).astype(np.float32), sr=np.array(16000)
    )
    steps = run_isolated(
        "compression.engine.search:compress_to_json",
        "mixed-precision",
        str(model),
        str(tmp_path / "mp.onnx"),
        str(long_cal),
        str(tmp_path),
        {"target_cosine": 1.0, "max_excluded": 1, "max_samples": 8},
        timeout_s=600,
        memory_mb=1024,
    )
    assert steps[0]["metrics"]["history"][-1]["excluded"] == 1
    assert (tmp_path / "mp.onnx").exists()


def test_benchmark_measures_the_datas_own_shape_and_says_so():
    model, _cal, ev = zoo.ensure("crnn_ctc", Path())
    synthetic = benchmark(model, runs=5, warmup=1, extra_batch=None)
    real = benchmark(model, runs=5, warmup=1, extra_batch=None, data_path=ev)
    assert synthetic["input_shapes"]["image"] == [1, 1, 32, 1]
    assert real["input_shapes"]["image"] == [1, 1, 32, zoo.CRNN_WIDTH]
    assert real["shape_source"] == "data" and synthetic["shape_source"] == "synthetic"


def test_interleaved_comparison_gives_ratios_and_stops_when_stable():
    model, _cal, ev = zoo.ensure("crnn_ctc", Path())
    r = compare(
        {"fp32": model, "same": model},
        reference="fp32",
        data_path=ev,
        runs=5,
        min_rounds=3,
        max_rounds=12,
        contenders=["same"],
    )
    assert r["stable"] and r["rounds"] >= 5 - 2
    assert 0.7 < r["models"]["same"]["ratio"] < 1.4  # the same model: about 1x
    assert r["input_shapes"] == {"image": [1, 1, 32, zoo.CRNN_WIDTH]}


def test_random_inputs_for_latency_only(tmp_path):
    path = random_dataset(zoo.model_path("int_inputs_gather"), tmp_path / "gen.npz")
    _runs(zoo.model_path("int_inputs_gather"), path)
    assert json.dumps(sorted(np.load(path).files)) == '["mask", "tokens"]'


def test_nncf_is_a_second_backend_where_installed(tmp_path):
    pytest.importorskip("nncf")
    from compression.fixtures.zoo import ZOO_DIR

    fixtures = ZOO_DIR.parent
    out = run_recipe(
        "int8-nncf",
        fixtures / "digits_cnn.onnx",
        tmp_path / "n.onnx",
        calibration_path=fixtures / "digits_calibration.npz",
        overrides={"max_samples": 64},
    )
    assert out.steps[0]["metrics"]["quantize_linear_nodes"] > 0
    r = evaluate(
        out.output_path, fixtures / "digits_eval.npz", reference_path=fixtures / "digits_cnn.onnx"
    )
    assert r["fidelity"]["logits"]["fidelity"] >= 0.97
