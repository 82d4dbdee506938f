"""int8-dynamic and int8-static: thin, typed wrappers over onnxruntime.quantization.

Dynamic quantization stores int8 weights and quantizes activations at run
time: right for MatMul-heavy (transformer) graphs, usually slower for CNNs on
CPU (ConvInteger has no fast kernel) — search measures it rather than
assuming. Static quantization calibrates activation ranges on a dataset and
writes QDQ (or QOperator) graphs that onnxruntime runs on int8 kernels.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from compression.engine.errors import PassConfigError, PassRefused
from compression.engine.passes import _util
from compression.engine.passes.base import Pass, PassConfig, PassResult, doc, register

log = logging.getLogger(__name__)

_QTYPES = ("qint8", "quint8")
_CALIB_METHODS = ("minmax", "entropy", "percentile")


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "qint8" else QuantType.QUInt8


def maybe_preprocess(input_path, enabled: bool, tmp: str, notes: list[str]) -> str:
    """Run the prepare pass into ``tmp`` when asked (quantizers need shapes/initializers)."""
    if not enabled:
        return str(input_path)
    from compression.engine.passes.prepare import PrepareConfig, PreparePass

    staged = str(Path(tmp) / "prepared.onnx")
    result = PreparePass().run(input_path, PrepareConfig(), staged)
    notes.extend(f"prepare: {n}" for n in result.notes)
    return staged


def quantized_node_count(path) -> dict:
    model = _util.load(path)
    ops = [n.op_type for n in model.graph.node]
    return {
        "quantize_linear_nodes": ops.count("QuantizeLinear"),
        "integer_ops": sum(
            op
            in (
                "MatMulInteger",
                "ConvInteger",
                "QLinearConv",
                "QLinearMatMul",
                "DynamicQuantizeMatMul",
            )
            for op in ops
        ),
    }


@dataclass
class DynamicConfig(PassConfig):
    CHOICES = {"weight_type": _QTYPES}

    weight_type: str = field(default="qint8", metadata=doc("Weight type: qint8 or quint8."))
    per_channel: bool = field(default=False, metadata=doc("Per-channel weight scales."))
    op_types: list[str] | None = field(
        default=None,
        metadata=doc(
            "Op types to quantize (default: all supported, "
            "Conv included, so the CNN trap is measured)."
        ),
    )
    nodes_to_exclude: list[str] = field(
        default_factory=list, metadata=doc("Node names kept in float.")
    )
    reduce_range: bool = field(
        default=False, metadata=doc("7-bit weights (helps some older x86 CPUs without VNNI).")
    )
    preprocess: bool = field(default=True, metadata=doc("Run the prepare pass first."))


@register
class DynamicInt8Pass(Pass):
    name = "int8-dynamic"
    description = "Dynamic int8 quantization (weights int8, activations quantized at run time)."
    Config = DynamicConfig

    def run(self, input_path, config: DynamicConfig, output_path) -> PassResult:
        from onnxruntime.quantization import quantize_dynamic

        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="edgefleet-int8d-") as tmp:
            src = maybe_preprocess(input_path, config.preprocess, tmp, notes)
            quantize_dynamic(
                src,
                str(output_path),
                op_types_to_quantize=config.op_types,
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                weight_type=_qtype(config.weight_type),
                nodes_to_exclude=config.nodes_to_exclude or None,
            )
        metrics = {
            **_util.size_metrics(input_path, output_path),
            **quantized_node_count(output_path),
        }
        if not metrics["integer_ops"]:
            notes.append("no node was quantized (no supported op types in the graph)")
        return PassResult(str(output_path), metrics, notes)


@dataclass
class StaticConfig(PassConfig):
    CHOICES = {
        "calibrate_method": _CALIB_METHODS,
        "quant_format": ("qdq", "qoperator"),
        "activation_type": _QTYPES,
        "weight_type": _QTYPES,
    }

    calibration_path: str | None = field(
        default=None, metadata=doc("Dataset .npz with one array per model input.")
    )
    max_samples: int = field(
        default=200, metadata=doc("At most this many calibration samples (bounds memory/time).")
    )
    calibrate_method: str = field(default="minmax", metadata=doc("minmax, entropy or percentile."))
    quant_format: str = field(
        default="qdq", metadata=doc("qdq (QuantizeLinear/DequantizeLinear pairs) or qoperator.")
    )
    per_channel: bool = field(
        default=True, metadata=doc("Per-channel weight scales (needs opset >= 13).")
    )
    activation_type: str = field(
        default="quint8", metadata=doc("Activation type: quint8 (x86 fast path) or qint8.")
    )
    weight_type: str = field(default="qint8", metadata=doc("Weight type: qint8 or quint8."))
    op_types: list[str] | None = field(
        default=None, metadata=doc("Op types to quantize (default: all supported).")
    )
    nodes_to_exclude: list[str] = field(
        default_factory=list, metadata=doc("Node names kept in float (mixed precision).")
    )
    reduce_range: bool = field(
        default=False, metadata=doc("7-bit weights (older x86 CPUs without VNNI).")
    )
    preprocess: bool = field(default=True, metadata=doc("Run the prepare pass first."))
    keep_stem_float: bool = field(
        default=True,
        metadata=doc(
            "Keep Convs that read a graph input with <= 4 channels (the RGB/grey stem) in "
            "float: int8 kernels vectorise poorly over 3 channels, and the stem is the layer "
            "most sensitive to quantization."
        ),
    )


def stem_convs(path) -> list[str]:
    """Names of ungrouped Convs fed directly by a graph input with at most 4 channels."""
    model = _util.load(path)
    inputs = {i.name for i in model.graph.input}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[0] not in inputs or not node.name:
            continue
        dims = weights.get(node.input[1])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if dims and len(dims) >= 2 and dims[1] <= 4 and group == 1:
            found.append(node.name)
    return found


def run_static(
    input_path,
    config: StaticConfig,
    output_path,
    *,
    notes: list[str],
    calibration_cache: str | None = None,
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    from compression.engine.datasets import make_calibration_reader

    if not config.calibration_path:
        raise PassConfigError(
            "int8-static needs calibration data: set calibration_path (CLI: --calibration CAL.npz)."
        )
    exclude = list(config.nodes_to_exclude)
    if config.keep_stem_float:
        stems = [n for n in stem_convs(input_path) if n not in exclude]
        if stems:
            exclude += stems
            notes.append(f"kept the input stem in float: {', '.join(stems)}")
    reader = make_calibration_reader(
        config.calibration_path, input_path, max_samples=config.max_samples
    )
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[config.calibrate_method]
    extra = {}
    if config.calibrate_method == "minmax" and reader.size > 16:
        # merge ranges every few samples instead of holding every activation of every sample;
        # onnxruntime fails ("No data is collected") when the count divides evenly, so avoid that
        step = next((v for v in range(16, 8, -1) if reader.size % v), None)
        if step:
            extra["CalibMaxIntermediateOutputs"] = step
    try:
        quantize_static(
            input_path,
            str(output_path),
            reader,
            quant_format=QuantFormat.QDQ if config.quant_format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=config.op_types,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=_qtype(config.activation_type),
            weight_type=_qtype(config.weight_type),
            nodes_to_exclude=exclude or None,
            calibrate_method=method,
            extra_options=extra,
            calibration_cache_path=calibration_cache,
        )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise PassRefused(f"Static quantization failed: {exc}") from None


@register
class StaticInt8Pass(Pass):
    name = "int8-static"
    description = "Static int8 quantization calibrated on a dataset (QDQ, per-channel)."
    Config = StaticConfig
    needs_calibration = True

    def run(self, input_path, config: StaticConfig, output_path) -> PassResult:
        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="edgefleet-int8s-") as tmp:
            src = maybe_preprocess(input_path, config.preprocess, tmp, notes)
            run_static(src, config, output_path, notes=notes)
        metrics = {
            **_util.size_metrics(input_path, output_path),
            **quantized_node_count(output_path),
            "calibrate_method": config.calibrate_method,
            "per_channel": config.per_channel,
        }
        return PassResult(str(output_path), metrics, notes)
