"""prepare: make a model safe to quantize.

Real exported models break naive quantization in three ways this pass fixes:
weights stored as ``Constant`` nodes (the quantizer only sees initializers),
opsets below 13 (per-channel QDQ needs axis support in Q/DQ ops), and missing
shapes (onnxruntime's pre-processing runs symbolic shape inference, which
fails on some graphs; then we fall back to ONNX shape inference only).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import numpy_helper, version_converter

from compression.engine.errors import PassRefused
from compression.engine.passes import _util
from compression.engine.passes.base import Pass, PassConfig, PassResult, doc, register

log = logging.getLogger(__name__)


@dataclass
class PrepareConfig(PassConfig):
    min_opset: int = field(
        default=13, metadata=doc("Upgrade the default-domain opset to at least this version.")
    )
    constants_to_initializers: bool = field(
        default=True,
        metadata=doc(
            "Turn Constant nodes holding tensors into initializers so quantizers see the weights."
        ),
    )
    ort_preprocess: bool = field(
        default=True,
        metadata=doc(
            "Run onnxruntime.quantization.quant_pre_process "
            "(shape inference + basic graph optimization)."
        ),
    )
    optimize: bool = field(
        default=True,
        metadata=doc("Let the pre-processing fold BatchNorm etc. (skip_optimization=False)."),
    )


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Move top-level ``Constant(value=tensor)`` nodes to initializers; returns how many."""
    moved = 0
    keep = []
    for node in model.graph.node:
        single = node.op_type == "Constant" and len(node.attribute) == 1
        attr = node.attribute[0] if single else None
        if attr is not None and attr.name == "value" and attr.HasField("t"):
            arr = numpy_helper.to_array(attr.t)
            model.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
            moved += 1
        else:
            keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved


@register
class PreparePass(Pass):
    name = "prepare"
    description = "Constants to initializers, opset upgrade, onnxruntime pre-processing."
    Config = PrepareConfig

    def run(self, input_path, config: PrepareConfig, output_path) -> PassResult:
        notes: list[str] = []
        model = _util.load(input_path)
        moved = constants_to_initializers(model) if config.constants_to_initializers else 0
        if moved:
            notes.append(f"moved {moved} Constant node(s) to initializers")
        opset = _util.default_opset(model)
        if opset < config.min_opset:
            try:
                model = version_converter.convert_version(model, config.min_opset)
            except Exception as exc:
                # the converter raises plain RuntimeError/ValueError subclasses per adapter
                raise PassRefused(
                    f"Cannot upgrade the model from opset {opset} to {config.min_opset}: {exc}"
                ) from None
            notes.append(f"upgraded opset {opset} -> {config.min_opset}")
        with tempfile.TemporaryDirectory(prefix="edgefleet-prepare-") as tmp:
            staged = Path(tmp) / "staged.onnx"
            _util.save(model, staged)
            if config.ort_preprocess:
                mode = _preprocess(staged, output_path, optimize=config.optimize)
                notes.append(f"onnxruntime pre-processing: {mode}")
            else:
                _util.save(_util.load(staged), output_path)
        named = _name_nodes(output_path)
        if named:
            notes.append(f"named {named} anonymous node(s) (exclusion lists need names)")
        metrics = _util.size_metrics(input_path, output_path)
        metrics["constants_moved"] = moved
        metrics["opset"] = _util.default_opset(_util.load(output_path))
        return PassResult(str(output_path), metrics, notes)


def _ort_tools_without_torch() -> None:
    """Register ``onnxruntime.tools`` without running its ``__init__``, which imports torch
    whenever torch is installed (for an export helper this pass never uses): seconds of
    import in every child that pre-processes a model where the ``train`` extra is
    installed. Its submodules (symbolic shape inference) import as usual."""
    import importlib.util
    import sys
    import types

    if "onnxruntime.tools" in sys.modules:
        return
    spec = importlib.util.find_spec("onnxruntime.tools")
    if spec is None or not spec.submodule_search_locations:
        return
    module = types.ModuleType("onnxruntime.tools")
    module.__spec__, module.__package__ = spec, "onnxruntime.tools"
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    sys.modules["onnxruntime.tools"] = module


def _preprocess(src: Path, dst, *, optimize: bool) -> str:
    _ort_tools_without_torch()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = [
        ("full", {}),
        ("without symbolic shape inference", {"skip_symbolic_shape": True}),
        ("ONNX shape inference only", {"skip_symbolic_shape": True, "skip_optimization": True}),
    ]
    last_error: Exception | None = None
    for label, kwargs in attempts:
        kwargs.setdefault("skip_optimization", not optimize)
        try:
            # onnxruntime's symbolic shape inference dumps sym_shape_infer_temp.onnx
            # (+ external data) into the *current* directory when it gives up:
            # run it from a scratch directory so nothing lands in the caller's cwd.
            with (
                tempfile.TemporaryDirectory(prefix="prepare-") as scratch,
                contextlib.chdir(scratch),
            ):
                quant_pre_process(str(Path(src).resolve()), str(Path(dst).resolve()), **kwargs)
            return label
        except Exception as exc:
            # symbolic shape inference fails on many real graphs (custom dims, loops): fall back
            log.info("quant_pre_process %s failed: %s", label, exc)
            last_error = exc
    try:
        model = onnx.shape_inference.infer_shapes(_util.load(src))
        _util.save(model, dst)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        raise PassRefused(
            f"Pre-processing failed ({last_error}) and so did shape inference ({exc})."
        ) from None
    return "fallback: plain ONNX shape inference"


def _name_nodes(path) -> int:
    model = _util.load(path)
    taken = {n.name for n in model.graph.node if n.name}
    count = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            count += 1
    if count:
        _util.save(model, path)
    return count
