"""Accuracy against labels and fidelity against a reference model.

Fidelity is reported for every output because a compressed detector can keep
its class scores and still drift on its box regressions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from compression.engine.datasets import Dataset, load_dataset


def _session(path: str | Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def predict(model_path: str | Path, dataset: Dataset, *, batch_size: int = 32,
            threads: int = 1) -> dict[str, np.ndarray]:
    sess = _session(model_path, threads)
    names = [o.name for o in sess.get_outputs()]
    static_batch = any(isinstance(i.shape[0], int) and i.shape[0] > 0
                       for i in sess.get_inputs() if i.shape)
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in dataset.batches(1 if static_batch else batch_size):
        for n, v in zip(names, sess.run(names, feed), strict=True):
            chunks[n].append(np.asarray(v))
    return {n: np.concatenate(v) for n, v in chunks.items()}


def _is_classifier(arr: np.ndarray, n: int) -> bool:
    return arr.ndim >= 2 and arr.shape[0] == n and arr.reshape(n, -1).shape[1] > 1 \
        and np.issubdtype(arr.dtype, np.floating)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> dict:
    flat = scores.reshape(len(labels), -1)
    top1 = float(np.mean(flat.argmax(axis=1) == labels))
    out = {"top1": round(top1, 6)}
    if flat.shape[1] > 5:
        top5 = np.argsort(-flat, axis=1)[:, :5]
        out["top5"] = round(float(np.mean((top5 == labels[:, None]).any(axis=1))), 6)
    return out


def fidelity(ref: np.ndarray, got: np.ndarray) -> dict:
    n = len(ref)
    r = ref.reshape(n, -1).astype(np.float64)
    g = got.reshape(n, -1).astype(np.float64)
    diff = np.abs(r - g)
    num = (r * g).sum(axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)
    noise = float((diff**2).sum())
    signal = float((r**2).sum())
    snr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)
    out = {
        "cosine": round(float(cos.mean()), 6),
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "snr_db": round(snr, 3) if math.isfinite(snr) else None,  # None: identical outputs
    }
    if r.shape[1] > 1:
        out["top1_agreement"] = round(float(np.mean(r.argmax(axis=1) == g.argmax(axis=1))), 6)
    return out


def evaluate(model_path: str | Path, dataset_path: str | Path, *,
             reference_path: str | Path | None = None, batch_size: int = 32,
             threads: int = 1, max_samples: int | None = None) -> dict:
    """Score ``model_path`` on ``dataset_path``.

    ``accuracy`` (top1/top5) uses the first classifier-shaped output and the
    dataset's ``labels``; ``fidelity`` compares every output to the reference.
    """
    dataset = load_dataset(dataset_path, model_path, max_samples=max_samples)
    outputs = predict(model_path, dataset, batch_size=batch_size, threads=threads)
    result: dict = {"samples": dataset.size, "outputs": list(outputs)}
    if dataset.labels is not None:
        scored = next((n for n, v in outputs.items() if _is_classifier(v, dataset.size)), None)
        if scored is not None:
            result["accuracy"] = {"output": scored, **accuracy(outputs[scored], dataset.labels)}
    if reference_path is not None:
        ref = predict(reference_path, dataset, batch_size=batch_size, threads=threads)
        result["fidelity"] = {n: fidelity(ref[n], outputs[n]) for n in outputs if n in ref}
        missing = sorted(set(ref) - set(outputs))
        if missing:
            result["missing_outputs"] = missing
        if dataset.labels is not None and "accuracy" in result:
            name = result["accuracy"]["output"]
            if name in ref:
                result["reference_accuracy"] = accuracy(ref[name], dataset.labels)
    return result
