"""Input drift: the same summary of model inputs on both sides, and a score.

The server summarizes a version's calibration data per input (`summarize`: mean,
std and a histogram over the central 99 % of its values) and signs it into the
manifest as the artifact's `input_stats`. The agent bins its real inputs into
the same edges (`DriftMonitor`) and reports, with each telemetry point, the
population stability index (PSI) of the window against the reference: 0 for the
same distribution, above about 0.25 for a shift worth a look. The score is the
largest over the inputs, and `drift_input` names it.

numpy only, so the server and the agent share this module.
"""

from __future__ import annotations

import math

BINS = 10
EPSILON = 1e-4  # smoothing of empty bins: PSI stays finite
MIN_VALUES = 200  # fewer observed values in a window: no score
MAX_VALUES_PER_SAMPLE = 4096  # larger inputs are strided, so observing stays cheap


def _flat(values):
    import numpy as np

    flat = np.asarray(values).ravel()
    if flat.dtype.kind not in "fiub":
        return None
    flat = flat.astype(np.float64, copy=False)
    return flat[np.isfinite(flat)]


def summarize(values, bins: int = BINS) -> dict | None:
    """{"mean", "std", "count", "edges": [lo, hi], "counts"} of one input's values;
    None when there is nothing numeric. Values outside [lo, hi] count in the end bins."""
    import numpy as np

    flat = _flat(values)
    if flat is None or flat.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(flat, [0.5, 99.5]))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return {
        "mean": round(float(flat.mean()), 6),
        "std": round(float(flat.std()), 6),
        "count": int(flat.size),
        "edges": [round(lo, 6), round(hi, 6)],
        "counts": _bin(flat, lo, hi, bins).tolist(),
    }


def _bin(flat, lo: float, hi: float, bins: int):
    import numpy as np

    index = np.floor((flat - lo) / (hi - lo) * bins).astype(np.int64)
    return np.bincount(np.clip(index, 0, bins - 1), minlength=bins)


def psi(reference: list[int], observed: list[int]) -> float:
    """Population stability index of two histograms over the same bins."""
    total_ref, total_obs = sum(reference), sum(observed)
    if total_ref <= 0 or total_obs <= 0:
        return 0.0
    score = 0.0
    for ref, obs in zip(reference, observed, strict=True):
        p = max(ref / total_ref, EPSILON)
        q = max(obs / total_obs, EPSILON)
        score += (q - p) * math.log(q / p)
    return score


def valid_stats(stats) -> bool:
    """A reference the agent can compare against (it arrives in signed metadata, but
    a server of another version may send another shape)."""
    if not isinstance(stats, dict):
        return False
    edges, counts = stats.get("edges"), stats.get("counts")
    return (
        isinstance(edges, list)
        and len(edges) == 2
        and all(isinstance(e, int | float) and math.isfinite(e) for e in edges)
        and edges[1] > edges[0]
        and isinstance(counts, list)
        and 2 <= len(counts) <= 100
        and all(isinstance(c, int) and c >= 0 for c in counts)
        and sum(counts) > 0
    )


class DriftMonitor:
    """Bins what one model is fed into its reference's edges, one window at a time."""

    def __init__(self, reference: dict[str, dict]):
        self.reference = {name: s for name, s in (reference or {}).items() if valid_stats(s)}
        self._reset()

    def _reset(self) -> None:
        self.counts = {name: [0] * len(s["counts"]) for name, s in self.reference.items()}
        self.sums = dict.fromkeys(self.reference, 0.0)
        self.squares = dict.fromkeys(self.reference, 0.0)
        self.seen = dict.fromkeys(self.reference, 0)

    def __bool__(self) -> bool:
        return bool(self.reference)

    def observe(self, feeds: dict) -> None:
        for name, stats in self.reference.items():
            if name not in feeds:
                continue
            flat = _flat(feeds[name])
            if flat is None or flat.size == 0:
                continue
            if flat.size > MAX_VALUES_PER_SAMPLE:
                flat = flat[:: math.ceil(flat.size / MAX_VALUES_PER_SAMPLE)]
            lo, hi = stats["edges"]
            binned = _bin(flat, lo, hi, len(stats["counts"]))
            self.counts[name] = [a + int(b) for a, b in zip(self.counts[name], binned, strict=True)]
            self.sums[name] += float(flat.sum())
            self.squares[name] += float((flat * flat).sum())
            self.seen[name] += int(flat.size)

    def report(self) -> dict | None:
        """{"drift_score", "drift_input", "drift_inputs"} for the window, then a new
        window; None without a reference or enough observed values."""
        inputs = {}
        for name, stats in self.reference.items():
            n = self.seen[name]
            if n < MIN_VALUES:
                continue
            mean = self.sums[name] / n
            std = math.sqrt(max(0.0, self.squares[name] / n - mean * mean))
            shift = (mean - stats.get("mean", mean)) / stats["std"] if stats.get("std") else None
            inputs[name] = {
                "psi": round(psi(stats["counts"], self.counts[name]), 4),
                "mean": round(mean, 6),
                "std": round(std, 6),
                "mean_shift_std": round(shift, 3) if shift is not None else None,
            }
        self._reset()
        if not inputs:
            return None
        worst = max(inputs, key=lambda name: inputs[name]["psi"])
        return {"drift_score": inputs[worst]["psi"], "drift_input": worst, "drift_inputs": inputs}
