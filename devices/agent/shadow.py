"""Shadow evaluation: the candidate runs beside the active model before it may switch.

After a candidate passed its health check, and when the manifest asks for it
(`"shadow": {"inferences": N, "seconds": T, "min_agreement": A}`), both models
are fed the same inputs from the device's input source — N inferences, or T
seconds, whichever ends first — and their outputs are compared with the engine's
task-aware fidelity (`fidelity.py`: top-1 agreement for classes, decoded
sequences, box IoU, cosine...). The worst output decides. The candidate becomes
active only when agreement >= A; otherwise the active model stays and the
server hears the agreement and both latencies.
"""

from __future__ import annotations

import math
import time

from .fidelity import fidelity, kind_from_metadata

DEFAULT_INFERENCES = 50
MAX_INFERENCES = 100_000
MAX_SECONDS = 3600.0


class ShadowError(ValueError):
    pass


def parse(config) -> dict | None:
    """The manifest's shadow request, bounded; None when it asks for none."""
    if config in (None, {}, False):
        return None
    if not isinstance(config, dict):
        raise ShadowError("shadow must be an object")
    inferences = config.get("inferences")
    seconds = config.get("seconds")
    agreement = config.get("min_agreement", 0.0)
    for name, value in (("inferences", inferences), ("seconds", seconds)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise ShadowError(f"shadow {name} must be a positive number")
    if isinstance(agreement, bool) or not isinstance(agreement, int | float):
        raise ShadowError("shadow min_agreement must be a number")
    if not 0.0 <= agreement <= 1.0:
        raise ShadowError("shadow min_agreement must be between 0 and 1")
    if inferences is None and seconds is None:
        inferences = DEFAULT_INFERENCES
    return {
        "inferences": min(int(inferences), MAX_INFERENCES) if inferences else None,
        "seconds": min(float(seconds), MAX_SECONDS) if seconds else None,
        "min_agreement": float(agreement),
    }


def _p50(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 3)


def evaluate(active, candidate, inputs, config: dict, clock=time.monotonic) -> dict:
    """Run both sessions on the same feeds; the agreement report (see module doc)."""
    outputs = active.get_outputs()
    names = [o.name for o in outputs]
    kinds = {o.name: kind_from_metadata(o.name, o.type, o.shape) for o in outputs}
    scores: dict[str, list[float]] = {n: [] for n in names}
    metric: dict[str, str] = {}
    latency = {"active": [], "candidate": []}
    deadline = clock() + config["seconds"] if config.get("seconds") else math.inf
    limit = config.get("inferences") or math.inf
    done = 0
    while done < limit and clock() < deadline:
        feeds = inputs.feeds(active)
        started = time.perf_counter()
        reference = active.run(None, feeds)
        middle = time.perf_counter()
        got = candidate.run(None, feeds)
        latency["active"].append((middle - started) * 1000.0)
        latency["candidate"].append((time.perf_counter() - middle) * 1000.0)
        for name, ref, out in zip(names, reference, got, strict=False):
            if getattr(ref, "shape", None) != getattr(out, "shape", None):
                scores[name].append(0.0)  # a different shape can not agree
                continue
            if getattr(ref, "ndim", 0) == 0:
                ref, out = ref.reshape(1), out.reshape(1)
            result = fidelity(ref, out, kinds[name])
            scores[name].append(float(result["fidelity"]))
            metric[name] = result["metric"]
        done += 1
    per_output = {n: round(sum(v) / len(v), 6) for n, v in scores.items() if v}
    worst = min(per_output, key=per_output.get) if per_output else None
    agreement = per_output[worst] if worst else 0.0
    return {
        "agreement": agreement,
        "metric": metric.get(worst, ""),
        "output": worst,
        "per_output": per_output,
        "inferences": done,
        "min_agreement": config["min_agreement"],
        "passed": done > 0 and agreement >= config["min_agreement"],
        "active_p50_ms": _p50(latency["active"]),
        "candidate_p50_ms": _p50(latency["candidate"]),
    }
