"""Training recipes (distill, qat, pruning recovery) on tiny models; seconds each.

They need the ``train`` extra (torch, onnx2torch) and skip without it; the
tests at the bottom hold either way (clear refusal, no fine-tune by default).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from compression.engine import training
from compression.engine.errors import Cancelled
from compression.engine.passes import get_pass
from compression.engine.recipes import run_recipe
from compression.engine.training import hooks
from tests.engine.conftest import make_cnn, make_dataset, make_mlp

FIXTURES = Path(__file__).resolve().parents[2] / "compression" / "fixtures"
DIGITS = str(FIXTURES / "digits_cnn.onnx")
DIGITS_CAL = str(FIXTURES / "digits_calibration.npz")
DIGITS_EVAL = str(FIXTURES / "digits_eval.npz")

needs_torch = pytest.mark.skipif(
    not training.available(), reason="needs the train extra (torch, onnx2torch)"
)


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _accuracy(path, npz) -> float:
    data = np.load(npz)
    return float((_run(path, data["image"]).argmax(1) == data["labels"]).mean())


@pytest.fixture
def data64(tmp_path, cnn_path) -> str:
    return make_dataset(tmp_path / "d64.npz", cnn_path, n=64)


@needs_torch
@pytest.mark.parametrize("model", ["tiny", "digits"])
def test_converter_matches_onnxruntime(tmp_path, model):
    from compression.engine.training import convert

    path = make_cnn(tmp_path / "m.onnx") if model == "tiny" else DIGITS
    shape = (4, 3, 16, 16) if model == "tiny" else (4, 1, 16, 16)
    name = "x" if model == "tiny" else "image"
    x = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    module = convert.to_torch(path)
    assert convert.max_error(module, path, {name: x}, [name]) < 1e-5
    # and back: writing the (unchanged) tensors into the graph keeps its outputs
    out = tmp_path / "back.onnx"
    assert convert.write_back(module, path, out) > 0
    np.testing.assert_allclose(_run(out, x), _run(path, x), atol=1e-5)


@needs_torch
def test_converter_refuses_unsupported_ops_by_name(tmp_path):
    from compression.engine.training import convert

    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example", name="fancy")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    onnx.save(model, tmp_path / "odd.onnx")
    with pytest.raises(convert.ConversionRefused, match=r"does not support com\.example\.FancyOp"):
        convert.to_torch(tmp_path / "odd.onnx")


@needs_torch
def test_distill_into_pruned_student_reports_epochs(tmp_path, cnn_path, data64):
    events = []
    with hooks.training_hooks(progress=events.append):
        result = run_recipe(
            "distill",
            cnn_path,
            tmp_path / "s.onnx",
            calibration_path=data64,
            overrides={"epochs": 3, "ratio": 0.5, "min_channels": 4, "patience": 0},
        )
    m = result.steps[0]["metrics"]
    assert m["parameter_ratio"] < 0.6
    assert [r["epoch"] for r in m["history"]] == [0, 1, 2, 3]
    assert m["metric"] == "accuracy" and m["used_labels"]
    assert [e["epoch"] for e in events] == [1, 2, 3] and events[0]["pass"] == "distill"
    assert any("calibration data" in n for n in result.steps[0]["notes"])
    assert _run(tmp_path / "s.onnx", np.zeros((2, 3, 16, 16), np.float32)).shape == (2, 10)


@needs_torch
def test_distill_uploaded_student_without_labels(tmp_path, cnn_path):
    data = make_dataset(tmp_path / "nolabels.npz", cnn_path, n=48, labels=False)
    student = make_cnn(tmp_path / "student.onnx", seed=5)  # same shape, other weights
    before = np.load(data)["x"]
    teacher_out = _run(cnn_path, before)
    gap0 = float(np.mean((_run(student, before) - teacher_out) ** 2))
    result = run_recipe(
        "distill",
        cnn_path,
        tmp_path / "s.onnx",
        calibration_path=data,
        overrides={"student_path": student, "epochs": 25, "lr": 3e-3, "patience": 0},
    )
    m = result.steps[0]["metrics"]
    assert m["metric"] == "agreement" and not m["used_labels"]
    assert m["pseudo_labels"] and m["pseudo_label_share"] == 1.0  # the teacher's top class
    assert "trained on the teacher's outputs only (no labels)" in result.steps[0]["notes"]
    assert any("top class as pseudo-labels on 100%" in n for n in result.steps[0]["notes"])
    gap1 = float(np.mean((_run(tmp_path / "s.onnx", before) - teacher_out) ** 2))
    assert gap1 < gap0 / 2  # the student moved towards the teacher with no label at all
    assert m["history"][m["best_epoch"]]["eval_loss"] < m["history"][0]["eval_loss"]
    assert any("uploaded" in n for n in result.steps[0]["notes"])


@needs_torch
def test_without_labels_the_teachers_top_class_is_a_pseudo_label():
    """An unsure teacher (nearly flat softmax): matching its soft outputs alone barely
    moves the student's decisions; cross-entropy on its argmax does."""
    import torch

    from compression.engine.training.loop import Settings, fit

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (256, 4)).astype(np.float32)
    t = x @ rng.normal(0, 1, (4, 3)).astype(np.float32) * 0.05
    runs = {}
    for pseudo in (False, True):
        torch.manual_seed(0)
        student = torch.nn.Linear(4, 3)
        settings = Settings(epochs=15, lr=1e-2, patience=0, pseudo_labels=pseudo)
        runs[pseudo] = fit(
            student, [x[:192]], [t[:192]], None, [x[192:]], [t[192:]], None, settings, label="t"
        )
    hard, soft = runs[True], runs[False]
    assert hard["pseudo_labels"] and hard["pseudo_label_share"] == 1.0
    assert not hard["used_labels"] and hard["metric"] == "agreement"
    assert not soft["pseudo_labels"] and soft["pseudo_label_share"] is None
    assert hard["best_metric"] >= 0.8 and hard["best_metric"] > soft["best_metric"] + 0.15


def test_pseudo_labels_only_where_the_teacher_is_confident():
    from compression.engine.training.loop import pseudo_labels

    logits = np.array([[4.0, 0.0, 0.0], [0.1, 0.0, 0.2], [0.0, 9.0, 0.0]], np.float32)
    np.testing.assert_array_equal(pseudo_labels(logits, 0.0), [0, 2, 1])
    np.testing.assert_array_equal(pseudo_labels(logits, 0.9), [0, -1, 1])
    np.testing.assert_array_equal(pseudo_labels(logits, 1.01), [-1, -1, -1])


@needs_torch
def test_unsure_samples_add_no_cross_entropy():
    import torch

    from compression.engine.training.loop import Settings, _loss

    s, t = torch.randn(4, 3), torch.randn(4, 3)
    cfg = Settings(alpha=0.7)
    kl = _loss([s], [t], ["logits"], None, cfg)
    none = _loss([s], [t], ["logits"], torch.tensor([-1, -1, -1, -1]), cfg)
    some = _loss([s], [t], ["logits"], torch.tensor([2, -1, 0, -1]), cfg)
    ce = torch.nn.functional.cross_entropy(s[[0, 2]], torch.tensor([2, 0]))
    torch.testing.assert_close(none, 0.7 * kl)
    torch.testing.assert_close(some, 0.7 * kl + 0.3 * ce)


@needs_torch
def test_matmul_weights_are_trained_and_written_back(tmp_path):
    from compression.engine.training import convert

    teacher = make_mlp(tmp_path / "teacher.onnx", seed=0, dim=16, hidden=32)
    student = make_mlp(tmp_path / "student.onnx", seed=3, dim=16, hidden=32)
    module = convert.to_torch(student)
    # every MatMul weight and its bias is a parameter, not a frozen constant
    assert sorted(convert.initializer_targets(module, onnx.load(student)).values()) == [
        ("b1", False),
        ("b2", False),
        ("w1", False),
        ("w2", False),
    ]
    data = make_dataset(tmp_path / "d.npz", teacher, n=64, labels=False)
    x = np.load(data)["x"]
    gap0 = float(np.mean((_run(student, x) - _run(teacher, x)) ** 2))
    out = tmp_path / "s.onnx"
    run_recipe(
        "distill",
        teacher,
        out,
        calibration_path=data,
        overrides={"student_path": student, "epochs": 20, "lr": 3e-3, "patience": 0},
    )
    gap1 = float(np.mean((_run(out, x) - _run(teacher, x)) ** 2))
    assert gap1 < gap0 / 2
    trained = {t.name for t in onnx.load(out).graph.initializer}
    assert trained == {"w1", "b1", "w2", "b2"}  # same graph, new values


@needs_torch
def test_a_weight_read_by_two_matmuls_stays_one_tensor(tmp_path):
    from compression.engine.training import convert

    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], rng.normal(0, 1, 16).tolist())
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("MatMul", ["h", "w"], ["y"]),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w],
    )
    path = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    module = convert.to_torch(path)
    assert len(list(module.parameters())) == 1
    import torch

    with torch.no_grad():
        next(module.parameters()).mul_(2)
    convert.write_back(module, path, tmp_path / "back.onnx")
    back = onnx.numpy_helper.to_array(onnx.load(tmp_path / "back.onnx").graph.initializer[0])
    np.testing.assert_allclose(back, 2 * onnx.numpy_helper.to_array(w), rtol=1e-6)


@needs_torch
def test_qat_exports_qdq_int8_that_runs_on_integer_kernels(tmp_path):
    out = tmp_path / "qat.onnx"
    result = run_recipe(
        "qat", DIGITS, out, calibration_path=DIGITS_CAL, overrides={"epochs": 1, "max_samples": 120}
    )
    m = result.steps[0]["metrics"]
    assert m["quantize_linear_nodes"] > 0 and len(m["history"]) == 2
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node}
    assert "QLinearConv" in ops  # onnxruntime fused the QDQ pairs into int8 kernels
    assert _accuracy(out, DIGITS_EVAL) >= _accuracy(DIGITS, DIGITS_EVAL) - 0.02


def _outlier_digits(path, scale: float = 200.0) -> str:
    """The digits CNN with two channels of conv2 scaled up and conv3's inputs from them
    scaled down: the same function in float, badly quantized per tensor."""
    model = onnx.load(DIGITS)
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    get = lambda n: onnx.numpy_helper.to_array(inits[n]).copy()  # noqa: E731
    w, b, w2 = get(convs[1].input[1]), get(convs[1].input[2]), get(convs[2].input[1])
    w[:2] *= scale
    b[:2] *= scale
    w2[:, :2] /= scale
    for name, arr in ((convs[1].input[1], w), (convs[1].input[2], b), (convs[2].input[1], w2)):
        inits[name].CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), name))
    onnx.save(model, str(path))
    return str(path)


@needs_torch
def test_qat_export_keeps_the_learned_scales(tmp_path):
    src = _outlier_digits(tmp_path / "outlier.onnx")
    runs = {}
    for learned in (True, False):
        result = run_recipe(
            "qat",
            src,
            tmp_path / f"qat-{learned}.onnx",
            calibration_path=DIGITS_CAL,
            overrides={"epochs": 1, "max_samples": 120, "learned_ranges": learned},
        )
        runs[learned] = result.steps[0]["metrics"]
    m = runs[True]
    # every weight and activation quantizer found its ONNX tensor
    assert m["learned_weight_scales"] == 4
    assert m["learned_activation_ranges"] == m["activation_quantizers"] > 0
    # so the int8 model computes what the fake-quantized module computed
    assert m["export_agreement"] >= 0.99
    assert m["export_max_error"] < runs[False]["export_max_error"]
    assert "learned_weight_scales" not in runs[False]


@needs_torch
def test_qat_quantizers_are_shared_across_flatten_like_onnxruntime():
    from compression.engine.training import convert
    from compression.engine.training.passes import _qat_module

    module = convert.to_torch(DIGITS)
    import torch

    nodes = convert._node_map(onnx.load(DIGITS))
    qat = _qat_module(module, [], (torch.zeros(2, 1, 16, 16),), True, False, nodes)
    flatten = next(n for n in qat.graph.nodes if n.target == "13/Flatten")
    before, after = flatten.args[0], next(iter(flatten.users))
    assert after.target == before.target  # one quantizer, as GlobalAveragePool -> Flatten in int8


@needs_torch
def test_lsq_scales_start_from_the_calibrated_ranges_and_then_train():
    import torch
    from torch.ao.quantization import FakeQuantize

    from compression.engine.training import convert, lsq
    from compression.engine.training.passes import _calibrate, _qat_module

    x = np.load(DIGITS_CAL)["image"][:32]
    module = convert.to_torch(DIGITS)
    nodes = convert._node_map(onnx.load(DIGITS))
    qat = _qat_module(module, [], (torch.from_numpy(x[:2]),), True, False, nodes)
    _calibrate(qat, [x], 32)
    calibrated = {
        n: (m.scale.detach().clone(), m.zero_point.detach().clone())
        for n, m in qat.named_modules()
        if isinstance(m, FakeQuantize)
    }
    groups = lsq.make_learnable(qat, 1e-2)
    assert len(groups) == len(calibrated) > 0
    mods = dict(qat.named_modules())
    for name, (scale, zero) in calibrated.items():
        fq = mods[name]
        assert fq.scale.requires_grad and not fq.zero_point.requires_grad
        np.testing.assert_allclose(fq.scale.detach().numpy().ravel(), scale.numpy().ravel())
        np.testing.assert_array_equal(fq.zero_point.detach().numpy().ravel(), zero.numpy().ravel())
    opt = torch.optim.Adam([{"params": lsq.other_parameters(qat, groups)}, *groups], lr=1e-3)
    qat.train()
    qat(torch.from_numpy(x)).square().mean().backward()
    opt.step()
    moved = [
        n
        for n, (scale, _) in calibrated.items()
        if not np.allclose(mods[n].scale.detach().numpy().ravel(), scale.numpy().ravel())
    ]
    assert moved  # the scales are trained with the weights
    lsq.freeze(qat)
    assert not any(g["params"][0].requires_grad for g in groups)


@needs_torch
def test_gradual_structured_pruning_reaches_the_one_shot_widths(tmp_path, cnn_path, data64):
    widths, results = {}, {}
    for steps in (1, 2):
        out = tmp_path / f"p{steps}.onnx"
        results[steps] = run_recipe(
            "prune-structured",
            cnn_path,
            out,
            calibration_path=data64,
            overrides={"ratio": 0.5, "min_channels": 4, "finetune_epochs": 1, "steps": steps},
        ).steps[0]
        inits = {t.name: list(t.dims) for t in onnx.load(out).graph.initializer}
        widths[steps] = (inits["w1"], inits["w2"], inits["fc_w"])
    assert widths[2] == widths[1] == ([4, 3, 3, 3], [6, 4, 3, 3], [10, 6])
    assert results[2]["metrics"]["prune_steps"] == 2
    assert any(n.startswith("step 1 of 2 (25%") for n in results[2]["notes"])
    assert any("unpruned model" in n for n in results[2]["notes"])


@needs_torch
def test_prune_unstructured_recovery_keeps_the_zeros(tmp_path, cnn_path, data64):
    out = tmp_path / "p.onnx"
    result = run_recipe(
        "prune-unstructured",
        cnn_path,
        out,
        calibration_path=data64,
        overrides={"sparsity": 0.6, "min_elements": 16, "finetune_epochs": 2},
    )
    m = result.steps[0]["metrics"]
    assert m["finetune_epochs"] == 2 and len(m["history"]) == 3
    w = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    assert (w["w2"] == 0).mean() >= 0.59  # fine-tuning did not regrow pruned weights
    assert any("unpruned model" in n for n in result.steps[0]["notes"])


@needs_torch
def test_prune_structured_recovery_on_digits_beats_plain_pruning(tmp_path):
    plain, tuned = tmp_path / "plain.onnx", tmp_path / "tuned.onnx"
    run_recipe("prune-structured", DIGITS, plain, overrides={"ratio": 0.5})
    result = run_recipe(
        "prune-structured", DIGITS, tuned, calibration_path=DIGITS_CAL, overrides={"ratio": 0.5}
    )  # finetune_epochs defaults on with data
    m = result.steps[0]["metrics"]
    assert m["finetune_epochs"] > 0 and m["layers_pruned"] == 4  # GAP→Gemm tail included
    assert _accuracy(tuned, DIGITS_EVAL) > _accuracy(plain, DIGITS_EVAL) + 0.2


@needs_torch
def test_training_is_cancellable_between_batches(tmp_path, cnn_path, data64):
    with hooks.training_hooks(should_stop=lambda: True), pytest.raises(Cancelled):
        run_recipe(
            "distill",
            cnn_path,
            tmp_path / "s.onnx",
            calibration_path=data64,
            overrides={"epochs": 5, "min_channels": 4},
        )


@needs_torch
def test_time_budget_stops_training_and_keeps_the_best_state(
    tmp_path, cnn_path, data64, monkeypatch
):
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv(hooks.EVENTS_ENV, str(events))
    result = run_recipe(
        "distill",
        cnn_path,
        tmp_path / "s.onnx",
        calibration_path=data64,
        overrides={
            "epochs": 1000,
            "time_budget_s": 0.5,
            "patience": 0,
            "batch_size": 4,
            "min_channels": 4,
        },
    )
    notes = result.steps[0]["notes"]
    assert any("time budget" in n for n in notes)
    read, offset = hooks.read_events(events)
    assert read and offset == events.stat().st_size and read[0]["pass"] == "distill"


@needs_torch
def test_cli_optimize_qat_json(tmp_path):
    out = tmp_path / "q.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "compression",
            "optimize",
            DIGITS,
            "-o",
            str(out),
            "--recipe",
            "qat",
            "--calibration",
            DIGITS_CAL,
            "--eval",
            DIGITS_EVAL,
            "--set",
            "epochs=1",
            "--set",
            "max_samples=100",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    step = json.loads(proc.stdout)["steps"][0]
    assert step["pass"] == "qat" and step["metrics"]["metric"] == "accuracy"
    assert out.exists()


# --- these hold with or without torch -------------------------------------------------


def test_training_recipes_are_registered_and_documented():
    for name in ("distill", "qat"):
        p = get_pass(name)
        assert p.needs_calibration
        assert {o["name"] for o in p.Config.describe()} >= {"epochs", "train_path", "alpha"}
    names = {o["name"] for o in get_pass("prune-structured").Config.describe()}
    assert "finetune_epochs" in names


def test_without_torch_training_refuses_and_pruning_skips_the_finetune(
    tmp_path, cnn_path, data64, monkeypatch
):
    monkeypatch.setattr(training, "available", lambda: False)
    with pytest.raises(training.TrainingUnavailable, match=r"edgefleet\[train\]"):
        run_recipe("qat", cnn_path, tmp_path / "q.onnx", calibration_path=data64)
    result = run_recipe(
        "prune-unstructured", cnn_path, tmp_path / "p.onnx", calibration_path=data64
    )
    assert "finetune_epochs" not in result.steps[0]["metrics"]
    with pytest.raises(training.TrainingUnavailable):
        run_recipe(
            "prune-unstructured",
            cnn_path,
            tmp_path / "p.onnx",
            calibration_path=data64,
            overrides={"finetune_epochs": 3},
        )
