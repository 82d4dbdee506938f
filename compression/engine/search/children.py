"""What the sandboxed children run: build and evaluate several candidates per process.

Module-level functions with JSON-able arguments and results (``run_isolated``);
a candidate that fails is reported and the others go on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from compression.engine.datasets import load_dataset
from compression.engine.errors import EngineError
from compression.engine.evaluate import evaluate, predict
from compression.engine.recipes import run_recipe


def compress_to_json(
    recipe: str,
    input_path: str,
    output_path: str,
    calibration_path: str | None,
    workdir: str,
    overrides: dict | None = None,
) -> list[dict]:
    """``run_recipe`` for the sandbox child: returns the JSON-able step records."""
    result = run_recipe(
        recipe,
        input_path,
        output_path,
        calibration_path=calibration_path,
        workdir=workdir,
        overrides=overrides,
    )
    return json.loads(json.dumps(result.steps, default=str))


def build_many(
    specs: list[dict], input_path: str, calibration_path: str | None, workdir: str
) -> dict:
    """Build several candidates in one child (one interpreter start instead of one each).

    The prepare pass (shape inference, BatchNorm folding: seconds on a CNN) runs
    once: the ``prepare`` candidate is that graph, and int8-static points
    (``spec["grid"]``) and int8-dynamic quantize it, every static point with the
    shared calibration cache.
    """
    prepared = Path(workdir) / "prepared-for-grid.onnx"
    prep_steps: list[dict] = []

    def ensure_prepared() -> str:
        if not prepared.exists():
            prep_steps.extend(compress_to_json("prepare", input_path, str(prepared), None, workdir))
        return str(prepared)

    out = {}
    for spec in specs:
        try:
            overrides = spec.get("overrides") or {}
            if spec["recipe"] == "prepare" and not overrides:
                ensure_prepared()
                shutil.copyfile(prepared, spec["output"])
                steps = [dict(s) for s in prep_steps] or [
                    {"pass": "prepare", "notes": ["the search's prepared graph"], "metrics": {}}
                ]
            elif spec.get("grid") or (
                spec["recipe"] == "int8-dynamic" and overrides.get("preprocess", True)
            ):
                src = ensure_prepared()
                steps = compress_to_json(
                    spec["recipe"],
                    src,
                    spec["output"],
                    calibration_path,
                    workdir,
                    {**overrides, "preprocess": False},
                )
                notes = [f"prepare: {n}" for s in prep_steps for n in s.get("notes", [])]
                steps[0]["notes"] = notes + steps[0]["notes"]
            else:
                steps = compress_to_json(
                    spec["recipe"],
                    input_path,
                    spec["output"],
                    calibration_path,
                    workdir,
                    spec.get("overrides"),
                )
            out[spec["name"]] = {"steps": steps}
        except EngineError as exc:
            out[spec["name"]] = {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # the quantizer's own exceptions, after every fallback
            out[spec["name"]] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return out


def evaluate_many(
    paths: dict[str, str],
    data: str,
    reference: str,
    threads: int,
    kinds: dict | None,
    stop_below: dict | None = None,
    reference_cache: str | None = None,
) -> dict:
    """Evaluate several variants in one child. The reference runs once per search: its
    outputs are kept in ``reference_cache`` (an .npz) for the next child. With
    ``stop_below``, each variant's evaluation stops once it cannot reach those KPIs
    (``evaluate``'s sequential mode)."""
    ref = None
    try:
        ref = reference_outputs(reference, data, threads, reference_cache)
    except Exception:  # the reference is then run per variant, reporting its own errors
        ref = None
    out = {}
    for label, path in paths.items():
        try:
            out[label] = {
                "ok": evaluate(
                    path,
                    data,
                    reference_path=reference,
                    threads=threads,
                    kinds=kinds,
                    reference_outputs=ref,
                    stop_below=stop_below,
                )
            }
        except EngineError as exc:
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # onnxruntime refusing to run a variant
            out[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return out


# reference outputs larger than this are recomputed per child instead of kept on disk
CACHE_MAX_BYTES = 256 * 2**20


def reference_outputs(
    reference: str, data: str, threads: int, cache: str | None
) -> dict[str, np.ndarray]:
    """``predict`` of the reference on ``data``, read from / written to ``cache``."""
    if cache and Path(cache).exists():
        with np.load(cache, allow_pickle=False) as npz:
            names = [str(n) for n in npz["names"]]
            return {n: npz[f"o{i}"] for i, n in enumerate(names)}
    outputs = predict(reference, load_dataset(data, reference), threads=threads)
    if cache and sum(v.nbytes for v in outputs.values()) <= CACHE_MAX_BYTES:
        arrays = {f"o{i}": v for i, v in enumerate(outputs.values())}
        tmp = Path(f"{cache}.tmp.npz")
        np.savez(tmp, names=np.array(list(outputs)), **arrays)
        tmp.replace(cache)
    return outputs
