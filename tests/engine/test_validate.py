"""validate_model: every refusal path, and the sandbox holding under crashes (O1, O3, O4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.engine import ModelRejected, validate_model


def _rejected(path, **kwargs) -> ModelRejected:
    with pytest.raises(ModelRejected) as info:
        validate_model(path, **kwargs)
    assert info.value.message and info.value.message[0].isupper()
    return info.value


def test_valid_model_returns_inspection(cnn_path):
    info = validate_model(cnn_path)
    assert info["inputs"][0]["name"] == "x"
    assert info["inputs"][0]["shape"] == ["N", 3, 16, 16]
    assert info["opsets"]["ai.onnx"] == 17
    assert info["parameters"] > 0
    assert info["op_histogram"]["Conv"] == 2


def test_empty_file(tmp_path):
    p = tmp_path / "e.onnx"
    p.write_bytes(b"")
    assert _rejected(p).code == "empty"


def test_not_onnx_magic(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"PK\x03\x04 this is a zip")
    assert _rejected(p).code == "not_onnx"


def test_too_large(cnn_path):
    assert _rejected(cnn_path, max_bytes=100).code == "too_large"


def test_truncated(tmp_path, cnn_path):
    data = Path(cnn_path).read_bytes()
    p = tmp_path / "t.onnx"
    p.write_bytes(data[: len(data) // 2])
    assert _rejected(p).code in {"truncated", "checker_failed"}


def test_garbage_after_magic(tmp_path):
    p = tmp_path / "g.onnx"
    p.write_bytes(b"\x08" + bytes(range(256)) * 4)
    assert _rejected(p).code == "truncated"


def _save_with_external(tmp_path, location: str, *, where: str = "initializer"):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.ClearField("raw_data")
    del w.float_data[:]
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])
    if where == "initializer":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        graph = helper.make_graph(nodes, "g", [x], [y], [w])
    else:
        const = helper.make_node("Constant", [], ["w"], value=w)
        nodes = [const, helper.make_node("MatMul", ["x", "w"], ["y"])]
        if where == "subgraph":
            then_out = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4])
            then_g = helper.make_graph([const], "then", [], [then_out])
            else_g = helper.make_graph(
                [helper.make_node("Identity", ["x"], ["w2"])],
                "else",
                [],
                [helper.make_tensor_value_info("w2", TensorProto.FLOAT, [4, 4])],
            )
            cond = numpy_helper.from_array(np.array(True), "cond")
            if_node = helper.make_node(
                "If", ["cond"], ["w"], then_branch=then_g, else_branch=else_g
            )
            nodes = [if_node, helper.make_node("MatMul", ["x", "w"], ["y"])]
            graph = helper.make_graph(nodes, "g", [x], [y], [cond])
        else:
            graph = helper.make_graph(nodes, "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / f"ext_{where}.onnx"
    p.write_bytes(model.SerializeToString())
    return p


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "weights.bin"])
def test_external_data_initializer_refused(tmp_path, location):
    err = _rejected(_save_with_external(tmp_path, location))
    assert err.code == "external_data"
    assert location in err.message


def test_external_data_never_opened(tmp_path):
    # a symlink to a file we must never read: the refusal comes before any open
    target = tmp_path / "secret"
    target.write_bytes(b"\x00" * 64)
    (tmp_path / "link.bin").symlink_to(target)
    p = _save_with_external(tmp_path, "link.bin")
    target.chmod(0)  # even root's read would succeed, but the code must not reach it
    assert _rejected(p).code == "external_data"


@pytest.mark.parametrize("where", ["constant", "subgraph"])
def test_external_data_in_constant_and_subgraph_refused(tmp_path, where):
    assert _rejected(_save_with_external(tmp_path, "/etc/shadow", where=where)).code == (
        "external_data"
    )


def test_huge_declared_initializer_refused(tmp_path):
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100000, 100000])
    w.raw_data = b"\x00" * 16
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 100000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 100000])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / "bomb.onnx"
    p.write_bytes(model.SerializeToString())
    assert _rejected(p).code == "initializer_too_large"


def _tiny_with(tmp_path, *, domain: str = "", opset: int = 17, op: str = "Relu") -> str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets)
    p = tmp_path / "m.onnx"
    p.write_bytes(model.SerializeToString())
    return str(p)


def test_unknown_domain_refused(tmp_path):
    err = _rejected(_tiny_with(tmp_path, domain="evil.custom", op="Pwn"))
    assert err.code == "unknown_domain"
    assert "evil.custom" in err.message


@pytest.mark.parametrize("opset", [5, onnx.defs.onnx_opset_version() + 5])
def test_unsupported_opset_refused(tmp_path, opset):
    assert _rejected(_tiny_with(tmp_path, opset=opset)).code == "unsupported_opset"


def test_checker_failure_refused(tmp_path):
    # an op that does not exist in the default domain fails the checker
    assert _rejected(_tiny_with(tmp_path, op="NoSuchOp")).code == "checker_failed"


def test_runtime_failure_refused(tmp_path):
    # com.microsoft is allowed, but this contrib op does not exist: onnxruntime refuses it
    err = _rejected(_tiny_with(tmp_path, domain="com.microsoft", op="NoSuchContribOp"))
    assert err.code in {"runtime_failed", "checker_failed"}


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("segfault", "validator_crashed"),
        ("oom", "validator_crashed"),
        ("hang", "validator_timeout"),
    ],
)
def test_sandbox_holds_when_child_misbehaves(cnn_path, mode, code):
    err = _rejected(cnn_path, _test_crash=mode, timeout_s=5, memory_mb=512)
    assert err.code == code
    # the caller survived, and the next validation works
    assert validate_model(cnn_path)["inputs"][0]["name"] == "x"


def test_unused_unknown_domain_import_is_harmless(tmp_path):
    path = _tiny_with(tmp_path)
    model = onnx.load(path)
    model.opset_import.append(helper.make_opsetid("ai.onnx.training", 1))
    onnx.save(model, path)
    assert validate_model(path)["opsets"]["ai.onnx.training"] == 1
