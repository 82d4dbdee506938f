"""auto: build candidates, time them against fp32, evaluate what can win, choose.

Nothing here assumes a recipe or a quantizer setting is good: which format
wins (QDQ or QOperator, u8 or s8 activations, per-channel or not) depends on
the CPU, so it is measured on this machine. The modules, one job each:

- ``plan``: what is built (the default plan, opt-in recipes, a point's neighbours);
- ``grid``: the quantizer grid and candidate labels;
- ``children``: what the sandboxed children run (build / evaluate many);
- ``candidates``: the candidates and their measurements (build, time, evaluate);
- ``stages``: neighbours, evaluate-what-can-win, refinement, re-measuring;
- ``decide``: KPI checks, Pareto front, the choice, verdicts;
- ``auto``: the order, the budget and the report.
"""

from compression.engine.search.auto import auto
from compression.engine.search.children import build_many, compress_to_json, evaluate_many
from compression.engine.search.decide import DEFAULT_QUALITY_FLOOR, KPI_KEYS
from compression.engine.search.plan import OPT_IN_RECIPES, SEARCH_RECIPES

__all__ = [
    "DEFAULT_QUALITY_FLOOR",
    "KPI_KEYS",
    "OPT_IN_RECIPES",
    "SEARCH_RECIPES",
    "auto",
    "build_many",
    "compress_to_json",
    "evaluate_many",
]
