"""ONNX → trainable torch module (onnx2torch), checked against onnxruntime, and back.

The converted module is an ``fx.GraphModule`` whose submodules are named after
the ONNX nodes. Training changes only parameter values, so the way back to
ONNX is to write the trained tensors into the original graph's initializers:
the exported model keeps the exact graph, names and opsets of its source, and
no torch exporter is involved. Both directions are verified on sample inputs.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compression.engine.errors import PassRefused
from compression.engine.training import require

# largest |torch - onnxruntime| accepted on sample inputs, relative to the output's scale
TOLERANCE = 1e-3


class ConversionRefused(PassRefused):
    """The model uses ops or parameters the converter cannot turn into a trainable module."""


def _import_onnx2torch():
    """onnx2torch imports torchvision for two detection ops only (NonMaxSuppression,
    RoiAlign); a CPU-only torch often sits next to a torchvision built for another
    torch, whose import fails. Stand a placeholder in for it so every other op
    converts; those two ops then fail to run, and ``check_supported`` refuses them."""
    require()
    try:
        import torchvision  # noqa: F401
    except Exception:  # a broken build raises RuntimeError/OSError, not only ImportError
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[name]

        def _missing(*_args, **_kwargs):
            raise RuntimeError("torchvision is not available")

        tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.nms = ops.roi_align = _missing
        tv.ops = ops
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
    import onnx2torch

    return onnx2torch


_NEEDS_TORCHVISION = {"NonMaxSuppression", "RoiAlign"}


def check_supported(model: onnx.ModelProto) -> None:
    """Raise ``ConversionRefused`` naming every op the converter has no implementation for."""
    _import_onnx2torch()
    from onnx2torch.node_converters.registry import get_converter

    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    missing = set()
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if node.op_type in _NEEDS_TORCHVISION:
            missing.add(node.op_type)
            continue
        try:
            get_converter(node.op_type, opsets.get(domain, 1), domain)
        except NotImplementedError:
            missing.add(f"{domain}.{node.op_type}" if domain else node.op_type)
    if missing:
        raise ConversionRefused(
            "This model cannot be trained: the ONNX→PyTorch converter does not support "
            f"{', '.join(sorted(missing))}."
        )


def to_torch(model_path: str | Path):
    """Convert ``model_path`` to an ``fx.GraphModule`` (float32, eval mode)."""
    onnx2torch = _import_onnx2torch()
    model = onnx.load(str(model_path))
    check_supported(model)
    try:
        module = onnx2torch.convert(model, attach_onnx_mapping=True)
    except (NotImplementedError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ConversionRefused(f"This model cannot be converted for training: {exc}") from None
    module.onnx_initializer_names = _promote_weights(module, model)
    return module.float().eval()


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _trainable_initializers(model: onnx.ModelProto) -> set[str]:
    """Float initializers that are layer weights the converter leaves as constants:
    MatMul/Gemm operands, and the bias an Add puts on a MatMul's output."""
    floats = {
        t.name for t in model.graph.initializer if t.data_type in _FLOAT_TYPES and len(t.dims) >= 1
    }
    matmul_out = {o for n in model.graph.node if n.op_type == "MatMul" for o in n.output}
    wanted: set[str] = set()
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") or (
            node.op_type == "Add" and any(i in matmul_out for i in node.input)
        ):
            wanted.update(i for i in node.input if i in floats)
    return wanted


def _promote_weights(module, model: onnx.ModelProto) -> dict[str, str]:
    """Turn the converter's constant buffers for ``_trainable_initializers`` into
    parameters (one shared parameter per initializer, however many nodes read it).
    Returns parameter name -> initializer name, for ``write_back``."""
    import torch

    wanted = _trainable_initializers(model)
    names: dict[str, str] = {}
    shared: dict[str, torch.nn.Parameter] = {}
    for fx_node in module.graph.nodes:
        if fx_node.op != "call_module":
            continue
        mapping = getattr(module.get_submodule(fx_node.target), "onnx_mapping", None)
        if mapping is None:
            continue
        for arg, value in zip(fx_node.args, mapping.inputs, strict=False):
            if getattr(arg, "op", None) != "get_attr" or value not in wanted:
                continue
            owner_name, _, attr = arg.target.rpartition(".")
            owner = module.get_submodule(owner_name)
            if attr in owner._buffers:
                tensor = owner._buffers.pop(attr)
                param = shared.setdefault(value, torch.nn.Parameter(tensor.float()))
                owner.register_parameter(attr, param)
            names[arg.target] = value
    return names


def _run_torch(module, feeds: dict[str, np.ndarray], input_names: list[str]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names])
    outs = out if isinstance(out, tuple | list) else [out]
    return [o.detach().numpy() for o in outs]


def _run_ort(model_path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def max_error(module, model_path, feeds: dict[str, np.ndarray], input_names: list[str]) -> float:
    """Largest abs difference between torch and onnxruntime outputs, over the output scale."""
    got, ref = _run_torch(module, feeds, input_names), _run_ort(model_path, feeds)
    if len(got) != len(ref):
        raise ConversionRefused(
            f"the converted module returns {len(got)} outputs, the model {len(ref)}"
        )
    worst = 0.0
    for g, r in zip(got, ref, strict=True):
        if g.shape != r.shape:
            raise ConversionRefused(f"output shape {list(g.shape)} differs from {list(r.shape)}")
        scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
        worst = max(worst, float(np.abs(g.astype(np.float64) - r).max()) / scale if r.size else 0)
    return worst


def verify(
    module,
    model_path,
    feeds: dict[str, np.ndarray],
    input_names: list[str],
    what: str = "the converted module",
) -> float:
    err = max_error(module, model_path, feeds, input_names)
    if not err <= TOLERANCE:
        raise ConversionRefused(
            f"{what} disagrees with onnxruntime (max relative error "
            f"{err:.2e} > {TOLERANCE:g}); training it would not be faithful."
        )
    return err


def _node_map(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    from onnx2torch.onnx_graph import OnnxGraph

    return {name: node.proto for name, node in OnnxGraph(model.graph).nodes.items()}


def _tensor_targets(module_type: str, node: onnx.NodeProto) -> dict[str, tuple[str, bool]]:
    """param/buffer name -> (initializer name, transposed?) for the module kinds we train."""
    ins = list(node.input) + [""] * 5
    if module_type.startswith(("Conv", "ConvTranspose")) or module_type.startswith("OnnxConv"):
        return {"weight": (ins[1], False), "bias": (ins[2], False)}
    if module_type == "Linear" and node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return {"weight": (ins[1], not trans_b), "bias": (ins[2], False)}
    if module_type.startswith("BatchNorm"):
        return {
            "weight": (ins[1], False),
            "bias": (ins[2], False),
            "running_mean": (ins[3], False),
            "running_var": (ins[4], False),
        }
    return {}


def initializer_targets(module, model: onnx.ModelProto) -> dict[str, tuple[str, bool]]:
    """Module tensor name -> (initializer name, stored transposed?) for every tensor of
    ``module`` that has an initializer of ``model`` to go back to."""
    nodes = _node_map(model)
    inits = {t.name for t in model.graph.initializer}
    tensors = {k for k, _ in module.named_parameters(remove_duplicate=False)}
    tensors.update(k for k, v in module.named_buffers() if v.is_floating_point())
    targets = {
        key: (init, False)
        for key, init in getattr(module, "onnx_initializer_names", {}).items()
        if key in tensors and init in inits
    }
    for mod_name, sub in module.named_modules():
        node = nodes.get(mod_name)
        head, _, tail = mod_name.rpartition(".")
        if node is None and tail == "0":  # the layer inside a fused container (Conv+ReLU)
            node = nodes.get(head)
        if node is None:
            continue
        for attr, (init_name, transpose) in _tensor_targets(type(sub).__name__, node).items():
            key = f"{mod_name}.{attr}"
            if key in tensors and init_name and init_name in inits:
                targets[key] = (init_name, transpose)
    return targets


def write_back(module, source_path: str | Path, output_path: str | Path) -> int:
    """Copy the module's trained tensors into ``source_path``'s initializers; save to
    ``output_path``. Returns how many initializers were written. Refuses when a
    trainable parameter has no initializer to go to."""
    model = onnx.load(str(source_path))
    inits = {t.name: t for t in model.graph.initializer}
    written, orphans = 0, []
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update({k: v for k, v in module.named_buffers() if v.is_floating_point()})
    done: set[str] = set()
    for key, (init_name, transpose) in initializer_targets(module, model).items():
        arr = tensors[key].detach().cpu().numpy()
        arr = arr.T if transpose else arr
        old = inits[init_name]
        if list(arr.shape) != list(old.dims):
            raise ConversionRefused(
                f"{key}: shape {list(arr.shape)} does not fit "
                f"initializer {init_name!r} {list(old.dims)}"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
        old.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr).astype(dtype), init_name))
        done.add(key)
        written += 1
    shared = {id(tensors[k]) for k in done}
    for key, p in module.named_parameters():
        if p.requires_grad and key not in done and id(p) not in shared:
            orphans.append(key)
    if orphans:
        raise ConversionRefused(
            f"trained parameters with no ONNX initializer to go to: {', '.join(orphans[:5])}"
        )
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(output_path))
    return written
