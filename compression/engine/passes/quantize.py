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
    activation_symmetric: bool = field(
        default=False, metadata=doc("Symmetric activation ranges (zero point at the centre).")
    )
    weight_symmetric: bool | None = field(
        default=None,
        metadata=doc("Symmetric weight ranges; default: onnxruntime's (symmetric for qint8)."),
    )
    preprocess: bool = field(default=True, metadata=doc("Run the prepare pass first."))
    calibration_cache: str | None = field(
        default=None,
        metadata=doc(
            "JSON file of calibrated tensor ranges: reused when it exists, written "
            "when not (the search calibrates once for all its variants)."
        ),
    )
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
    tensor_overrides: dict | None = None,
) -> None:
    """``tensor_overrides``: onnxruntime ``TensorQuantOverrides`` (fixed scales that
    calibration does not replace), e.g. the ones quantization-aware training learned."""
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
    # the quantizer derives scales from the calibrated ranges, so symmetric variants can reuse
    # a cache written by an asymmetric run
    extra: dict = {"ActivationSymmetric": config.activation_symmetric}
    if config.weight_symmetric is not None:
        extra["WeightSymmetric"] = config.weight_symmetric
    if config.calibrate_method == "minmax" and reader.size > 16:
        # merge ranges every few samples instead of holding every activation of every sample;
        # onnxruntime fails ("No data is collected") when the count divides evenly, so avoid that
        step = next((v for v in range(16, 8, -1) if reader.size % v), None)
        if step:
            extra["CalibMaxIntermediateOutputs"] = step
    if tensor_overrides:
        extra["TensorQuantOverrides"] = tensor_overrides
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


# op types onnxruntime's static quantizer handles best; the fallback when the full set fails
CORE_OP_TYPES = ["Conv", "MatMul", "Gemm"]


def fallback_strategies(config: StaticConfig, opset: int) -> list[tuple[str, dict]]:
    """The strategies tried in order when onnxruntime's quantizer raises.

    Each is (label, overrides on top of the user's config). Real exported
    models trip the quantizer in many ways (shape inference, histogram
    calibration on odd shapes, per-channel on old opsets, an op type it
    mishandles); the next strategy usually gets around it.
    """
    out = [("as configured", {})]
    if config.preprocess:
        out.append(
            (
                "without pre-processing",
                {"preprocess": False, **({"per_channel": False} if opset < 13 else {})},
            )
        )
    if config.calibrate_method != "minmax":
        out.append(("MinMax calibration", {"calibrate_method": "minmax"}))
    if config.per_channel:
        out.append(("per-tensor weights", {"per_channel": False}))
    if config.op_types != CORE_OP_TYPES:
        out.append(
            (
                f"only {'/'.join(CORE_OP_TYPES)} quantized",
                {"op_types": CORE_OP_TYPES, "per_channel": False, "calibrate_method": "minmax"},
            )
        )
    other = "qoperator" if config.quant_format == "qdq" else "qdq"
    out.append(
        (
            f"{other} format, {'/'.join(CORE_OP_TYPES)} only",
            {
                "quant_format": other,
                "op_types": CORE_OP_TYPES,
                "per_channel": False,
                "calibrate_method": "minmax",
                "preprocess": False,
            },
        )
    )
    return out


def static_with_fallbacks(
    input_path,
    config: StaticConfig,
    output_path,
    *,
    notes: list[str],
    tmp: str,
    calibration_cache: str | None = None,
) -> StaticConfig:
    """Quantize, trying ``fallback_strategies`` until one works; returns the config used.

    Raises PassRefused listing every attempt when none does.
    """
    import dataclasses

    opset = _util.default_opset(_util.load(input_path))
    failures: list[str] = []
    prepared: str | None = None
    for i, (label, overrides) in enumerate(fallback_strategies(config, opset)):
        cfg = dataclasses.replace(config, **overrides)
        try:
            if cfg.preprocess:
                if prepared is None:
                    prepared = maybe_preprocess(input_path, True, tmp, notes)
                src = prepared
            else:
                src = str(input_path)
            # a cache belongs to one source graph and calibration method
            cache = calibration_cache if i == 0 else None
            run_static(src, cfg, output_path, notes=notes, calibration_cache=cache)
        except PassConfigError:
            raise
        except Exception as exc:  # the quantizer raises anything from ValueError to IndexError
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            failures.append(f"{label}: {type(exc).__name__}: {first}")
            log.info("static quantization (%s) failed: %s", label, first)
            continue
        if failures:
            notes.append(
                "onnxruntime's quantizer failed " + "; ".join(failures) + f" - used: {label}"
            )
        return cfg
    raise PassRefused("Static quantization failed with every strategy: " + "; ".join(failures))


@register
class StaticInt8Pass(Pass):
    name = "int8-static"
    description = "Static int8 quantization calibrated on a dataset (QDQ, per-channel)."
    Config = StaticConfig
    needs_calibration = True

    def run(self, input_path, config: StaticConfig, output_path) -> PassResult:
        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="edgefleet-int8s-") as tmp:
            used = static_with_fallbacks(
                input_path,
                config,
                output_path,
                notes=notes,
                tmp=tmp,
                calibration_cache=config.calibration_cache,
            )
        metrics = {
            **_util.size_metrics(input_path, output_path),
            **quantized_node_count(output_path),
            "calibrate_method": used.calibrate_method,
            "per_channel": used.per_channel,
            "quant_format": used.quant_format,
            "activation_type": used.activation_type,
        }
        # each retried strategy repeats the notes of the steps it shares (e.g. the stem)
        return PassResult(str(output_path), metrics, list(dict.fromkeys(notes)))
