"""Hostile and broken ONNX files for upload tests (docs/reliability.md O1–O4)."""

from __future__ import annotations

import os

import onnx
from onnx import TensorProto, helper

from tests.conftest import tiny_model_bytes
from tests.engine.test_inference_bombs import constant_of_shape_bomb, input_dependent_bomb

__all__ = ["constant_of_shape_bomb", "input_dependent_bomb"]


def _with_external_initializer(location: str) -> bytes:
    model = onnx.load_from_string(tiny_model_bytes())
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", "128")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def external_relative() -> bytes:
    return _with_external_initializer("../../../../etc/passwd")


def external_absolute() -> bytes:
    return _with_external_initializer("/etc/passwd")


def truncated() -> bytes:
    data = tiny_model_bytes()
    return data[: len(data) // 2]


def random_bytes() -> bytes:
    return b"\x08" + os.urandom(4096)  # passes the first-byte check, garbage after


def not_protobuf() -> bytes:
    return b"PK\x03\x04 this is a zip header, not a model" * 10


def unknown_domain() -> bytes:
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.evil")
    graph = helper.make_graph(
        [node],
        "evil",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)]
    )
    model.ir_version = 8
    return model.SerializeToString()


def unknown_opset() -> bytes:
    model = onnx.load_from_string(tiny_model_bytes())
    model.opset_import[0].version = 999
    return model.SerializeToString()


def huge_declared_initializer() -> bytes:
    """Declares a 40 GB float tensor while carrying a few bytes: a memory bomb."""
    model = onnx.load_from_string(tiny_model_bytes())
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([100_000, 100_000])
    tensor.raw_data = b"\x00" * 16
    return model.SerializeToString()
