"""auto: try recipes, measure every result, return the Pareto front and a choice.

Nothing here assumes a recipe is good: dynamic int8 on a CNN or fp16 on a CPU
are tried like everything else and lose by measurement. The chosen variant
always meets every KPI; when none does, ``chosen`` is None and the reason says
which KPI each candidate missed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from compression.engine import training
from compression.engine.benchmark import benchmark
from compression.engine.errors import Cancelled, EngineError, PassConfigError
from compression.engine.evaluate import evaluate
from compression.engine.recipes import DEFAULT_RECIPES, run_recipe
from compression.engine.sandbox import run_isolated

# qat only where the train extra is installed; the prune passes then fine-tune themselves
SEARCH_RECIPES: tuple[str, ...] = (*DEFAULT_RECIPES, "prune-structured+int8-static",
                                   *(("qat",) if training.available() else ()))
KPI_KEYS = {"max_latency_ms", "max_accuracy_drop", "min_fidelity", "max_size_mb",
            "threads", "provider"}
# candidates whose p50 is within this factor of the fastest compete on size instead
_LATENCY_TIE = 1.03


def _quality(evaluation: dict) -> tuple[float | None, float | None]:
    """(top-1 accuracy or None, fidelity) where fidelity is top-1 agreement or cosine."""
    acc = evaluation.get("accuracy", {}).get("top1")
    fids = evaluation.get("fidelity", {})
    values = [f.get("top1_agreement", f["cosine"]) for f in fids.values()]
    return acc, (min(values) if values else None)


def _metrics(bench: dict, evaluation: dict, base: dict | None) -> dict:
    acc, fid = _quality(evaluation)
    m = {
        "size_bytes": bench["size_bytes"], "size_mb": round(bench["size_bytes"] / 1e6, 4),
        "gzip_bytes": bench["gzip_bytes"],
        "p50_ms": bench["latency_ms"]["p50"], "p95_ms": bench["latency_ms"]["p95"],
        "throughput_ips": bench["throughput_ips"], "peak_rss_mb": bench["peak_rss_mb"],
        "load_ms": bench["load_ms"], "accuracy": acc, "fidelity": fid,
        "cosine": min((f["cosine"] for f in evaluation.get("fidelity", {}).values()),
                      default=None),
    }
    if base is not None:
        m["size_ratio"] = round(m["size_bytes"] / base["size_bytes"], 4)
        m["p50_ratio"] = round(m["p50_ms"] / base["p50_ms"], 4)
        b1 = next(iter(base["throughput_ips"].values()))
        m["throughput_ratio"] = round(next(iter(m["throughput_ips"].values())) / b1, 4)
        if acc is not None and base.get("accuracy") is not None:
            m["accuracy_drop_pt"] = round((base["accuracy"] - acc) * 100, 4)
    return m


def _violations(m: dict, kpis: dict) -> list[str]:
    out = []
    if "max_latency_ms" in kpis and m["p50_ms"] > kpis["max_latency_ms"]:
        out.append(f"p50 {m['p50_ms']:.2f} ms > {kpis['max_latency_ms']} ms")
    if "max_size_mb" in kpis and m["size_mb"] > kpis["max_size_mb"]:
        out.append(f"size {m['size_mb']:.2f} MB > {kpis['max_size_mb']} MB")
    if "max_accuracy_drop" in kpis:
        drop = m.get("accuracy_drop_pt")
        if drop is None and m.get("accuracy") is not None:
            drop = 0.0  # the original itself
        if drop is None:
            out.append("accuracy unknown (the evaluation set has no labels)")
        elif drop > kpis["max_accuracy_drop"]:
            out.append(f"accuracy drop {drop:.2f} pt > {kpis['max_accuracy_drop']} pt")
    if "min_fidelity" in kpis and (m["fidelity"] is None or m["fidelity"] < kpis["min_fidelity"]):
        out.append(f"fidelity {m['fidelity']} < {kpis['min_fidelity']}")
    return out


def _pareto(cands: list[dict]) -> list[str]:
    def objectives(c):
        m = c["metrics"]
        q = m["accuracy"] if m["accuracy"] is not None else (m["fidelity"] or 0.0)
        return (m["p50_ms"], m["size_bytes"], -q)

    ok = [c for c in cands if c.get("metrics")]
    front = []
    for c in ok:
        oc = objectives(c)
        dominated = any(
            all(a <= b for a, b in zip(objectives(d), oc, strict=True))
            and objectives(d) != oc for d in ok if d is not c
        )
        if not dominated:
            front.append(c["recipe"])
    return front


def _choose(cands: list[dict]) -> tuple[str | None, str]:
    meeting = [c for c in cands if c.get("meets_kpis")]
    measured = [c for c in cands if c.get("metrics")]
    if not meeting:
        if not measured:
            return None, "No candidate could be measured."
        closest = min(measured, key=lambda c: len(c["violations"]))
        return None, ("No candidate meets the KPIs; closest is "
                      f"{closest['recipe']} ({'; '.join(closest['violations'])}). "
                      "See the Pareto front for the best trade-offs.")
    fp32 = next((c for c in measured if c["recipe"] == "fp32"), None)
    fastest = min(meeting, key=lambda c: c["metrics"]["p50_ms"])
    limit = fastest["metrics"]["p50_ms"] * _LATENCY_TIE
    band = [c for c in meeting if c["metrics"]["p50_ms"] <= limit and (
        fp32 is None or c is fp32 or c["metrics"]["p50_ms"] <= fp32["metrics"]["p50_ms"])]
    chosen = min(band or [fastest], key=lambda c: c["metrics"]["size_bytes"])
    m = chosen["metrics"]
    extra = f", {m['p50_ratio']:.2f}x fp32 latency, {m['size_ratio']:.2f}x size" \
        if "p50_ratio" in m else ""
    return chosen["recipe"], (f"{chosen['recipe']} meets every KPI and is the fastest "
                              f"(p50 {m['p50_ms']:.3f} ms{extra}; smaller wins among ties "
                              f"within {round((_LATENCY_TIE - 1) * 100)} %).")


def compress_to_json(recipe: str, input_path: str, output_path: str,
                     calibration_path: str | None, workdir: str,
                     overrides: dict | None = None) -> list[dict]:
    """``run_recipe`` for the sandbox child: returns the JSON-able step records."""
    result = run_recipe(recipe, input_path, output_path, calibration_path=calibration_path,
                        workdir=workdir, overrides=overrides)
    return json.loads(json.dumps(result.steps, default=str))


def auto(input_path: str | Path, *, calibration_path: str | Path | None,
         evaluation_path: str | Path, kpis: dict, threads: int = 1, budget_s: float = 600,
         out_dir: str | Path, progress: Callable[[float, str], None] | None = None,
         should_stop: Callable[[], bool] | None = None,
         recipes: tuple[str, ...] | list[str] | None = None, runs: int = 30,
         step_timeout_s: float = 600, memory_mb: int | None = 4096,
         overrides: dict[str, dict] | None = None) -> dict:
    """Search ``recipes`` (default ``SEARCH_RECIPES``) against ``kpis``; see module docstring.

    Compressing, benchmarking and evaluating each run in their own sandboxed
    process (``step_timeout_s``, ``memory_mb``): a candidate that crashes or
    hangs is recorded as failed and the search goes on. The budget is checked
    between candidates, so one candidate may overrun it by up to its own time.
    ``overrides`` maps a recipe to its options (``run_recipe``'s overrides).
    """
    unknown = set(kpis) - KPI_KEYS
    if unknown:
        raise PassConfigError(f"unknown KPI(s) {sorted(unknown)}; known: {sorted(KPI_KEYS)}")
    kpis = {k: v for k, v in kpis.items() if v is not None}
    threads = int(kpis.get("threads", threads))
    provider = kpis.get("provider", "CPUExecutionProvider")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipes = list(recipes or SEARCH_RECIPES)
    started = time.monotonic()
    total_steps = 1 + len(recipes)
    candidates: list[dict] = []
    skipped: list[str] = []

    def step(i: int, label: str) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled(f"auto search cancelled before {label}")
        if progress is not None:
            progress(min(i / total_steps, 0.99), label)

    def measure(recipe: str, path: Path, base: dict | None) -> dict:
        bench = benchmark(path, threads=threads, runs=runs, warmup=3, provider=provider)
        evaluation = run_isolated(evaluate, str(path), str(evaluation_path),
                                  reference_path=str(input_path), threads=threads,
                                  timeout_s=step_timeout_s, memory_mb=memory_mb)
        return _metrics(bench, evaluation, base)

    step(0, "fp32: measure")
    original = out_dir / "fp32.onnx"
    shutil.copyfile(input_path, original)
    base = measure("fp32", original, None)
    candidates.append({"recipe": "fp32", "path": str(original), "metrics": base, "steps": []})
    for i, recipe in enumerate(recipes, start=1):
        if time.monotonic() - started > budget_s:
            skipped.append(recipe)
            continue
        step(i, f"{recipe}: compress")
        path = out_dir / f"{recipe}.onnx"
        try:
            steps = run_isolated(compress_to_json, recipe, str(input_path), str(path),
                                 calibration_path and str(calibration_path), str(out_dir),
                                 (overrides or {}).get(recipe),
                                 timeout_s=step_timeout_s, memory_mb=memory_mb)
            step(i + 0.5, f"{recipe}: measure")
            metrics = measure(recipe, path, base)
        except Cancelled:
            raise
        except EngineError as exc:
            candidates.append({"recipe": recipe, "path": None, "metrics": None,
                               "error": f"{type(exc).__name__}: {exc}"})
            continue
        candidates.append({"recipe": recipe, "path": str(path), "metrics": metrics,
                           "steps": steps})
    base["size_ratio"] = base["p50_ratio"] = base["throughput_ratio"] = 1.0
    base["accuracy_drop_pt"] = 0.0 if base["accuracy"] is not None else None
    for c in candidates:
        if c.get("metrics"):
            c["violations"] = _violations(c["metrics"], kpis)
            c["meets_kpis"] = not c["violations"]
        else:
            c["violations"], c["meets_kpis"] = ["failed: " + c["error"]], False
    front = _pareto(candidates)
    for c in candidates:
        c["pareto"] = c["recipe"] in front
    chosen, reason = _choose(candidates)
    if skipped:
        reason += f" Budget of {budget_s:g} s reached; not tried: {', '.join(skipped)}."
    report = {"kpis": kpis, "threads": threads, "provider": provider,
              "candidates": candidates, "pareto": front, "chosen": chosen, "reason": reason,
              "skipped": skipped, "seconds": round(time.monotonic() - started, 2)}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    if progress is not None:
        progress(1.0, "done")
    return report
