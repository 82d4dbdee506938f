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

import dataclasses
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
    quantized_node_count,
    run_static,
    static_with_fallbacks,
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


def _session(path_or_model, extra_outputs: list[str] | None = None):
    import onnxruntime as ort

    model = (
        path_or_model if isinstance(path_or_model, onnx.ModelProto) else _util.load(path_or_model)
    )
    if extra_outputs:
        existing = {o.name for o in model.graph.output}
        for name in extra_outputs:
            if name not in existing:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )


class _Stats:
    """Streaming per-tensor statistics of a float and a quantized run (O(1) memory per tensor).

    Per output: the mean over samples of the cosine similarity; per tensor: the
    signal and noise energy, for the SNR. Nothing is kept across batches, so a
    long sequence model's activations never pile up (the old way held every
    probed activation of every sample in memory).
    """

    def __init__(self) -> None:
        self.cos_sum: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, ref: np.ndarray, got: np.ndarray) -> None:
        ref = np.asarray(ref, np.float64)
        got = np.asarray(got, np.float64)
        if ref.ndim == 0:
            ref, got = ref.reshape(1, 1), got.reshape(1, 1)
        r, g = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
        num = (r * g).sum(axis=1)
        den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
        cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
        self.cos_sum[name] = self.cos_sum.get(name, 0.0) + float(cos.sum())
        self.count[name] = self.count.get(name, 0) + len(cos)
        self.signal[name] = self.signal.get(name, 0.0) + float((r**2).sum())
        self.noise[name] = self.noise.get(name, 0.0) + float(((r - g) ** 2).sum())

    def cosine(self, name: str) -> float:
        return self.cos_sum[name] / max(1, self.count[name])

    def snr_db(self, name: str) -> float:
        if self.noise.get(name, 0.0) == 0:
            return 100.0
        return min(100.0, 10 * math.log10(max(self.signal[name], 1e-30) / self.noise[name]))


def _compare(
    src: str, trial: str, feeds, names: list[str], probe: list[str] | None = None
) -> _Stats:
    """Run both models batch by batch, folding ``names`` (+ ``probe``) into _Stats."""
    wanted = list(dict.fromkeys(names + (probe or [])))
    ref_sess, got_sess = _session(src, probe), _session(trial, probe)
    got_names = {o.name for o in got_sess.get_outputs()}
    wanted = [n for n in wanted if n in got_names]
    stats = _Stats()
    for feed in feeds:
        ref = ref_sess.run(wanted, feed)
        got = got_sess.run(wanted, feed)
        for n, a, b in zip(wanted, ref, got, strict=True):
            if np.issubdtype(np.asarray(a).dtype, np.number):
                stats.add(n, a, b)
        del ref, got
    return stats


def _fidelity(stats: _Stats, outputs: list[str]) -> float:
    present = [n for n in outputs if n in stats.count]
    return min((stats.cosine(n) for n in present), default=1.0)


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
            cache = str(Path(tmp) / "calibration.json")
            trial = str(Path(tmp) / "trial.onnx")
            static_cfg = StaticConfig.from_dict(_static_fields(config, keep_preprocess=True))
            used = static_with_fallbacks(
                input_path, static_cfg, trial, notes=notes, tmp=tmp, calibration_cache=cache
            )
            src = str(Path(tmp) / "prepared.onnx") if used.preprocess else str(input_path)
            if not Path(src).exists():
                src = str(input_path)
            dataset = load_dataset(config.calibration_path, src, max_samples=config.eval_samples)
            src_model = _util.load(src)
            outputs = [o.name for o in src_model.graph.output]
            # the model's own batch (fixed batch 1 stays 1); small batches bound memory
            feeds = lambda: dataset.batches(4)  # noqa: E731 - re-iterable per comparison
            fidelity = _fidelity(_compare(src, trial, feeds(), outputs), outputs)
            history = [{"excluded": 0, "cosine": round(fidelity, 6)}]
            excluded: list[str] = []
            if fidelity < config.target_cosine:
                ranking = self._rank(src, trial, src_model, feeds)
                notes.append(
                    "most sensitive: " + ", ".join(f"{n} ({d:.1f} dB lost)" for n, d in ranking[:5])
                )
                k = 1
                base_exclude = list(config.nodes_to_exclude)
                cache_ok = Path(cache).exists() and used.calibrate_method == config.calibrate_method
                while fidelity < config.target_cosine and k <= min(
                    config.max_excluded, len(ranking)
                ):
                    excluded = [n for n, _ in ranking[:k]]
                    cfg = dataclasses.replace(
                        used, preprocess=False, nodes_to_exclude=base_exclude + excluded
                    )
                    run_static(
                        src, cfg, trial, notes=notes, calibration_cache=cache if cache_ok else None
                    )
                    fidelity = _fidelity(_compare(src, trial, feeds(), outputs), outputs)
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
            "quant_format": used.quant_format,
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
        stats = _Stats()
        # a few probed tensors per pass: memory stays bounded by a handful of activations
        for i in range(0, len(probe), 16):
            part = _compare(src, trial, feeds(), [], probe[i : i + 16])
            for d in ("cos_sum", "count", "signal", "noise"):
                getattr(stats, d).update(getattr(part, d))
        ranking = []
        for n in nodes:
            if n.output[0] not in stats.count:
                continue
            out_snr = stats.snr_db(n.output[0])
            in_snr = stats.snr_db(n.input[0]) if n.input[0] in stats.count else 100.0
            ranking.append((n.name, in_snr - out_snr))
        ranking.sort(key=lambda r: -r[1])
        return ranking


def _static_fields(config: MixedPrecisionConfig, *, keep_preprocess: bool = False) -> dict:
    names = {f.name for f in dataclasses.fields(StaticConfig)}
    values = {k: v for k, v in config.to_dict().items() if k in names}
    if not keep_preprocess:
        values["preprocess"] = False  # already prepared once above
    return values
