"""The decision: KPI checks, the Pareto front, the choice and a verdict per candidate.

Pure functions over candidate dicts (``metrics`` as written by ``candidates``);
nothing here measures anything.
"""

from __future__ import annotations

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
        out.append(f"p50 {m['p50_ms']:.3f} ms > {kpis['max_latency_ms']} ms")
    if "max_size_mb" in kpis and m["size_mb"] > kpis["max_size_mb"]:
        out.append(f"size {m['size_mb']:.2f} MB > {kpis['max_size_mb']} MB")
    if "max_accuracy_drop" in kpis:
        drop = m.get("accuracy_drop_pt")
        if drop is None and m.get("accuracy") is not None:
            drop = 0.0  # the original itself
        if drop is None:
            out.append("accuracy unknown (not evaluated, or the evaluation set has no labels)")
        elif drop > kpis["max_accuracy_drop"]:
            out.append(f"accuracy drop {drop:.2f} pt > {kpis['max_accuracy_drop']} pt")
    if "min_fidelity" in kpis:
        if m.get("fidelity") is None:
            out.append("fidelity unknown")
        elif m["fidelity"] < kpis["min_fidelity"]:
            out.append(
                f"fidelity {m['fidelity']:.4f} < {kpis['min_fidelity']} "
                f"({m.get('fidelity_metric') or 'cosine'})"
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
        no_worse = dl <= cl * LATENCY_TIE and ds <= cs * 1.05 and dq >= cq
        better = dl * LATENCY_TIE < cl or ds * 1.05 < cs or dq > cq
        return no_worse and better

    ok = [c for c in cands if c.get("metrics") and c.get("evaluated", True)]
    return [c["recipe"] for c in ok if not any(dominates(d, c) for d in ok if d is not c)]


def choose(cands: list[dict]) -> tuple[str | None, str]:
    meeting = [c for c in cands if c.get("meets_kpis")]
    measured = [c for c in cands if c.get("metrics")]
    if not meeting:
        if not measured:
            return None, "No candidate could be measured."
        closest = min(measured, key=lambda c: len(c["violations"]))
        return None, (
            "No candidate meets the KPIs; closest is "
            f"{closest['recipe']} ({'; '.join(closest['violations'])}). "
            "See the Pareto front for the best trade-offs."
        )
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
        return "fp32", (
            "No variant is faster than fp32 beyond the measurement noise "
            f"({round((LATENCY_TIE - 1) * 100)} %) or clearly smaller; "
            "the original stays the best choice."
        )
    m = chosen["metrics"]
    return chosen["recipe"], (
        f"{chosen['recipe']} meets every KPI and is the fastest "
        f"(p50 {m['p50_ms']:.3f} ms, {m['p50_ratio']:.2f}x fp32 latency measured interleaved, "
        f"{m['size_ratio']:.2f}x size; smaller wins among ties within "
        f"{round((LATENCY_TIE - 1) * 100)} %)."
    )


def verdict(c: dict, chosen: str | None, best_ratio: float | None) -> str:
    if c["recipe"] == chosen:
        return "chosen"
    if c.get("error"):
        return f"failed: {c['error']}"
    m = c["metrics"]
    if c.get("skip_reason") and c.get("violations") == [c["skip_reason"]]:
        return c["skip_reason"]
    if c.get("violations"):
        return "misses: " + "; ".join(c["violations"])
    if c["recipe"] == "fp32":
        return "the original"
    if m["p50_ratio"] >= 1.0:
        return f"no faster than fp32 ({m['p50_ratio']:.2f}x)"
    if best_ratio is not None and m["p50_ratio"] > best_ratio:
        return f"slower than the chosen variant ({m['p50_ratio']:.2f}x vs {best_ratio:.2f}x)"
    return f"ties on latency ({m['p50_ratio']:.2f}x) but is larger"
