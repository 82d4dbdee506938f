"""Task-aware comparison of two models' outputs on the same inputs.

One implementation for the compression engine (a candidate against the original,
on the calibration or evaluation data) and for the agent's shadow mode (the
candidate against the active model, on the device's real inputs). numpy only.
"""

from __future__ import annotations

import math

import numpy as np

# output kinds and the metric each is scored with (what the user sees of that output)
OUTPUT_KINDS = {
    "classes": "top1_agreement",  # [N, C] class scores: same top-1 class
    "sequence": "sequence_agreement",  # [N, T, C] per-step scores (CTC): same greedy-decoded string
    "indices": "exact_agreement",  # integer outputs (ArgMax, ids): identical per sample
    "boxes": "box_iou_agreement",  # [N, K, 4] boxes: IoU >= 0.9 with the reference box
    "regression": "relative_error",  # one value per sample: 1 - normalised RMSE
    "embedding": "cosine",  # features, hidden states, anything else: cosine similarity
}


def kind_from_metadata(name: str, element_type: str, shape) -> str:
    """An output's kind from what an onnxruntime session says of it (type string such
    as `tensor(float)`, shape with None or names for dynamic axes). The engine's
    `output_kinds` also sees the producing op; without it, names decide the rest."""
    rank = len(shape) if shape is not None else None
    last = shape[-1] if rank else 0
    last = last if isinstance(last, int) else 0
    lowered = name.lower()
    if any(t in element_type for t in ("int", "bool")):
        return "indices"
    if rank == 3 and last == 4:
        return "boxes"
    if rank == 3 and ("logit" in lowered or "prob" in lowered):
        return "sequence"
    if rank == 2 and last != 1:
        return "embedding" if ("embed" in lowered or "feature" in lowered) else "classes"
    if rank is not None and (rank <= 1 or (rank == 2 and last == 1)):
        return "regression"
    return "embedding"


def _greedy(steps: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding: best class per step, repeats collapsed, blanks dropped."""
    best = steps.argmax(axis=-1)
    out = []
    for row in best.reshape(len(best), -1):
        keep = np.concatenate(([True], row[1:] != row[:-1])) & (row != blank)
        out.append(tuple(int(c) for c in row[keep]))
    return out


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of corresponding boxes; corner (x1, y1, x2, y2) or centre form alike (same form)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    x1, y1 = np.maximum(a[..., 0], b[..., 0]), np.maximum(a[..., 1], b[..., 1])
    x2, y2 = np.minimum(a[..., 2], b[..., 2]), np.minimum(a[..., 3], b[..., 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.abs(a[..., 2] - a[..., 0]) * np.abs(a[..., 3] - a[..., 1])
    area_b = np.abs(b[..., 2] - b[..., 0]) * np.abs(b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    same = np.all(np.isclose(a, b), axis=-1)
    return np.where(same, 1.0, np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0))


def fidelity(ref: np.ndarray, got: np.ndarray, kind: str | None = None) -> dict:
    """Numeric closeness plus the task metric for ``kind``; ``fidelity`` is that metric."""
    n = len(ref)
    r = ref.reshape(n, -1).astype(np.float64)
    g = got.reshape(n, -1).astype(np.float64)
    diff = np.abs(r - g)
    num = (r * g).sum(axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    same = np.all(r == g, axis=1)
    cos = np.where(same, 1.0, np.where(den > 0, num / np.maximum(den, 1e-300), 0.0))
    noise = float((diff**2).sum())
    signal = float((r**2).sum())
    snr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)
    out = {
        "cosine": round(float(cos.mean()), 6),
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "snr_db": round(snr, 3) if math.isfinite(snr) else None,  # None: identical outputs
    }
    if r.shape[1] > 1 and ref.ndim == 2:
        out["top1_agreement"] = round(float(np.mean(r.argmax(axis=1) == g.argmax(axis=1))), 6)
    kind = kind or ("classes" if "top1_agreement" in out else "embedding")
    value: float
    if kind == "classes" and ref.ndim >= 2:
        value = float(np.mean(ref.reshape(n, -1).argmax(1) == got.reshape(n, -1).argmax(1)))
    elif kind == "sequence" and ref.ndim == 3:
        value = float(np.mean([a == b for a, b in zip(_greedy(ref), _greedy(got), strict=True)]))
    elif kind == "indices":
        value = float(np.mean(np.all(r == g, axis=1)))
    elif kind == "boxes" and ref.shape[-1] == 4:
        iou = _box_iou(ref.reshape(-1, 4), got.reshape(-1, 4))
        out["mean_iou"] = round(float(iou.mean()), 6)
        value = float(np.mean(iou >= 0.9))
    elif kind == "regression":
        scale = float(np.std(r)) or float(np.abs(r).mean()) or 1.0
        value = max(0.0, 1.0 - float(np.sqrt(np.mean((r - g) ** 2))) / scale)
    else:
        kind, value = "embedding", float(cos.mean())
    out.update({"kind": kind, "metric": OUTPUT_KINDS[kind], "fidelity": round(value, 6)})
    return out
