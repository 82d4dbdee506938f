"""Inference-time memory bombs: graphs that are small and valid on disk but
allocate without bound when they run are refused by the bounded inference in
the validation sandbox (code `inference_memory`); ordinary models still pass."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.engine import ModelRejected, validate_model

OPSET = [helper.make_opsetid("", 17)]


def constant_of_shape_bomb() -> bytes:
    """A 100000×100000 float tensor (40 GB) from a 16-byte shape constant."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    big = helper.make_tensor_value_info("big", TensorProto.FLOAT, [100_000, 100_000])
    shape = numpy_helper.from_array(np.array([100_000, 100_000], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["y"]),
            helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        ],
        "bomb",
        [x],
        [y, big],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    return model.SerializeToString()


def input_dependent_bomb() -> bytes:
    """n = int(max|x| × 10⁶); an n×n tensor: harmless to every static check."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    scale = numpy_helper.from_array(np.array(1e6, dtype=np.float32), "scale")
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("ReduceMax", ["a"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "scale"], ["ms"]),
        helper.make_node("Cast", ["ms"], ["n"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "n1"], ["shape"], axis=0),
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "bomb", [x], [y], [scale, axes]), opset_imports=OPSET
    )
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("build", [constant_of_shape_bomb, input_dependent_bomb])
def test_inference_memory_bomb_is_refused(tmp_path, build):
    path = tmp_path / "bomb.onnx"
    path.write_bytes(build())
    with pytest.raises(ModelRejected) as exc:
        validate_model(path, memory_mb=1024, timeout_s=60)
    assert exc.value.code == "inference_memory"
    assert "1024 MB" in exc.value.message
    assert str(tmp_path) not in exc.value.message


def test_a_model_that_runs_is_still_accepted(tmp_path, cnn_path):
    assert validate_model(cnn_path, memory_mb=1024)["inputs"]


def test_symbolic_dims_that_our_input_cannot_fill_are_not_refused(tmp_path):
    # 3×3 convolution without padding over an image of symbolic size: our
    # generated 1×1 image fails, a real one would not; the device decides.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None, None])
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    path = tmp_path / "conv.onnx"
    path.write_bytes(model.SerializeToString())
    assert validate_model(path)["inputs"][0]["name"] == "x"
