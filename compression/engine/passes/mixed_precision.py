"""mixed-precision: keep the most quantization-sensitive layers in float.

1. Quantize everything (static, QDQ) and measure output fidelity against the
   float model on calibration samples.
2. If below the target, measure each Conv/MatMul/Gemm output in both models
   and rank nodes by how much signal-to-quantization-noise they *lose* relative
   to their input (error accumulates with depth, so the raw error at a node
   would blame every late layer).
3. Exclude the worst 1, 2, 4, … nodes and re-quantize (calibration is cached),
   until the target is met or ``max_excluded`` is reached.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from compression.engine.passes import _util
from compression.engine.passes.base import Pass, PassResult, doc, register
from compression.engine.passes.quantize import (
    StaticConfig,
    maybe_preprocess,
    quantized_node_count,
    run_static,
)

_SENSITIVE_OPS = {"Conv", "MatMul", "Gemm", "ConvTranspose"}


@dataclass
class MixedPrecisionConfig(StaticConfig):
    target_cosine: float = field(
        default=0.995,
        metadata=doc("Stop when the mean cosine similarity of every output vs float reaches this."),
    )
    max_excluded: int = field(default=8, metadata=doc("Keep at most this many nodes in float."))
    eval_samples: int = field(
        default=32, metadata=doc("Calibration samples used to measure fidelity/sensitivity.")
    )


def _run(path: str, feeds: list[dict], extra_outputs: list[str] | None = None) -> dict:
    import onnxruntime as ort

    model = _util.load(path)
    if extra_outputs:
        existing = {o.name for o in model.graph.output}
        for name in extra_outputs:
            if name not in existing:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in sess.get_outputs()]
    results: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for n, v in zip(names, sess.run(names, feed), strict=True):
            results[n].append(np.asarray(v, dtype=np.float32))
    return {n: np.concatenate(v) for n, v in results.items()}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0:
        return 100.0
    return min(100.0, 10 * math.log10(max(signal, 1e-30) / noise))


def _fidelity(float_out: dict, quant_out: dict, outputs: list[str]) -> float:
    return min(_cosine(float_out[n], quant_out[n]) for n in outputs)


@register
class MixedPrecisionPass(Pass):
    name = "mixed-precision"
    description = "Static int8 except the most sensitive layers, until a fidelity target is met."
    Config = MixedPrecisionConfig
    needs_calibration = True

    def run(self, input_path, config: MixedPrecisionConfig, output_path) -> PassResult:
        from compression.engine.datasets import load_dataset

        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="edgefleet-mixed-") as tmp:
            src = maybe_preprocess(input_path, config.preprocess, tmp, notes)
            dataset = (
                load_dataset(config.calibration_path, src, max_samples=config.eval_samples)
                if config.calibration_path
                else None
            )
            cache = str(Path(tmp) / "calibration.cache")
            trial = str(Path(tmp) / "trial.onnx")
            run_static(src, config, trial, notes=notes, calibration_cache=cache)
            feeds = list(dataset.batches(8))
            src_model = _util.load(src)
            outputs = [o.name for o in src_model.graph.output]
            float_out = _run(src, feeds)
            fidelity = _fidelity(float_out, _run(trial, feeds), outputs)
            history = [{"excluded": 0, "cosine": round(fidelity, 6)}]
            excluded: list[str] = []
            if fidelity < config.target_cosine:
                ranking = self._rank(src, trial, src_model, feeds)
                notes.append(
                    "most sensitive: " + ", ".join(f"{n} ({d:.1f} dB lost)" for n, d in ranking[:5])
                )
                k = 1
                base_exclude = list(config.nodes_to_exclude)
                while fidelity < config.target_cosine and k <= min(
                    config.max_excluded, len(ranking)
                ):
                    excluded = [n for n, _ in ranking[:k]]
                    cfg = StaticConfig.from_dict(
                        {**_static_fields(config), "nodes_to_exclude": base_exclude + excluded}
                    )
                    run_static(src, cfg, trial, notes=notes, calibration_cache=cache)
                    fidelity = _fidelity(float_out, _run(trial, feeds), outputs)
                    history.append({"excluded": k, "cosine": round(fidelity, 6)})
                    k *= 2
            if fidelity < config.target_cosine:
                notes.append(
                    f"target cosine {config.target_cosine} not reached "
                    f"(best {fidelity:.5f}); returning the last attempt"
                )
            _util.save(_util.load(trial), output_path)
        notes = list(dict.fromkeys(notes))  # each re-quantization repeats the same notes
        metrics = {
            **_util.size_metrics(input_path, output_path),
            **quantized_node_count(output_path),
            "float_nodes": excluded,
            "cosine": round(fidelity, 6),
            "target_met": fidelity >= config.target_cosine,
            "history": history,
        }
        return PassResult(str(output_path), metrics, notes)

    @staticmethod
    def _rank(src: str, trial: str, src_model: onnx.ModelProto, feeds) -> list[tuple[str, float]]:
        trial_model = _util.load(trial)
        trial_tensors = {o for n in trial_model.graph.node for o in n.output}
        nodes = [
            n
            for n in src_model.graph.node
            if n.op_type in _SENSITIVE_OPS and n.name and n.output[0] in trial_tensors
        ]
        probe = sorted(
            {n.output[0] for n in nodes}
            | {n.input[0] for n in nodes if n.input[0] in trial_tensors}
        )
        ref = _run(src, feeds, probe)
        got = _run(trial, feeds, probe)
        ranking = []
        for n in nodes:
            out_snr = _snr_db(ref[n.output[0]], got[n.output[0]])
            in_snr = _snr_db(ref[n.input[0]], got[n.input[0]]) if n.input[0] in ref else 100.0
            ranking.append((n.name, in_snr - out_snr))
        ranking.sort(key=lambda r: -r[1])
        return ranking


def _static_fields(config: MixedPrecisionConfig) -> dict:
    import dataclasses

    names = {f.name for f in dataclasses.fields(StaticConfig)}
    values = {k: v for k, v in config.to_dict().items() if k in names}
    values["preprocess"] = False  # already prepared once above
    return values
