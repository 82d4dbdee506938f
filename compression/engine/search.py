"""auto: build candidates, time them against fp32, evaluate what can win, choose.

Nothing here assumes a recipe or a quantizer setting is good: which format
wins (QDQ or QOperator, u8 or s8 activations, per-channel or not) depends on
the CPU, so it is measured on this machine. The steps:

1. **Build** every candidate: the recipes plus, by default, a grid over
   onnxruntime's static quantizer (format x activation type x per-channel,
   then calibration method on the best point). Calibration runs once and its
   ranges are reused by every grid point.
2. **Time** every candidate *interleaved* with fp32 in one process, on the
   data's own sample shapes, and keep the ratio to fp32 (``benchmark.compare``):
   absolute milliseconds measured apart are decided by the machine's load.
3. **Evaluate** in order of speed, and only what can still win (a candidate
   slower and not smaller than one that already meets every KPI cannot).
4. **Refine**: when the fastest int8 point misses the quality floor, its most
   sensitive layers are kept in float (mixed precision with that point's
   settings).
5. **Re-measure** the finalists until the fastest stays the fastest.

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

from compression.engine import grid as search_grid
from compression.engine import training
from compression.engine.errors import Cancelled, EngineError, PassConfigError
from compression.engine.evaluate import evaluate
from compression.engine.passes import nncf_quantize
from compression.engine.recipes import DEFAULT_RECIPES, run_recipe
from compression.engine.sandbox import run_isolated

# qat only where the train extra is installed; the prune passes then fine-tune themselves
SEARCH_RECIPES: tuple[str, ...] = (
    *DEFAULT_RECIPES,
    "prune-structured+int8-static",
    *(("qat",) if training.available() else ()),
)
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
_LATENCY_TIE = 1.03
# finalists: KPI-meeting candidates within this factor of the fastest, re-measured together
_FINALIST_BAND = 1.15
# a first, short timing pass only rules a candidate out when it is this much slower
_SKIP_MARGIN = 1.10
_MAX_FINALISTS = 4
_CHUNK = 7  # models per timing process (memory)


def _quality(evaluation: dict) -> tuple[float | None, float | None, str | None]:
    """(top-1 accuracy or None, fidelity = worst output's task metric, that metric's name)."""
    acc = evaluation.get("accuracy", {}).get("top1")
    fids = evaluation.get("fidelity", {})
    if not fids:
        return acc, None, None
    name, worst = min(fids.items(), key=lambda kv: kv[1].get("fidelity", kv[1]["cosine"]))
    return acc, worst.get("fidelity", worst["cosine"]), f"{worst.get('metric', 'cosine')} ({name})"


def _violations(m: dict, kpis: dict) -> list[str]:
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


def _pareto(cands: list[dict]) -> list[str]:
    """Non-dominated candidates; latency within the noise (``_LATENCY_TIE``) and size
    within 5 % count as equal, so noise alone never pushes a candidate off the front."""

    def objectives(c):
        m = c["metrics"]
        q = m["accuracy"] if m.get("accuracy") is not None else (m.get("fidelity") or 0.0)
        return m["p50_ratio"], m["size_bytes"], q

    def dominates(d, c) -> bool:
        (dl, ds, dq), (cl, cs, cq) = objectives(d), objectives(c)
        no_worse = dl <= cl * _LATENCY_TIE and ds <= cs * 1.05 and dq >= cq
        better = dl * _LATENCY_TIE < cl or ds * 1.05 < cs or dq > cq
        return no_worse and better

    ok = [c for c in cands if c.get("metrics") and c.get("evaluated", True)]
    return [c["recipe"] for c in ok if not any(dominates(d, c) for d in ok if d is not c)]


def _choose(cands: list[dict]) -> tuple[str | None, str]:
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
    limit = fastest["metrics"]["p50_ratio"] * _LATENCY_TIE
    band = [
        c
        for c in meeting
        if c["metrics"]["p50_ratio"] <= limit
        and (c["recipe"] == "fp32" or c["metrics"]["p50_ratio"] <= 1.0)
    ]
    chosen = min(band or [fastest], key=lambda c: c["metrics"]["size_bytes"])
    fp32 = next((c for c in band if c["recipe"] == "fp32"), None)
    if fp32 is not None and chosen["metrics"]["size_bytes"] > 0.95 * fp32["metrics"]["size_bytes"]:
        chosen = fp32  # within the noise of fp32 and hardly smaller: not worth a new version
        m = chosen["metrics"]
        return "fp32", (
            "No variant is faster than fp32 beyond the measurement noise "
            f"({round((_LATENCY_TIE - 1) * 100)} %) or clearly smaller; "
            "the original stays the best choice."
        )
    m = chosen["metrics"]
    return chosen["recipe"], (
        f"{chosen['recipe']} meets every KPI and is the fastest "
        f"(p50 {m['p50_ms']:.3f} ms, {m['p50_ratio']:.2f}x fp32 latency measured interleaved, "
        f"{m['size_ratio']:.2f}x size; smaller wins among ties within "
        f"{round((_LATENCY_TIE - 1) * 100)} %)."
    )


def _verdict(c: dict, chosen: str | None, best_ratio: float | None) -> str:
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

    int8-static points (``spec["grid"]``) quantize one prepared graph: the
    prepare pass (shape inference, BatchNorm folding) runs once, and every
    point reuses the shared calibration cache. A candidate that fails is
    reported, the others go on.
    """
    from compression.engine.passes import get_pass

    prepared = None
    prep_notes: list[str] = []
    out = {}
    for spec in specs:
        try:
            if spec.get("grid"):
                if prepared is None:
                    prepared = str(Path(workdir) / "prepared-for-grid.onnx")
                    prep = get_pass("prepare")
                    prep_notes = prep.run(input_path, prep.make_config({}), prepared).notes
                steps = compress_to_json(
                    spec["recipe"],
                    prepared,
                    spec["output"],
                    calibration_path,
                    workdir,
                    {**spec.get("overrides", {}), "preprocess": False},
                )
                steps[0]["notes"] = [f"prepare: {n}" for n in prep_notes] + steps[0]["notes"]
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
    paths: dict[str, str], data: str, reference: str, threads: int, kinds: dict | None
) -> dict:
    """Evaluate several variants in one child (the reference runs once per call)."""
    out = {}
    for label, path in paths.items():
        try:
            out[label] = {
                "ok": evaluate(path, data, reference_path=reference, threads=threads, kinds=kinds)
            }
        except EngineError as exc:
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # onnxruntime refusing to run a variant
            out[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return out


class _Search:
    def __init__(
        self,
        input_path: Path,
        out_dir: Path,
        *,
        calibration: str | None,
        evaluation: str | None,
        kpis: dict,
        threads: int,
        provider: str,
        runs: int,
        step_timeout_s: float,
        memory_mb: int | None,
        kinds: dict | None,
        progress,
        should_stop,
    ):
        self.input_path, self.out_dir = input_path, out_dir
        self.calibration, self.evaluation = calibration, evaluation
        self.kpis, self.threads, self.provider, self.runs = kpis, threads, provider, runs
        self.step_timeout_s, self.memory_mb, self.kinds = step_timeout_s, memory_mb, kinds
        self.progress, self.should_stop = progress, should_stop
        self.candidates: list[dict] = []
        self.shape_data = evaluation or calibration
        self.timing: dict = {}

    def step(self, fraction: float, label: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"auto search cancelled before {label}")
        if self.progress is not None:
            self.progress(min(fraction, 0.99), label)

    def build(self, spec: dict) -> dict:
        path = self.out_dir / f"{search_grid.slug(spec['name'])}.onnx"
        cand = {
            "recipe": spec["name"],
            "base_recipe": spec["recipe"],
            "overrides": spec.get("overrides") or {},
            "path": None,
            "metrics": None,
        }
        try:
            cand["steps"] = run_isolated(
                compress_to_json,
                spec["recipe"],
                str(self.input_path),
                str(path),
                self.calibration,
                str(self.out_dir),
                *([cand["overrides"]] if cand["overrides"] else []),
                timeout_s=self.step_timeout_s,
                memory_mb=self.memory_mb,
            )
            cand["path"] = str(path)
        except Cancelled:
            raise
        except EngineError as exc:
            cand["error"] = f"{type(exc).__name__}: {exc}"
        self.candidates.append(cand)
        return cand

    def build_batch(self, specs: list[dict]) -> None:
        """``build`` for many candidates in one child (falls back to one by one)."""
        for spec in specs:
            spec["output"] = str(self.out_dir / f"{search_grid.slug(spec['name'])}.onnx")
        try:
            results = run_isolated(
                build_many,
                specs,
                str(self.input_path),
                self.calibration,
                str(self.out_dir),
                timeout_s=self.step_timeout_s * 3,
                memory_mb=self.memory_mb,
            )
        except Cancelled:
            raise
        except EngineError:
            for spec in specs:
                self.build(spec)
            return
        for spec in specs:
            res = results.get(spec["name"], {"error": "not built"})
            cand = {
                "recipe": spec["name"],
                "base_recipe": spec["recipe"],
                "overrides": spec.get("overrides") or {},
                "path": None,
                "metrics": None,
            }
            if "error" in res:
                cand["error"] = res["error"]
            else:
                cand["steps"], cand["path"] = res["steps"], spec["output"]
            self.candidates.append(cand)

    def time(self, cands: list[dict], *, contenders: bool = False) -> None:
        """Interleaved timing against fp32; writes p50 ratio and friends into each metrics."""
        fp32 = self.candidates[0]
        todo = [c for c in cands if c.get("path") and c is not fp32]
        chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)] or [[]]
        for chunk in chunks:
            paths = {"fp32": fp32["path"], **{c["recipe"]: c["path"] for c in chunk}}
            try:
                r = self._compare(
                    paths, contenders=[c["recipe"] for c in chunk] if contenders else None
                )
            except EngineError as exc:
                if len(chunk) <= 1:
                    for c in chunk:
                        c["error"], c["path"] = f"{type(exc).__name__}: {exc}", None
                    continue
                for c in chunk:  # one variant crashed the timing child: time them alone
                    self.time([c], contenders=contenders)
                continue
            self.timing = {
                k: r[k]
                for k in ("input_shapes", "shape_source", "rounds", "runs_per_round", "stable")
            }
            base = r["models"]["fp32"]
            if fp32.get("metrics") is None or not cands or cands[0] is fp32:
                fp32["metrics"] = self._metrics(fp32, base, base)
            for c in chunk:
                c["metrics"] = self._metrics(
                    c, r["models"][c["recipe"]], fp32["metrics"], old=c.get("metrics")
                )
                c["timing"] = {"rounds": r["rounds"], "stable": r["stable"]}

    def _compare(self, paths: dict, contenders: list[str] | None) -> dict:
        from compression.engine.benchmark import compare

        runs = max(5, self.runs // 3)
        if contenders:
            return compare(
                paths,
                reference="fp32",
                threads=self.threads,
                provider=self.provider,
                data_path=self.shape_data,
                runs=runs * 2,
                min_rounds=5,
                max_rounds=15,
                contenders=contenders,
                timeout_s=self.step_timeout_s,
                memory_mb=self.memory_mb,
            )
        return compare(
            paths,
            reference="fp32",
            threads=self.threads,
            provider=self.provider,
            data_path=self.shape_data,
            runs=runs,
            min_rounds=3,
            max_rounds=3,
            timeout_s=self.step_timeout_s,
            memory_mb=self.memory_mb,
        )

    def _metrics(self, cand: dict, t: dict, base: dict, old: dict | None = None) -> dict:
        from compression.engine.passes._util import file_size, gzip_size

        size = file_size(cand["path"])
        base_p50 = base["p50_ms"] if base is not t else t["p50_ms"]
        ratio = 1.0 if base is t else t["ratio"]
        p50 = round(base_p50 * ratio, 4)
        m = dict(old or {})
        m.update(
            {
                "size_bytes": size,
                "size_mb": round(size / 1e6, 4),
                "gzip_bytes": gzip_size(cand["path"]),
                "p50_ms": p50,
                "p95_ms": round(p50 * t["p95_ms"] / t["p50_ms"], 4) if t.get("p50_ms") else p50,
                "p50_ratio": ratio,
                "p50_ratio_iqr": [t.get("ratio_low", ratio), t.get("ratio_high", ratio)],
                "throughput_ips": {"1": round(1000 / p50, 3) if p50 else None},
                "peak_rss_mb": t.get("rss_mb"),
                "load_ms": t.get("load_ms"),
            }
        )
        m.setdefault("accuracy", None)
        m.setdefault("fidelity", None)
        fp32_size = base.get("size_bytes", size)
        m["size_ratio"] = round(size / fp32_size, 4) if fp32_size else 1.0
        m["throughput_ratio"] = round(1 / ratio, 4) if ratio else None
        return m

    def evaluate(self, cands: list[dict]) -> None:
        if not self.evaluation:
            return
        paths = {c["recipe"]: c["path"] for c in cands if c.get("path")}
        if not paths:
            return
        try:
            results = run_isolated(
                evaluate_many,
                paths,
                self.evaluation,
                str(self.input_path),
                self.threads,
                self.kinds,
                timeout_s=self.step_timeout_s,
                memory_mb=self.memory_mb,
            )
        except EngineError:
            if len(paths) == 1:
                raise
            for c in cands:  # one crashed the child: evaluate them alone
                try:
                    self.evaluate([c])
                except EngineError as exc:
                    c["error"] = f"{type(exc).__name__}: {exc}"
            return
        fp32 = self.candidates[0]["metrics"]
        for c in cands:
            res = results.get(c["recipe"])
            if res is None:
                continue
            if "error" in res:
                c["error"] = res["error"]
                continue
            acc, fid, metric = _quality(res["ok"])
            c["evaluated"] = True
            c["metrics"].update(
                {
                    "accuracy": acc,
                    "fidelity": fid,
                    "fidelity_metric": metric,
                    "outputs": {
                        k: {x: v.get(x) for x in ("kind", "metric", "fidelity", "cosine")}
                        for k, v in res["ok"].get("fidelity", {}).items()
                    },
                }
            )
            if acc is not None and fp32.get("accuracy") is not None:
                c["metrics"]["accuracy_drop_pt"] = round((fp32["accuracy"] - acc) * 100, 4)

    def verdicts(self) -> None:
        for c in self.candidates:
            if c.get("error"):
                c["violations"], c["meets_kpis"] = ["failed: " + c["error"]], False
                continue
            if not c.get("metrics"):
                c["violations"], c["meets_kpis"] = ["not measured"], False
                continue
            v = _violations(c["metrics"], self.kpis)
            if self.evaluation and not c.get("evaluated") and c["recipe"] != "fp32":
                v = [x for x in v if "unknown" not in x]
                v.append(c.get("skip_reason") or "not evaluated")
            c["violations"], c["meets_kpis"] = v, not v


def _default_plan(calibration: str | None, out_dir: Path) -> list[dict]:
    """The default recipes (mixed precision runs as a refinement) plus the quantizer grid."""
    cache = str(out_dir)
    plan = []
    for r in SEARCH_RECIPES:
        if r == "mixed-precision":
            continue
        entry = {"name": r, "recipe": r}
        if r == "int8-static" and calibration:
            entry["overrides"] = {"calibration_cache": f"{cache}/calibration-minmax.json"}
        plan.append(entry)
    if calibration:
        plan += search_grid.quantizer_grid(cache)
        if nncf_quantize.available():  # the second PTQ backend, where its extra is installed
            plan.append({"name": "int8-nncf", "recipe": "int8-nncf"})
    return plan


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
) -> dict:
    """Search against ``kpis``; see the module docstring.

    ``recipes`` None searches the default recipes plus the quantizer grid and
    the refinements; an explicit list is searched as given. Without
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
        else _default_plan(calibration, out_dir)
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
    s = _Search(
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
    s.step(0, "fp32: measure")
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
    stages: dict[str, float] = {}
    mark = time.monotonic()
    if recipes is None:
        # the default plan: every candidate built in one child, grid points from one prepare
        for spec in plan:
            spec["grid"] = spec["recipe"] == "int8-static"
        s.step(1 / total, f"building {len(plan)} candidates (one calibration for the grid)")
        s.build_batch(plan)
    else:
        for i, spec in enumerate(plan, start=1):
            if time.monotonic() - started > budget_s:
                skipped.append(spec["name"])
                continue
            s.step(i / total, f"{spec['name']}: compress")
            s.build(spec)
    stages["build"] = time.monotonic() - mark
    mark = time.monotonic()
    s.step((len(plan) + 1) / total, "timing every candidate against fp32")
    s.time(s.candidates)
    stages["time"] = time.monotonic() - mark
    mark = time.monotonic()
    if s.candidates[0].get("metrics") is None:
        raise EngineError("the original model could not be timed")
    s.step((len(plan) + 2) / total, "evaluating what can win")
    _evaluate_what_can_win(s)
    stages["evaluate"] = time.monotonic() - mark
    mark = time.monotonic()
    if recipes is None and calibration and time.monotonic() - started <= budget_s:
        _refine(s, total, plan)
    stages["refine"] = time.monotonic() - mark
    mark = time.monotonic()
    s.verdicts()
    _remeasure_finalists(s, (len(plan) + 3) / total)
    s.verdicts()
    stages["remeasure"] = time.monotonic() - mark
    front = _pareto(s.candidates)
    chosen, reason = _choose(s.candidates)
    if chosen is not None and chosen not in front:
        front.append(chosen)  # within the noise of a dominating point: the front keeps the choice
    for c in s.candidates:
        c["pareto"] = c["recipe"] in front
    best = next((c["metrics"]["p50_ratio"] for c in s.candidates if c["recipe"] == chosen), None)
    for c in s.candidates:
        c["verdict"] = _verdict(c, chosen, best)
    if chosen in (None, "fp32"):
        why = "; ".join(
            f"{c['recipe']}: {c['verdict']}" for c in s.candidates if c["recipe"] != "fp32"
        )
        reason += f" Why no variant beats fp32: {why}."
    if default_floor is not None:
        reason += (
            f" No fidelity or accuracy KPI was set: the default quality floor "
            f"(fidelity >= {default_floor}) applied."
        )
    if generated:
        reason += " Latency-only mode: inputs were generated, fidelity is unknown."
    if skipped:
        reason += f" Budget of {budget_s:g} s reached; not tried: {', '.join(skipped)}."
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
        "skipped": skipped,
        "seconds": round(time.monotonic() - started, 2),
        "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    if progress is not None:
        progress(1.0, "done")
    return report


def _evaluate_what_can_win(s: _Search) -> None:
    """Evaluate fp32 and the candidates in order of speed, skipping those that cannot win."""
    fp32 = s.candidates[0]
    timed = sorted(
        (c for c in s.candidates[1:] if c.get("metrics")), key=lambda c: c["metrics"]["p50_ratio"]
    )
    if not s.evaluation:
        return
    s.evaluate([fp32])
    fp32["evaluated"] = True
    winners: list[dict] = []
    batch: list[dict] = []

    def flush():
        s.evaluate(batch)
        for c in batch:
            if c.get("evaluated") and not _violations(c["metrics"], s.kpis):
                winners.append(c)
        batch.clear()

    for c in timed:
        timing_misses = [v for v in _violations(c["metrics"], s.kpis) if "unknown" not in v]
        if timing_misses:
            c["skip_reason"] = "not evaluated: misses a latency/size KPI already"
            continue
        beaten = next(
            (
                w
                for w in winners
                if w["metrics"]["p50_ratio"] * _SKIP_MARGIN < c["metrics"]["p50_ratio"]
                and w["metrics"]["size_bytes"] <= c["metrics"]["size_bytes"]
            ),
            None,
        )
        if beaten is not None:
            c["skip_reason"] = (
                f"not evaluated: cannot win (slower and not smaller than "
                f"{beaten['recipe']}, which meets every KPI)"
            )
            continue
        if c["metrics"]["p50_ratio"] > 1.0 and c["metrics"]["size_ratio"] >= 1.0:
            c["skip_reason"] = "not evaluated: neither faster nor smaller than fp32"
            continue
        batch.append(c)
        if len(batch) >= 3:
            flush()
    flush()


def _refine(s: _Search, total: int, plan: list[dict]) -> None:
    """Mixed precision on the fastest int8 point that misses the quality floor only."""
    int8 = [
        c
        for c in s.candidates
        if c.get("evaluated")
        and c["base_recipe"] in ("int8-static",)
        and c["metrics"]["p50_ratio"] < 1.0
    ]
    if not int8:
        return
    ok = [c for c in int8 if not _violations(c["metrics"], s.kpis)]
    fastest = min(int8, key=lambda c: c["metrics"]["p50_ratio"])
    if ok and min(ok, key=lambda c: c["metrics"]["p50_ratio"]) is fastest:
        return  # the fastest int8 point already meets every KPI
    overrides = {k: v for k, v in fastest["overrides"].items() if k not in ("calibration_cache",)}
    name = "mixed-precision" + (search_grid.suffix(overrides) if overrides else "")
    s.step((len(plan) + 2.5) / total, f"{name}: sensitivity-guided exclusion")
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


def _remeasure_finalists(s: _Search, fraction: float) -> None:
    meeting = [c for c in s.candidates[1:] if c.get("meets_kpis")]
    if not meeting:
        return
    best = min(c["metrics"]["p50_ratio"] for c in meeting)
    finalists = sorted(
        (c for c in meeting if c["metrics"]["p50_ratio"] <= best * _FINALIST_BAND),
        key=lambda c: c["metrics"]["p50_ratio"],
    )[:_MAX_FINALISTS]
    s.step(fraction, "re-measuring the finalists")
    s.time(finalists, contenders=True)
    for c in finalists:
        c["remeasured"] = True
