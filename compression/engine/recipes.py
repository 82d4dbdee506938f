"""Recipes: one pass or a chain of passes, run through temp files.

A recipe name is a registered pass (``int8-static``), a named chain from
``CHAINS``, or any ``+``-joined list of passes (``prune-structured+optimize``).
Overrides are either flat (``{"per_channel": False}``: applied to every pass
in the chain that has the option; an option no pass has is an error) or
scoped (``{"int8-static.per_channel": False}``).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from compression.engine.errors import PassConfigError
from compression.engine.passes import get_pass
from compression.engine.passes._util import strip_unused_opsets

# the default set a compression job measures: all the default recipes
DEFAULT_RECIPES: tuple[str, ...] = (
    "prepare",
    "optimize",
    "int8-dynamic",
    "int8-static",
    "mixed-precision",
    "fp16",
    "prune-unstructured",
)

CHAINS: dict[str, tuple[str, ...]] = {
    "prepare+int8-static": ("prepare", "int8-static"),
    "optimize+fp16": ("optimize", "fp16"),
    "prune-unstructured+int8-static": ("prune-unstructured", "int8-static"),
    "prune-structured+optimize": ("prune-structured", "optimize"),
    "prune-structured+int8-static": ("prune-structured", "int8-static"),
    "prune-structured+optimize+int8-static": ("prune-structured", "optimize", "int8-static"),
}

# Defaults a chain applies under the caller's overrides. "extended" optimization
# fuses Conv+activation into com.microsoft FusedConv, which the quantizer then
# leaves in float, so a chain that quantizes afterwards optimizes at "basic".
CHAIN_DEFAULTS: dict[str, dict] = {
    "prune-structured+optimize+int8-static": {"optimize.level": "basic"},
}


@dataclass
class RecipeResult:
    recipe: str
    output_path: str
    steps: list[dict] = field(default_factory=list)  # one per pass: name, config, metrics, notes
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve(recipe: str) -> tuple[str, ...]:
    """Pass names of a recipe; raises PassConfigError for an unknown name."""
    if recipe in CHAINS:
        return CHAINS[recipe]
    names = tuple(n.strip() for n in recipe.split("+") if n.strip())
    if not names:
        raise PassConfigError("empty recipe name")
    for name in names:
        get_pass(name)
    return names


def list_recipes() -> list[str]:
    from compression.engine.passes import list_passes

    return sorted(set(list_passes()) | set(CHAINS))


def needs_calibration(recipe: str) -> bool:
    return any(get_pass(n).needs_calibration for n in resolve(recipe))


def _split_overrides(names: tuple[str, ...], overrides: dict) -> list[dict]:
    per_pass: list[dict] = [{} for _ in names]
    unused = []
    for key, value in overrides.items():
        scope, dot, option = key.rpartition(".")
        if dot and scope in names:
            for i, name in enumerate(names):
                if name == scope:
                    per_pass[i][option] = value
            continue
        applied = False
        for i, name in enumerate(names):
            fields = {f.name for f in dataclasses.fields(get_pass(name).Config)}
            if key in fields:
                per_pass[i][key] = value
                applied = True
        if not applied:
            unused.append(key)
    if unused:
        raise PassConfigError(
            f"option(s) {sorted(unused)} do not apply to any pass of {'+'.join(names)}"
        )
    return per_pass


def run_recipe(
    recipe: str,
    input_path: str | Path,
    output_path: str | Path,
    *,
    calibration_path: str | Path | None = None,
    overrides: dict | None = None,
    workdir: str | Path | None = None,
    train_path: str | Path | None = None,
    eval_path: str | Path | None = None,
) -> RecipeResult:
    """Apply ``recipe`` to ``input_path`` and write the final model to ``output_path``.

    ``calibration_path``, ``train_path`` and ``eval_path`` reach every pass whose
    config has that option (training passes and pruning recovery use all three).
    """
    names = resolve(recipe)
    merged = {**CHAIN_DEFAULTS.get(recipe, {}), **dict(overrides or {})}
    per_pass = _split_overrides(names, merged)
    configs = []
    for name, opts in zip(names, per_pass, strict=True):
        p = get_pass(name)
        fields = {f.name for f in dataclasses.fields(p.Config)}
        for key, value in (
            ("calibration_path", calibration_path),
            ("train_path", train_path),
            ("eval_path", eval_path),
        ):
            if value and key in fields and key not in opts:
                opts = {**opts, key: str(value)}
        configs.append(p.make_config(opts))  # validate every config before any work
    started = time.monotonic()
    result = RecipeResult(recipe=recipe, output_path=str(output_path))
    with tempfile.TemporaryDirectory(prefix="edgefleet-recipe-", dir=workdir) as tmp:
        current = str(input_path)
        for i, (name, config) in enumerate(zip(names, configs, strict=True)):
            step_out = Path(tmp) / f"step{i}-{name}.onnx"
            step = get_pass(name).run(current, config, step_out)
            result.steps.append(
                {
                    "pass": name,
                    "config": config.to_dict(),
                    "metrics": step.metrics,
                    "notes": step.notes,
                }
            )
            current = step.output_path
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(current, output_path)
    strip_unused_opsets(output_path)
    result.seconds = round(time.monotonic() - started, 3)
    return result
