"""The quantization parameters a QAT module learned, as onnxruntime quantizer overrides.

QAT trains the weights against its fake-quantizers' scales and zero-points; an
export that lets onnxruntime recalibrate the ranges gets other scales, and the
weights no longer fit them. ``learned_overrides`` reads the scales back:

- weights: each ``weight_fake_quant`` (per channel or per tensor) goes to the
  initializer the weight is written back to (``convert.initializer_targets``);
- activations: each activation fake-quantizer is matched to the ONNX tensor it
  observes by value: the module runs with fake-quantization off (it then
  computes exactly the float graph) and onnxruntime runs the float graph with
  every intermediate tensor as an output; a tensor whose shape and values agree
  is the one. Ops folded together on the torch side (Conv+ReLU) and reshaping
  ops that keep values both map correctly this way, with no name bookkeeping.

The result is onnxruntime's ``TensorQuantOverrides`` (scale and zero-point per
tensor, a list per channel with ``axis`` for weights); tensors nothing matched
keep the quantizer's own calibration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from compression.engine.training import convert

# relative difference under which a module tensor is taken to be an ONNX tensor
MATCH_TOLERANCE = 1e-4


# ops onnxruntime's QDQ quantizer gives their input's scale and zero-point
SAME_AS_INPUT = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "AveragePool",
        "MaxPool",
        "Slice",
        "TopK",
    }
)


def share_like_onnxruntime(module, nodes: dict[str, onnx.NodeProto]) -> int:
    """Give the fake-quantizer after each ``SAME_AS_INPUT`` op its input's quantizer, as
    the exported model will: QAT then trains with the scales int8 will run. ``nodes``:
    module name -> ONNX node. Returns how many quantizers were folded into another."""
    from torch.ao.quantization import FakeQuantizeBase

    def quantizer(node):
        return node.op == "call_module" and isinstance(
            module.get_submodule(node.target), FakeQuantizeBase
        )

    shared = 0
    for node in module.graph.nodes:
        if not quantizer(node) or not node.args:
            continue
        op = node.args[0]
        onnx_node = nodes.get(op.target) if getattr(op, "op", None) == "call_module" else None
        if onnx_node is None or onnx_node.op_type not in SAME_AS_INPUT or not op.args:
            continue
        upstream = op.args[0]
        if getattr(upstream, "op", None) == "call_module" and quantizer(upstream):
            node.target = upstream.target
            shared += 1
    if shared:
        module.recompile()
        module.delete_all_unused_submodules()
    return shared


def _fake_quantizers(module):
    from torch.ao.quantization import FakeQuantizeBase

    weights, acts = {}, {}
    for name, sub in module.named_modules():
        if not isinstance(sub, FakeQuantizeBase):
            continue
        owner, _, attr = name.rpartition(".")
        (weights if attr == "weight_fake_quant" else acts)[owner if owner else name] = sub
    return weights, acts


def _params(fq) -> tuple[np.ndarray, np.ndarray] | None:
    scale, zero = fq.scale, fq.zero_point  # what its forward uses
    scale = scale.detach().double().numpy().reshape(-1)
    # a learnable quantizer keeps its zero-point in float; its forward rounds it
    zero = np.clip(np.rint(zero.detach().double().numpy().reshape(-1)), fq.quant_min, fq.quant_max)
    zero = zero.astype(np.int64)
    if not scale.size or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        return None  # never observed anything
    return scale, zero


def _is_per_channel(fq) -> bool:
    import torch

    return fq.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)


def _weight_overrides(module, model: onnx.ModelProto, weights: dict) -> dict[str, list]:
    targets = convert.initializer_targets(module, model)
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    out: dict[str, list] = {}
    for owner, fq in weights.items():
        target = targets.get(f"{owner}.weight")
        qp = _params(fq)
        if target is None or qp is None:
            continue
        init, transposed = target
        scale, zero = qp
        if _is_per_channel(fq):
            axis = int(fq.ch_axis)
            if transposed:  # stored [in, out] for a Gemm without transB
                axis = ranks[init] - 1 - axis
            out[init] = [
                {"axis": axis, "scale": float(s), "zero_point": int(z)}
                for s, z in zip(scale, zero, strict=True)
            ]
        else:
            out[init] = [{"scale": float(scale[0]), "zero_point": int(zero[0])}]
    return out


def _observed_inputs(module, acts: dict, feeds: dict, input_names: list[str]) -> dict:
    """What each activation fake-quantizer sees, with every fake-quantizer passing
    values through unchanged (so the module computes the float graph). A quantizer
    torch shares between an op's input and output (average pooling) sees both."""
    import torch

    seen: dict[str, list[np.ndarray]] = {name: [] for name in acts}
    state = [
        (fq, fq.fake_quant_enabled.clone(), fq.observer_enabled.clone()) for fq in acts.values()
    ]
    w_state = [
        (m, m.fake_quant_enabled.clone(), m.observer_enabled.clone())
        for m in _fake_quantizers(module)[0].values()
    ]
    hooks = []
    for name, fq in acts.items():

        def grab(_mod, args, name=name):
            seen[name].append(args[0].detach().numpy().copy())

        hooks.append(fq.register_forward_pre_hook(grab))
    try:
        for fq, _, _ in state + w_state:
            fq.disable_fake_quant()
            fq.disable_observer()
        module.eval()
        with torch.no_grad():
            module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names])
    finally:
        for h in hooks:
            h.remove()
        for fq, fq_on, obs_on in state + w_state:
            fq.fake_quant_enabled.copy_(fq_on)
            fq.observer_enabled.copy_(obs_on)
    return seen


def _all_tensors(model_path, feeds: dict) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    have = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in have:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                have.add(name)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, feeds), strict=True))
    values.update(feeds)  # graph inputs can be observed too
    return {
        k: v
        for k, v in values.items()
        if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)
    }


def _matches(observed: np.ndarray, tensors: dict[str, np.ndarray]) -> list[str]:
    found = []
    for name, value in tensors.items():
        if value.shape != observed.shape:
            continue
        scale = max(1.0, float(np.abs(value).max()) if value.size else 1.0)
        if float(np.abs(value.astype(np.float64) - observed).max()) <= MATCH_TOLERANCE * scale:
            found.append(name)
    return found


def learned_overrides(
    module, model_path: str | Path, feeds: dict[str, np.ndarray], input_names: list[str]
) -> tuple[dict[str, list], dict[str, int]]:
    """``TensorQuantOverrides`` from a QAT module whose float tensors were written into
    ``model_path``; and counts (weights, activations matched, activations in the module)."""
    model = onnx.load(str(model_path))
    weights, acts = _fake_quantizers(module)
    overrides = _weight_overrides(module, model, weights)
    n_weights = len(overrides)
    tensors = _all_tensors(model_path, feeds)
    matched = 0
    for name, observed in _observed_inputs(module, acts, feeds, input_names).items():
        qp = _params(acts[name])
        names = [t for o in observed for t in _matches(o, tensors)] if qp is not None else []
        zp_type = np.uint8 if str(acts[name].dtype) == "torch.quint8" else np.int8
        for tensor in names:  # onnxruntime wants arrays of the quantized type here
            overrides[tensor] = [
                {"scale": np.array(qp[0][0], np.float32), "zero_point": np.array(qp[1][0], zp_type)}
            ]
        matched += bool(names)
    counts = {
        "learned_weight_scales": n_weights,
        "learned_activation_ranges": matched,
        "activation_quantizers": len(acts),
    }
    return overrides, counts


def export_fidelity(module, exported_path, inputs: list[np.ndarray], names: list[str]) -> dict:
    """How closely the exported int8 model reproduces the fake-quantized module on
    ``inputs``: top-1 agreement of the first output (classes, sequences) and the largest
    abs difference relative to the output's scale."""
    import onnxruntime as ort

    from compression.engine.training.loop import output_kind, predict_torch

    got = predict_torch(module, inputs)[0]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(exported_path), opts, providers=["CPUExecutionProvider"])
    ref = sess.run(None, dict(zip(names, inputs, strict=True)))[0]
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    out = {"export_max_error": round(float(np.abs(got - ref).max()) / scale, 6)}
    if output_kind(ref) in ("logits", "sequence"):
        out["export_agreement"] = round(float(np.mean(got.argmax(-1) == ref.argmax(-1))), 6)
    return out
