"""Every registered pass on a tiny model in tmp_path, plus config and refusal paths."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from compression.engine import PassConfigError, PassRefused
from compression.engine.passes import get_pass, list_passes

from .conftest import make_dataset


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _cos(a, b):
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _x(shape, n=4, seed=3):
    return np.random.default_rng(seed).normal(0, 1, (n, *shape)).astype(np.float32)


def test_registry_lists_every_pass():
    assert list_passes() == sorted(
        [
            "prepare",
            "int8-dynamic",
            "int8-static",
            "mixed-precision",
            "fp16",
            "prune-unstructured",
            "prune-structured",
            "optimize",
            "distill",
            "qat",
            "int8-nncf",
        ]
    )
    with pytest.raises(PassConfigError, match="unknown pass"):
        get_pass("int4-magic")


def test_config_rejects_unknown_keys_and_bad_values():
    cfg = get_pass("int8-static").Config
    with pytest.raises(PassConfigError, match=r"unknown option\(s\) \['per_chanel'\]"):
        cfg.from_dict({"per_chanel": True})
    with pytest.raises(PassConfigError, match="calibrate_method must be one of"):
        cfg.from_dict({"calibrate_method": "magic"})
    with pytest.raises(PassConfigError, match="max_samples must be of type int"):
        cfg.from_dict({"max_samples": "lots"})
    parsed = cfg.from_dict({"per_channel": "false", "max_samples": "10", "nodes_to_exclude": "a,b"})
    assert parsed.per_channel is False and parsed.max_samples == 10
    assert parsed.nodes_to_exclude == ["a", "b"]
    assert all(f["help"] for f in cfg.describe())


def test_prepare_moves_constants_and_upgrades_opset(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w_value")
    nodes = [
        helper.make_node("Constant", [], ["w"], value=w),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    src = tmp_path / "old.onnx"
    onnx.save(model, src)
    result = get_pass("prepare").run(src, get_pass("prepare").make_config(), tmp_path / "p.onnx")
    out = onnx.load(result.output_path)
    assert result.metrics["constants_moved"] == 1
    assert result.metrics["opset"] >= 13
    assert not [n for n in out.graph.node if n.op_type == "Constant"]
    assert all(n.name for n in out.graph.node)
    x = _x((4,))
    np.testing.assert_allclose(_run(result.output_path, x), x @ np.ones((4, 3)), rtol=1e-5)


def test_int8_dynamic_on_matmul_block(tmp_path, mlp_path):
    p = get_pass("int8-dynamic")
    result = p.run(mlp_path, p.make_config(), tmp_path / "q.onnx")
    assert result.metrics["integer_ops"] >= 2
    assert result.metrics["size_ratio"] < 0.35
    x = _x((8, 64))
    assert _cos(_run(mlp_path, x), _run(result.output_path, x)) > 0.99


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_static_calibration_methods(tmp_path, cnn_path, cnn_data, method):
    p = get_pass("int8-static")
    cfg = p.make_config(
        {"calibration_path": cnn_data, "calibrate_method": method, "max_samples": 16}
    )
    result = p.run(cnn_path, cfg, tmp_path / "q.onnx")
    assert result.metrics["quantize_linear_nodes"] > 0
    x = _x((3, 16, 16))
    assert _cos(_run(cnn_path, x), _run(result.output_path, x)) > 0.95


def test_int8_static_per_tensor_and_exclusions(tmp_path, cnn_path, cnn_data):
    p = get_pass("int8-static")
    cfg = p.make_config(
        {
            "calibration_path": cnn_data,
            "per_channel": False,
            "op_types": ["Conv"],
            "nodes_to_exclude": ["fc"],
            "max_samples": 8,
        }
    )
    result = p.run(cnn_path, cfg, tmp_path / "q.onnx")
    model = onnx.load(result.output_path)
    fc = next(n for n in model.graph.node if n.name == "fc")
    assert not any("DequantizeLinear" in i for i in fc.input[1:])


@pytest.mark.parametrize("keep", [True, False])
def test_int8_static_keeps_the_rgb_stem_in_float(tmp_path, cnn_path, cnn_data, keep):
    p = get_pass("int8-static")
    cfg = p.make_config({"calibration_path": cnn_data, "keep_stem_float": keep, "max_samples": 8})
    result = p.run(cnn_path, cfg, tmp_path / "q.onnx")
    graph = onnx.load(result.output_path).graph
    conv1 = next(n for n in graph.node if n.name == "conv1")
    float_weight = conv1.input[1] in {t.name for t in graph.initializer}
    assert float_weight is keep  # kept: a float initializer, not a DequantizeLinear output
    assert any("stem" in n for n in result.notes) is keep


def test_int8_static_requires_calibration(tmp_path, cnn_path):
    p = get_pass("int8-static")
    with pytest.raises(PassConfigError, match="calibration"):
        p.run(cnn_path, p.make_config(), tmp_path / "q.onnx")


def test_mixed_precision_keeps_sensitive_nodes_in_float(tmp_path, cnn_path, cnn_data):
    p = get_pass("mixed-precision")
    # an unreachable target forces the search to exclude nodes and report it
    cfg = p.make_config(
        {
            "calibration_path": cnn_data,
            "target_cosine": 0.999999,
            "max_excluded": 2,
            "eval_samples": 16,
            "max_samples": 16,
        }
    )
    result = p.run(cnn_path, cfg, tmp_path / "m.onnx")
    assert result.metrics["float_nodes"]
    assert len(result.metrics["history"]) >= 2
    assert any("most sensitive" in n for n in result.notes)
    easy = p.make_config({"calibration_path": cnn_data, "target_cosine": 0.5, "max_samples": 16})
    assert p.run(cnn_path, easy, tmp_path / "m2.onnx").metrics["float_nodes"] == []


def test_fp16_halves_size_and_keeps_io(tmp_path, cnn_path):
    p = get_pass("fp16")
    result = p.run(cnn_path, p.make_config(), tmp_path / "h.onnx")
    assert result.metrics["size_ratio"] < 0.7  # tiny model: graph overhead dominates
    out = onnx.load(result.output_path)
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = _x((3, 16, 16))
    assert _cos(_run(cnn_path, x), _run(result.output_path, x)) > 0.999


def test_fp16_node_block_list(tmp_path, cnn_path):
    p = get_pass("fp16")
    result = p.run(cnn_path, p.make_config({"node_block_list": ["fc"]}), tmp_path / "h.onnx")
    inits = {t.name: t for t in onnx.load(result.output_path).graph.initializer}
    assert inits["fc_w"].data_type == onnx.TensorProto.FLOAT
    assert inits["w1"].data_type == onnx.TensorProto.FLOAT16


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_unstructured(tmp_path, cnn_path, scope):
    p = get_pass("prune-unstructured")
    cfg = p.make_config({"sparsity": 0.6, "scope": scope, "min_elements": 16})
    result = p.run(cnn_path, cfg, tmp_path / "s.onnx")
    assert 0.55 <= result.metrics["zero_fraction"] <= 0.65
    assert result.metrics["gzip_bytes_after"] < result.metrics["gzip_bytes_before"]


def test_prune_structured_rewrites_consumers(tmp_path, cnn_path):
    p = get_pass("prune-structured")
    result = p.run(cnn_path, p.make_config({"ratio": 0.5, "min_channels": 2}), tmp_path / "st.onnx")
    m = result.metrics
    # conv1 -> bn1 -> relu1 -> conv2, and conv2 -> bn2 -> relu2 -> pool -> flatten -> fc
    assert m["layers_pruned"] == 2
    assert m["parameters_after"] < m["parameters_before"]
    assert m["flops_after"] < m["flops_before"]
    w = {t.name: t for t in onnx.load(result.output_path).graph.initializer}
    assert w["w1"].dims[0] == 4 and w["w2"].dims[1] == 4
    assert list(w["g1"].dims) == [4]
    assert w["w2"].dims[0] == 6 and list(w["g2"].dims) == [6] and list(w["fc_w"].dims) == [10, 6]
    assert _run(result.output_path, _x((3, 16, 16))).shape == (4, 10)


def test_prune_structured_refuses_residual_graph(tmp_path, residual_cnn_path):
    p = get_pass("prune-structured")
    with pytest.raises(PassRefused, match=r"cannot rewrite this graph safely.*Add"):
        p.run(residual_cnn_path, p.make_config({"min_channels": 2}), tmp_path / "st.onnx")


def test_prune_structured_refuses_graph_without_conv(tmp_path, mlp_path):
    p = get_pass("prune-structured")
    with pytest.raises(PassRefused, match="no ungrouped Conv"):
        p.run(mlp_path, p.make_config(), tmp_path / "st.onnx")


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_optimize_fuses_batchnorm(tmp_path, cnn_path, level):
    p = get_pass("optimize")
    result = p.run(cnn_path, p.make_config({"level": level}), tmp_path / "o.onnx")
    ops = [n.op_type for n in onnx.load(result.output_path).graph.node]
    assert "BatchNormalization" not in ops
    assert result.metrics["nodes_after"] < result.metrics["nodes_before"]
    x = _x((3, 16, 16))
    np.testing.assert_allclose(_run(result.output_path, x), _run(cnn_path, x), rtol=1e-3, atol=1e-4)


def test_optimize_refuses_layout_level():
    with pytest.raises(PassConfigError, match="level must be one of"):
        get_pass("optimize").make_config({"level": "all"})


def test_dataset_helper_makes_labels(tmp_path, cnn_path):
    data = np.load(make_dataset(tmp_path / "d.npz", cnn_path, n=5))
    assert data["labels"].shape == (5,)
