"""``auto``: the search's order, budget and report.

1. **Build** the plan (``plan.default_plan``: cheap recipes + the quantizer
   grid, one calibration for every grid point) in one sandboxed child.
2. **Time** every candidate interleaved with fp32 (ratios, not milliseconds);
   one far slower than fp32 is not timed round after round.
3. **Neighbours** of the fastest grid point (one knob each: reduce_range,
   symmetric activations, asymmetric weights, elementwise ops in float):
   built from the same calibration and timed side by side with that point.
4. **Evaluate** in order of speed, only what can still win; the reference runs
   once, and a variant's evaluation stops once it cannot reach the quality KPIs.
5. **Refine** with mixed precision when the fastest int8 point misses the floor.
6. **Re-measure** the finalists until the fastest stays the fastest, **choose**.

The chosen variant always meets every KPI (a default quality floor applies
when the user sets none); when none does, or fp32 itself wins, every
candidate says why in ``verdict``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from compression.engine.errors import EngineError, PassConfigError
from compression.engine.search import plan as search_plan
from compression.engine.search import stages
from compression.engine.search import texts as T
from compression.engine.search.candidates import Search
from compression.engine.search.decide import (
    DEFAULT_QUALITY_FLOOR,
    KPI_KEYS,
    choose,
    pareto,
    verdict,
)


def auto(
    input_path: str | Path,
    *,
    calibration_path: str | Path | None,
    evaluation_path: str | Path | None,
    kpis: dict,
    threads: int = 1,
    budget_s: float = 600,
    out_dir: str | Path,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    recipes: tuple[str, ...] | list[str] | None = None,
    runs: int = 30,
    step_timeout_s: float = 600,
    memory_mb: int | None = 4096,
    output_kinds: dict[str, str] | None = None,
    overrides: dict[str, dict] | None = None,
    thorough: bool = False,
) -> dict:
    """Search against ``kpis``; see the module docstring.

    ``recipes`` None searches the default plan (cheap recipes, the quantizer
    grid, its neighbours and the refinement); ``thorough`` adds the opt-in
    recipes that take minutes (``plan.OPT_IN_RECIPES``: qat, pruning with
    recovery fine-tuning, NNCF where installed). An explicit list is searched
    as given. Without
    ``evaluation_path`` (latency-only mode) inputs are generated, fidelity is
    reported as unknown and only latency/size KPIs can be met.
    ``output_kinds`` overrides the fidelity metric per output (see
    ``evaluate.OUTPUT_KINDS``); ``overrides`` maps a recipe to its options
    (``run_recipe``'s overrides). Every step runs in its own sandboxed process
    (``step_timeout_s``, ``memory_mb``): a candidate that crashes or hangs is
    recorded as failed and the search goes on. The budget is checked between
    candidates.
    """
    unknown = set(kpis) - KPI_KEYS
    if unknown:
        raise PassConfigError(f"unknown KPI(s) {sorted(unknown)}; known: {sorted(KPI_KEYS)}")
    kpis = {k: v for k, v in kpis.items() if v is not None}
    threads = int(kpis.get("threads", threads))
    provider = kpis.get("provider", "CPUExecutionProvider")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    input_path = Path(input_path).resolve()  # sandboxed children run in their own directory
    evaluation = str(Path(evaluation_path).resolve()) if evaluation_path else None
    calibration = str(Path(calibration_path).resolve()) if calibration_path else None
    applied = {k: v for k, v in kpis.items() if k not in ("threads", "provider")}
    default_floor = None
    if evaluation and "min_fidelity" not in applied and "max_accuracy_drop" not in applied:
        default_floor = DEFAULT_QUALITY_FLOOR
        applied["min_fidelity"] = default_floor
    generated = None
    if evaluation is None:
        from compression.engine.datasets import random_dataset

        generated = random_dataset(input_path, out_dir / "generated_inputs.npz")
        calibration = calibration or generated
    plan = (
        [{"name": r, "recipe": r} for r in recipes]
        if recipes
        else search_plan.default_plan(calibration, out_dir, thorough=thorough)
    )
    for spec in plan:  # the user's options for a recipe apply to its grid points too
        if (overrides or {}).get(spec["recipe"]) or (overrides or {}).get(spec["name"]):
            spec["overrides"] = {
                **spec.get("overrides", {}),
                **(overrides or {}).get(spec["recipe"], {}),
                **(overrides or {}).get(spec["name"], {}),
            }
    started = time.monotonic()
    total = len(plan) + 4
    s = Search(
        input_path,
        out_dir,
        calibration=calibration,
        evaluation=evaluation,
        kpis=applied,
        threads=threads,
        provider=provider,
        runs=runs,
        step_timeout_s=step_timeout_s,
        memory_mb=memory_mb,
        kinds=output_kinds,
        progress=progress,
        should_stop=should_stop,
    )
    if generated:
        s.shape_data = generated
    s.step(0, T.STEP_MEASURE_FP32)
    original = out_dir / "fp32.onnx"
    shutil.copyfile(input_path, original)
    s.candidates.append(
        {
            "recipe": "fp32",
            "base_recipe": "fp32",
            "overrides": {},
            "path": str(original),
            "metrics": None,
            "steps": [],
        }
    )
    skipped: list[str] = []
    clock = _StageClock()
    if recipes is None:
        # the default plan: every candidate built in one child, grid points from one prepare
        s.step(1 / total, T.STEP_BUILD_BATCH % {"n": len(plan)})
        s.build_batch(plan)
    else:
        for i, spec in enumerate(plan, start=1):
            if time.monotonic() - started > budget_s:
                skipped.append(spec["name"])
                continue
            s.step(i / total, T.STEP_COMPRESS % {"recipe": spec["name"]})
            s.build(spec)
    clock.lap("build")
    s.step((len(plan) + 1) / total, T.STEP_TIME)
    s.time(s.candidates)
    clock.lap("time")
    if s.candidates[0].get("metrics") is None:
        raise EngineError("the original model could not be timed")
    if recipes is None and calibration and time.monotonic() - started <= budget_s:
        s.step((len(plan) + 1.5) / total, T.STEP_NEIGHBOURS)
        stages.explore_neighbours(s)
        clock.lap("neighbours")
    s.step((len(plan) + 2) / total, T.STEP_EVALUATE)
    stages.evaluate_what_can_win(s)
    clock.lap("evaluate")
    if recipes is None and calibration and time.monotonic() - started <= budget_s:
        stages.refine(s, (len(plan) + 2.5) / total)
    clock.lap("refine")
    s.verdicts()
    stages.remeasure_finalists(s, (len(plan) + 3) / total)
    s.verdicts()
    clock.lap("remeasure")
    front = pareto(s.candidates)
    chosen, reason = choose(s.candidates)
    if chosen is not None and chosen not in front:
        front.append(chosen)  # within the noise of a dominating point: the front keeps the choice
    for c in s.candidates:
        c["pareto"] = c["recipe"] in front
    best = next((c["metrics"]["p50_ratio"] for c in s.candidates if c["recipe"] == chosen), None)
    for c in s.candidates:
        c["verdict"] = verdict(c, chosen, best)
    reason_parts = [reason]  # sentences, each a texts template (the pages translate them)
    if chosen in (None, "fp32"):
        why = "; ".join(
            T.RECIPE_VERDICT % {"recipe": c["recipe"], "verdict": c["verdict"]}
            for c in s.candidates
            if c["recipe"] != "fp32"
        )
        reason_parts.append(T.WHY_NOT_BEATEN % {"why": why})
    if default_floor is not None:
        reason_parts.append(T.DEFAULT_FLOOR % {"floor": default_floor})
    if generated:
        reason_parts.append(T.LATENCY_ONLY)
    if skipped:
        reason_parts.append(
            T.BUDGET_REACHED % {"budget": f"{budget_s:g}", "skipped": ", ".join(skipped)}
        )
    reason = " ".join(reason_parts)
    shapes = s.timing.get("input_shapes", {})
    report = {
        "kpis": kpis,
        "kpis_applied": applied,
        "default_quality_floor": default_floor,
        "latency_only": bool(generated),
        "threads": threads,
        "provider": provider,
        "measurement": {
            **s.timing,
            "interleaved": True,
            "shape": ", ".join(f"{k} {v}" for k, v in shapes.items()),
        },
        "candidates": s.candidates,
        "pareto": front,
        "chosen": chosen,
        "reason": reason,
        "reason_parts": reason_parts,
        "skipped": skipped,
        "opt_in_not_run": (
            [] if recipes is not None or thorough else search_plan.opt_in_available()
        ),
        "seconds": round(time.monotonic() - started, 2),
        "stage_seconds": clock.wall,
        # CPU seconds of this process and its children per stage: what the search costs
        # whatever else the machine runs (wall time on a shared machine is mostly waiting)
        "stage_cpu_seconds": clock.cpu,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    if progress is not None:
        progress(1.0, T.STEP_DONE)
    return report


class _StageClock:
    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._mark = time.monotonic(), _cpu_seconds()

    def lap(self, stage: str) -> None:
        now = time.monotonic(), _cpu_seconds()
        self.wall[stage] = round(now[0] - self._mark[0], 2)
        self.cpu[stage] = round(now[1] - self._mark[1], 2)
        self._mark = now


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(u.ru_utime + u.ru_stime for u in usage)
