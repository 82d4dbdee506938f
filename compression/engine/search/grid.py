"""The search space over onnxruntime's static quantizer (what Olive's search walks, and more).

Which point is fastest depends on the CPU (VNNI or not, AVX-512 or AVX2 only)
and on the graph, so every point is built and timed on the target instead of
fixed in a default. Points share one calibration (``calibration_cache``):
ranges do not depend on the output format, the activation type or the
weight granularity, so calibration runs once for the whole grid.
"""

from __future__ import annotations

import itertools
import re

FORMATS = ("qdq", "qoperator")
ACTIVATIONS = ("quint8", "qint8")
PER_CHANNEL = (True, False)
_SHORT = {"quint8": "u8", "qint8": "s8", "qdq": "qdq", "qoperator": "qop"}


def suffix(overrides: dict) -> str:
    """``[qop,u8,per-tensor]``-style label of a grid point's settings."""
    parts = []
    if "quant_format" in overrides:
        parts.append(_SHORT[overrides["quant_format"]])
    if "activation_type" in overrides:
        parts.append(_SHORT[overrides["activation_type"]])
    if "per_channel" in overrides:
        parts.append("per-channel" if overrides["per_channel"] else "per-tensor")
    if overrides.get("calibrate_method", "minmax") != "minmax":
        parts.append(overrides["calibrate_method"])
    return f"[{','.join(parts)}]" if parts else ""


def slug(name: str) -> str:
    """A file name for a candidate label."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_")


DEFAULT_POINT = {"quant_format": "qdq", "activation_type": "quint8", "per_channel": True}


def quantizer_grid(cache_dir: str | None = None) -> list[dict]:
    """Plan entries for every grid point except the default (``int8-static`` itself).

    Entropy calibration is not a grid point: it changes ranges, not the graph, so it
    cannot be faster than the point it calibrates; ``stages.refine`` tries it on the
    fastest point when that point misses the quality floor."""
    plan = []
    for fmt, act, pc in itertools.product(FORMATS, ACTIVATIONS, PER_CHANNEL):
        point = {"quant_format": fmt, "activation_type": act, "per_channel": pc}
        if point == DEFAULT_POINT:
            continue
        plan.append(point)
    out = []
    for point in plan:
        overrides = dict(point)
        if cache_dir:
            overrides["calibration_cache"] = f"{cache_dir}/calibration-minmax.json"
        out.append(
            {"name": "int8-static" + suffix(point), "recipe": "int8-static", "overrides": overrides}
        )
    return out
