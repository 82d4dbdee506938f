"""int8-nncf: NNCF's ONNX post-training quantization, a second PTQ backend.

``nncf.quantize`` places quantizers by its own hardware-aware rules, corrects
the bias shift quantization causes (fast bias correction) and, for
transformer graphs, smooths activation outliers into the weights
(SmoothQuant, ``model_type="transformer"``). It writes QDQ graphs that
onnxruntime runs on the same int8 kernels, so the search times and scores it
like any other candidate and keeps whichever measures better per model.

NNCF is an optional extra (``pip install '.[nncf]'``); without it the pass
refuses with that sentence. Its usage telemetry is switched off before import.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

from compression.engine.errors import PassConfigError, PassRefused
from compression.engine.passes import _util
from compression.engine.passes.base import Pass, PassConfig, PassResult, doc, register
from compression.engine.passes.quantize import quantized_node_count


def available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def looks_like_transformer(model) -> bool:
    ops = [n.op_type for n in model.graph.node]
    return "Softmax" in ops and ops.count("MatMul") >= 4


@dataclass
class NncfConfig(PassConfig):
    CHOICES = {"preset": ("performance", "mixed"), "model_type": ("auto", "cnn", "transformer")}

    calibration_path: str | None = field(
        default=None, metadata=doc("Dataset .npz with one array per model input.")
    )
    max_samples: int = field(default=200, metadata=doc("Calibration samples (subset_size)."))
    preset: str = field(
        default="performance",
        metadata=doc(
            "performance: symmetric weights and activations; mixed: asymmetric "
            "activations (better for non-ReLU activations)."
        ),
    )
    fast_bias_correction: bool = field(
        default=True, metadata=doc("Correct the bias shift that quantization introduces.")
    )
    model_type: str = field(
        default="auto",
        metadata=doc(
            "transformer enables SmoothQuant and transformer-specific placement; "
            "auto decides from the graph (Softmax + MatMuls)."
        ),
    )
    ignored_nodes: list[str] = field(
        default_factory=list, metadata=doc("Node names kept in float.")
    )


@register
class NncfPass(Pass):
    name = "int8-nncf"
    description = "NNCF post-training int8 quantization (fast bias correction, SmoothQuant)."
    Config = NncfConfig
    needs_calibration = True

    def run(self, input_path, config: NncfConfig, output_path) -> PassResult:
        if not config.calibration_path:
            raise PassConfigError("int8-nncf needs calibration data: set calibration_path.")
        if not available():
            raise PassRefused("NNCF is not installed (optional extra: pip install '.[nncf]').")
        os.environ.setdefault("NNCF_CI", "1")  # NNCF's switch for its usage telemetry
        import nncf

        from compression.engine.datasets import load_dataset

        model = _util.load(input_path)
        dataset = load_dataset(config.calibration_path, input_path, max_samples=config.max_samples)
        feeds = list(dataset.batches(1))
        transformer = config.model_type == "transformer" or (
            config.model_type == "auto" and looks_like_transformer(model)
        )
        kwargs = {}
        if config.ignored_nodes:
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=config.ignored_nodes)
        if transformer:
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        try:
            quantized = nncf.quantize(
                model,
                nncf.Dataset(feeds),
                preset=nncf.QuantizationPreset(config.preset),
                subset_size=len(feeds),
                fast_bias_correction=config.fast_bias_correction,
                **kwargs,
            )
        except Exception as exc:  # NNCF raises its own and numpy/onnx exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise PassRefused(f"NNCF quantization failed: {type(exc).__name__}: {first}") from None
        _util.save(quantized, output_path)
        metrics = {
            **_util.size_metrics(input_path, output_path),
            **quantized_node_count(output_path),
            "model_type": "transformer" if transformer else "default",
        }
        notes = (
            ["SmoothQuant and transformer placement (model_type=transformer)"]
            if transformer
            else []
        )
        return PassResult(str(output_path), metrics, notes)
