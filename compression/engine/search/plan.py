"""What the search builds: the default plan, the opt-in recipes, the neighbours of a point.

The default plan is what can be built in seconds: the cheap recipes plus the
grid over onnxruntime's static quantizer (``grid``). Recipes that train or
that need a second toolkit take minutes on a CPU (qat, pruning with recovery
fine-tuning, NNCF): they are **opt-in** (``auto(thorough=True)`` or an
explicit ``recipes=`` list), never silently part of a default search.

Once the grid is timed, the fastest point's **neighbours** each change one
knob the grid does not walk (7-bit weights, symmetric activations,
asymmetric weights, elementwise/concat ops left in float); they reuse the
grid's calibration cache, so each costs one quantizer pass, and only those
that time faster are evaluated.
"""

from __future__ import annotations

from pathlib import Path

from compression.engine import training
from compression.engine.passes import nncf_quantize
from compression.engine.recipes import DEFAULT_RECIPES
from compression.engine.search import grid as search_grid

# every recipe auto can search (qat only where the train extra is installed)
SEARCH_RECIPES: tuple[str, ...] = (
    *DEFAULT_RECIPES,
    "prune-structured+int8-static",
    *(("qat",) if training.available() else ()),
)
# minutes, not seconds, on a CPU: only with thorough=True (or named in recipes=)
OPT_IN_RECIPES: tuple[str, ...] = ("prune-structured+int8-static", "qat", "int8-nncf")
# ops whose int8 form often costs more (requantization around them) than it saves
ELEMENTWISE_OPS = ("Add", "Mul", "Concat", "Sigmoid", "Softmax", "Where")
# the prune passes fine-tune by default where torch is installed; the fast plan does not
_NO_RECOVERY = {"finetune_epochs": 0}


def opt_in_available() -> list[str]:
    """The opt-in recipes this installation can run."""
    out = []
    for r in OPT_IN_RECIPES:
        if r == "qat" and not training.available():
            continue
        if r == "int8-nncf" and not nncf_quantize.available():
            continue
        out.append(r)
    return out


def default_plan(calibration: str | None, out_dir: Path, *, thorough: bool = False) -> list[dict]:
    """The default recipes (mixed precision runs as a refinement) plus the quantizer grid;
    with ``thorough``, the opt-in recipes too."""
    cache = str(out_dir)
    plan = []
    for r in DEFAULT_RECIPES:
        if r == "mixed-precision":
            continue
        entry: dict = {"name": r, "recipe": r}
        if r == "int8-static" and calibration:
            entry["overrides"] = {"calibration_cache": f"{cache}/calibration-minmax.json"}
        if r.startswith("prune-") and not thorough:
            entry["overrides"] = dict(_NO_RECOVERY)
        plan.append(entry)
    if calibration:
        plan += search_grid.quantizer_grid(cache)
    if thorough:
        for r in opt_in_available():
            if calibration or r == "prune-structured+int8-static":
                plan.append({"name": r, "recipe": r})
    for spec in plan:
        spec["grid"] = spec["recipe"] == "int8-static"
    return plan


def model_op_types(path: str | Path) -> set[str]:
    from compression.engine.passes._util import load

    return {n.op_type for n in load(path).graph.node}


def neighbours(best: dict, op_types: set[str]) -> list[dict]:
    """Plan entries one knob away from the grid point ``best`` (a candidate dict)."""
    base = {k: v for k, v in best["overrides"].items()}
    out = []
    knobs = [
        ("reduce-range", {"reduce_range": True}),
        ("sym-act", {"activation_symmetric": True}),
        ("asym-w", {"weight_symmetric": False}),
    ]
    quantizable = _quantizable(base.get("quant_format", "qdq"))
    present = sorted(op_types & quantizable & set(ELEMENTWISE_OPS))
    keep = sorted((op_types & quantizable) - set(ELEMENTWISE_OPS))
    if present and keep:
        knobs.append(("float-" + "/".join(present), {"op_types": keep}))
    label = search_grid.suffix({**search_grid.DEFAULT_POINT, **base})
    for name, knob in knobs:
        if all(base.get(k) == v for k, v in knob.items()):
            continue
        overrides = {**base, **knob}
        out.append(
            {
                "name": "int8-static" + (f"{label[:-1]},{name}]" if label else f"[{name}]"),
                "recipe": "int8-static",
                "overrides": overrides,
                "grid": True,
                "neighbour_of": best["recipe"],
            }
        )
    return out


def _quantizable(fmt: str) -> set[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QLinearOpsRegistry) | (set(QDQRegistry) if fmt == "qdq" else set())
