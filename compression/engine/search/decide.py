"""The decision: KPI checks, the Pareto front, the choice and a verdict per candidate.

Pure functions over candidate dicts (``metrics`` as written by ``candidates``);
nothing here measures anything.
"""

from __future__ import annotations

from compression.engine.search import texts as T

KPI_KEYS = {
    "max_latency_ms",
    "max_accuracy_drop",
    "min_fidelity",
    "max_size_mb",
    "threads",
    "provider",
}
# with no fidelity/accuracy KPI a variant must still agree with fp32 this well (task metric)
DEFAULT_QUALITY_FLOOR = 0.98
# candidates whose p50 ratio is within this factor of the fastest compete on size instead
LATENCY_TIE = 1.03
# sizes within this factor count as equal (the Pareto front, what is worth evaluating)
SIZE_TIE = 1.05


def quality(evaluation: dict) -> tuple[float | None, float | None, str | None]:
    """(top-1 accuracy or None, fidelity = worst output's task metric, that metric's name)."""
    acc = evaluation.get("accuracy", {}).get("top1")
    fids = evaluation.get("fidelity", {})
    if not fids:
        return acc, None, None
    name, worst = min(fids.items(), key=lambda kv: kv[1].get("fidelity", kv[1]["cosine"]))
    return acc, worst.get("fidelity", worst["cosine"]), f"{worst.get('metric', 'cosine')} ({name})"


def violations(m: dict, kpis: dict) -> list[str]:
    out = []
    if "max_latency_ms" in kpis and m["p50_ms"] > kpis["max_latency_ms"]:
        out.append(T.P50_OVER % {"p50": f"{m['p50_ms']:.3f}", "limit": kpis["max_latency_ms"]})
    if "max_size_mb" in kpis and m["size_mb"] > kpis["max_size_mb"]:
        out.append(T.SIZE_OVER % {"size": f"{m['size_mb']:.2f}", "limit": kpis["max_size_mb"]})
    if "max_accuracy_drop" in kpis:
        drop = m.get("accuracy_drop_pt")
        if drop is None and m.get("accuracy") is not None:
            drop = 0.0  # the original itself
        if drop is None:
            out.append(T.ACCURACY_UNKNOWN)
        elif drop > kpis["max_accuracy_drop"]:
            out.append(
                T.ACCURACY_DROP_OVER % {"drop": f"{drop:.2f}", "limit": kpis["max_accuracy_drop"]}
            )
    if "min_fidelity" in kpis:
        if m.get("fidelity") is None:
            out.append(T.FIDELITY_UNKNOWN)
        elif m["fidelity"] < kpis["min_fidelity"]:
            out.append(
                T.FIDELITY_UNDER
                % {
                    "fidelity": f"{m['fidelity']:.4f}",
                    "limit": kpis["min_fidelity"],
                    "metric": m.get("fidelity_metric") or "cosine",
                }
            )
    return out


def pareto(cands: list[dict]) -> list[str]:
    """Non-dominated candidates; latency within the noise (``LATENCY_TIE``) and size
    within 5 % count as equal, so noise alone never pushes a candidate off the front."""

    def objectives(c):
        m = c["metrics"]
        q = m["accuracy"] if m.get("accuracy") is not None else (m.get("fidelity") or 0.0)
        return m["p50_ratio"], m["size_bytes"], q

    def dominates(d, c) -> bool:
        (dl, ds, dq), (cl, cs, cq) = objectives(d), objectives(c)
        no_worse = dl <= cl * LATENCY_TIE and ds <= cs * SIZE_TIE and dq >= cq
        better = dl * LATENCY_TIE < cl or ds * SIZE_TIE < cs or dq > cq
        return no_worse and better

    ok = [c for c in cands if c.get("metrics") and c.get("evaluated", True)]
    return [c["recipe"] for c in ok if not any(dominates(d, c) for d in ok if d is not c)]


def choose(cands: list[dict]) -> tuple[str | None, str]:
    meeting = [c for c in cands if c.get("meets_kpis")]
    measured = [c for c in cands if c.get("metrics")]
    if not meeting:
        if not measured:
            return None, T.NOTHING_MEASURED
        closest = min(measured, key=lambda c: len(c["violations"]))
        return None, T.NONE_MEETS % {
            "recipe": closest["recipe"],
            "violations": "; ".join(closest["violations"]),
        }
    fastest = min(meeting, key=lambda c: c["metrics"]["p50_ratio"])
    limit = fastest["metrics"]["p50_ratio"] * LATENCY_TIE
    band = [
        c
        for c in meeting
        if c["metrics"]["p50_ratio"] <= limit
        and (c["recipe"] == "fp32" or c["metrics"]["p50_ratio"] <= 1.0)
    ]
    chosen = min(band or [fastest], key=lambda c: c["metrics"]["size_bytes"])
    fp32 = next((c for c in band if c["recipe"] == "fp32"), None)
    if fp32 is not None and chosen["metrics"]["size_bytes"] > 0.95 * fp32["metrics"]["size_bytes"]:
        return "fp32", T.ORIGINAL_STAYS % {"noise": round((LATENCY_TIE - 1) * 100)}
    m = chosen["metrics"]
    return chosen["recipe"], T.FASTEST_MEETS % {
        "recipe": chosen["recipe"],
        "p50": f"{m['p50_ms']:.3f}",
        "ratio": f"{m['p50_ratio']:.2f}",
        "size_ratio": f"{m['size_ratio']:.2f}",
        "noise": round((LATENCY_TIE - 1) * 100),
    }


def verdict(c: dict, chosen: str | None, best_ratio: float | None) -> str:
    if c["recipe"] == chosen:
        return T.CHOSEN
    if c.get("error"):
        return T.FAILED % {"error": c["error"]}
    m = c["metrics"]
    if c.get("skip_reason") and c.get("violations") == [c["skip_reason"]]:
        return c["skip_reason"]
    if c.get("violations"):
        return T.MISSES % {"violations": "; ".join(c["violations"])}
    if c["recipe"] == "fp32":
        return T.THE_ORIGINAL
    ratio = f"{m['p50_ratio']:.2f}"
    if m["p50_ratio"] >= 1.0:
        return T.NO_FASTER % {"ratio": ratio}
    if best_ratio is not None and m["p50_ratio"] > best_ratio:
        return T.SLOWER_THAN_CHOSEN % {"ratio": ratio, "best": f"{best_ratio:.2f}"}
    return T.TIES_BUT_LARGER % {"ratio": ratio}
