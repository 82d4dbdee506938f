"""Describe an ONNX model: IO, opsets, parameters, op histogram, FLOPs.

Everything here reads the protobuf with ``load_external_data=False`` so that
inspecting a hostile file never opens a path the file names (docs/reliability.md O1).
"""

from __future__ import annotations

import collections
import math
from pathlib import Path

import onnx
from onnx import TensorProto, helper

# ops whose cost is dominated by a multiply-accumulate over a reduction axis
_MAC_OPS = {
    "Conv",
    "ConvInteger",
    "QLinearConv",
    "MatMul",
    "MatMulInteger",
    "QLinearMatMul",
    "Gemm",
    "ConvTranspose",
}


def dtype_name(elem_type: int) -> str:
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower()


def _dims(type_proto: onnx.TypeProto) -> list[int | str | None] | None:
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def describe_value(value: onnx.ValueInfoProto) -> dict:
    return {
        "name": value.name,
        "dtype": dtype_name(value.type.tensor_type.elem_type),
        "shape": _dims(value.type),
    }


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old IR lists both)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _concrete(shape: list | None) -> list[int] | None:
    """Shape with symbolic dims replaced by 1 (batch-1 estimate), or None."""
    if shape is None:
        return None
    return [d if isinstance(d, int) and d > 0 else 1 for d in shape]


def _shape_map(model: onnx.ModelProto) -> dict[str, list[int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        # inference is best effort: unknown shapes only make the FLOP estimate partial
        inferred = model
    shapes: dict[str, list[int]] = {}
    g = inferred.graph
    for v in list(g.value_info) + list(g.input) + list(g.output):
        s = _concrete(_dims(v.type))
        if s is not None:
            shapes[v.name] = s
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def estimate_flops(model: onnx.ModelProto) -> int:
    """Rough multiply-add count x2 for conv/matmul ops, 1/element for the rest, batch 1."""
    shapes = _shape_map(model)
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        out_elems = math.prod(out)
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
            w_idx = 3 if node.op_type == "QLinearConv" else 1
            w = shapes.get(node.input[w_idx]) if len(node.input) > w_idx else None
            if w and len(w) >= 3:
                # weight is [M, C/group, k...]: each output element reads C/group*k inputs
                total += 2 * out_elems * math.prod(w[1:])
                continue
        elif node.op_type in _MAC_OPS:
            a = shapes.get(node.input[0])
            if a:
                k = a[-1]
                if node.op_type == "Gemm":
                    trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
                    k = a[0] if trans_a else a[-1]
                total += 2 * out_elems * k
                continue
        total += out_elems
    return int(total)


def count_parameters(model: onnx.ModelProto) -> int:
    n = sum(math.prod(t.dims) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for at in node.attribute:
                if at.name == "value" and at.HasField("t"):
                    n += math.prod(at.t.dims)
    return int(n)


def describe_loaded(model: onnx.ModelProto, size_bytes: int) -> dict:
    hist = collections.Counter(n.op_type for n in model.graph.node)
    return {
        "ir_version": int(model.ir_version),
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [describe_value(v) for v in graph_inputs(model)],
        "outputs": [describe_value(v) for v in model.graph.output],
        "parameters": count_parameters(model),
        "op_histogram": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        "flops": estimate_flops(model),
        "size_bytes": int(size_bytes),
    }


def inspect_model(path: str | Path) -> dict:
    """Return a JSON-serialisable description of the model at ``path``.

    Does not validate; use ``validate_model`` for untrusted files.
    """
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    return describe_loaded(model, path.stat().st_size)
