"""Tiny ONNX models built with onnx.helper in tmp_path; no database, no services."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr.astype(np.float32), name)


def make_cnn(path, *, seed: int = 0, residual: bool = False) -> str:
    """Conv-BN-Relu-Conv-BN-Relu-GAP-Gemm classifier on 1x3x16x16 with a dynamic batch."""
    rng = np.random.default_rng(seed)
    c1, c2, k = 8, 8 if residual else 12, 10
    inits = [
        _init("w1", rng.normal(0, 0.3, (c1, 3, 3, 3))),
        _init("b1", np.zeros(c1)),
        _init("g1", rng.uniform(0.5, 1.5, c1)),
        _init("be1", rng.normal(0, 0.1, c1)),
        _init("m1", rng.normal(0, 0.1, c1)),
        _init("v1", rng.uniform(0.5, 1.5, c1)),
        _init("w2", rng.normal(0, 0.3, (c2, c1, 3, 3))),
        _init("b2", np.zeros(c2)),
        _init("g2", rng.uniform(0.5, 1.5, c2)),
        _init("be2", rng.normal(0, 0.1, c2)),
        _init("m2", rng.normal(0, 0.1, c2)),
        _init("v2", rng.uniform(0.5, 1.5, c2)),
        _init("fc_w", rng.normal(0, 0.3, (k, c2))),
        _init("fc_b", np.zeros(k)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "g2", "be2", "m2", "v2"], ["n2"], name="bn2"),
    ]
    last = "n2"
    if residual:
        nodes.append(helper.make_node("Add", ["n2", "r1"], ["res"], name="residual_add"))
        last = "res"
    nodes += [
        helper.make_node("Relu", [last], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def make_mlp(path, *, seed: int = 0, dim: int = 64, hidden: int = 256) -> str:
    """MatMul-Add-Relu-MatMul-Add block on [N, 8, dim] (transformer-FFN shaped)."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.1, (dim, hidden))),
        _init("b1", np.zeros(hidden)),
        _init("w2", rng.normal(0, 0.1, (hidden, dim))),
        _init("b2", np.zeros(dim)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
        helper.make_node("Relu", ["hb"], ["hr"], name="relu"),
        helper.make_node("MatMul", ["hr", "w2"], ["o"], name="mm2"),
        helper.make_node("Add", ["o", "b2"], ["y"], name="add2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def make_dataset(path, model_path: str, *, n: int = 32, seed: int = 1, labels: bool = True) -> str:
    """Random inputs for the model plus labels = the model's own argmax (so fp32 scores 100 %)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [n] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    x = rng.normal(0, 1, shape).astype(np.float32)
    arrays = {inp.name: x}
    if labels:
        out = sess.run(None, {inp.name: x})[0]
        arrays["labels"] = out.reshape(n, -1).argmax(axis=1)
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def cnn_path(tmp_path) -> str:
    return make_cnn(tmp_path / "cnn.onnx")


@pytest.fixture
def residual_cnn_path(tmp_path) -> str:
    return make_cnn(tmp_path / "res_cnn.onnx", residual=True)


@pytest.fixture
def mlp_path(tmp_path) -> str:
    return make_mlp(tmp_path / "mlp.onnx")


@pytest.fixture
def cnn_data(tmp_path, cnn_path) -> str:
    return make_dataset(tmp_path / "cnn_data.npz", cnn_path)


@pytest.fixture
def mlp_data(tmp_path, mlp_path) -> str:
    return make_dataset(tmp_path / "mlp_data.npz", mlp_path, labels=False)
