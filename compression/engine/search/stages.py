"""The search's steps after the first timing: what to evaluate, what to refine, re-measure.

Each takes the ``Search`` and adds to or annotates its candidates; the order
and the budget are ``auto``'s.
"""

from __future__ import annotations

from compression.engine.search import grid as search_grid
from compression.engine.search import plan as search_plan
from compression.engine.search import texts as T
from compression.engine.search.candidates import Search
from compression.engine.search.decide import SIZE_TIE, violations

# a first, short timing pass only rules a candidate out when it is this much slower
SKIP_MARGIN = 1.10
# finalists: KPI-meeting candidates within this factor of the fastest, re-measured together
FINALIST_BAND = 1.15
MAX_FINALISTS = 4


def grid_points(s: Search) -> list[dict]:
    return [
        c
        for c in s.candidates
        if c["base_recipe"] == "int8-static" and c.get("metrics") and not c.get("error")
    ]


def explore_neighbours(s: Search) -> list[dict]:
    """Build and time the knobs one step from the fastest int8-static point (one child
    each for building and for timing; the grid's calibration is reused)."""
    points = [c for c in grid_points(s) if not c.get("neighbour_of")]
    if not points:
        return []
    best = min(points, key=lambda c: c["metrics"]["p50_ratio"])
    specs = search_plan.neighbours(best, search_plan.model_op_types(s.input_path))
    known = {c["recipe"] for c in s.candidates}
    specs = [sp for sp in specs if sp["name"] not in known]
    if not specs:
        return []
    new = s.build_batch(specs)
    for c in new:
        c["neighbour_of"] = best["recipe"]
    s.time([best, *new])  # side by side with the point they vary, in one process
    return new


def evaluate_what_can_win(s: Search) -> None:
    """Evaluate fp32 and the candidates in order of speed, skipping those that cannot win."""
    fp32 = s.candidates[0]
    timed = sorted(
        (c for c in s.candidates[1:] if c.get("metrics") and not c.get("evaluated")),
        key=lambda c: c["metrics"]["p50_ratio"],
    )
    if not s.evaluation:
        return
    winners = [
        c for c in s.candidates[1:] if c.get("evaluated") and not violations(c["metrics"], s.kpis)
    ]
    # fp32 is evaluated in the first child, ahead of the variants its accuracy is compared to
    batch: list[dict] = [] if fp32.get("evaluated") else [fp32]

    def flush():
        s.evaluate(batch)
        for c in batch:
            if c is fp32:
                c["evaluated"] = True
            elif c.get("evaluated") and not violations(c["metrics"], s.kpis):
                winners.append(c)
        batch.clear()

    for c in timed:
        c.pop("skip_reason", None)
        timing_misses = [v for v in violations(c["metrics"], s.kpis) if "unknown" not in v]
        if timing_misses:
            c["skip_reason"] = T.SKIP_MISSES_ALREADY
            continue
        beaten = next(
            (
                w
                for w in winners
                if w["metrics"]["p50_ratio"] * SKIP_MARGIN < c["metrics"]["p50_ratio"]
                and w["metrics"]["size_bytes"] <= c["metrics"]["size_bytes"] * SIZE_TIE
            ),
            None,
        )
        if beaten is not None:
            c["skip_reason"] = T.SKIP_CANNOT_WIN % {"recipe": beaten["recipe"]}
            continue
        if c["metrics"]["p50_ratio"] > 1.0 and c["metrics"]["size_ratio"] >= 1.0:
            c["skip_reason"] = T.SKIP_NO_GAIN
            continue
        batch.append(c)
        if len([b for b in batch if b is not fp32]) >= 3:
            flush()
    flush()


def refine(s: Search, fraction: float) -> None:
    """Only when the fastest int8 point misses the quality floor: first the same point with
    entropy calibration (the same graph, so the same speed; other ranges), then mixed
    precision with that point's settings."""
    int8 = [
        c
        for c in s.candidates
        if c.get("evaluated")
        and c["base_recipe"] in ("int8-static",)
        and c["metrics"]["p50_ratio"] < 1.0
    ]
    if not int8:
        return
    ok = [c for c in int8 if not violations(c["metrics"], s.kpis)]
    fastest = min(int8, key=lambda c: c["metrics"]["p50_ratio"])
    if ok and min(ok, key=lambda c: c["metrics"]["p50_ratio"]) is fastest:
        return  # the fastest int8 point already meets every KPI
    overrides = {k: v for k, v in fastest["overrides"].items() if k not in ("calibration_cache",)}
    if overrides.get("calibrate_method", "minmax") == "minmax":
        point = {**overrides, "calibrate_method": "entropy"}
        label = fastest["recipe"]
        name = f"{label[:-1]},entropy]" if label.endswith("]") else f"{label}[entropy]"
        s.step(fraction, T.STEP_ENTROPY % {"recipe": name})
        new = [
            c
            for c in s.build_batch(
                [
                    {
                        "name": name,
                        "recipe": "int8-static",
                        "overrides": {
                            **point,
                            "calibration_cache": f"{s.out_dir}/calibration-entropy.json",
                        },
                        "grid": True,
                    }
                ]
            )
            if c.get("path")
        ]
        if new:
            s.time([fastest, *new])
            s.evaluate(new)
            if all(c.get("evaluated") and not violations(c["metrics"], s.kpis) for c in new):
                return
    name = "mixed-precision" + (search_grid.suffix(overrides) if overrides else "")
    s.step(fraction, T.STEP_EXCLUSION % {"recipe": name})
    cand = s.build(
        {
            "name": name,
            "recipe": "mixed-precision",
            "overrides": {**overrides, "target_cosine": 0.9995},
        }
    )
    if cand.get("path"):
        s.time([cand])
        s.evaluate([cand])


def remeasure_finalists(s: Search, fraction: float) -> None:
    meeting = [c for c in s.candidates[1:] if c.get("meets_kpis")]
    if not meeting:
        return
    best = min(c["metrics"]["p50_ratio"] for c in meeting)
    finalists = sorted(
        (c for c in meeting if c["metrics"]["p50_ratio"] <= best * FINALIST_BAND),
        key=lambda c: c["metrics"]["p50_ratio"],
    )[:MAX_FINALISTS]
    s.step(fraction, T.STEP_REMEASURE)
    s.time(finalists, contenders=True)
    for c in finalists:
        c["remeasured"] = True
