"""The candidates of one search and the measurements on them (build, time, evaluate).

Every step runs in a sandboxed child (``run_isolated``); a child that crashes
is retried one candidate at a time, so one bad variant never takes the others
down. Timing is always interleaved with fp32 in one process
(``benchmark.compare``): the metrics keep the ratio to fp32, and milliseconds
are that ratio times fp32's p50 of the same run.
"""

from __future__ import annotations

from pathlib import Path

from compression.engine.errors import Cancelled, EngineError
from compression.engine.sandbox import run_isolated
from compression.engine.search import grid as search_grid
from compression.engine.search import texts as T
from compression.engine.search.children import build_many, compress_to_json, evaluate_many
from compression.engine.search.decide import quality, violations

# models per timing process: at most this many, and model files of at most 1/16 of the
# child's memory limit together (MobileNetV2's 14 candidates, 96 MB, are one process)
_CHUNK = 16
_CHUNK_MEMORY_SHARE = 16
# in a first timing, a candidate this many times slower than fp32 gets no more rounds:
# it cannot win on latency, and were it the only one meeting the KPIs, it would be
# re-measured as a finalist
DROP_SLOWER_THAN = 1.5


class Search:
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

    def build_batch(self, specs: list[dict]) -> list[dict]:
        """``build`` for many candidates in one child (falls back to one by one); returns
        the new candidates."""
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
            return [self.build(spec) for spec in specs]
        new = []
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
            new.append(cand)
        return new

    def time(self, cands: list[dict], *, contenders: bool = False) -> None:
        """Interleaved timing against fp32; writes p50 ratio and friends into each metrics."""
        fp32 = self.candidates[0]
        todo = [c for c in cands if c.get("path") and c is not fp32]
        chunks = self._chunks(todo, fp32) or [[]]
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
                rounds = r["models"][c["recipe"]].get("rounds", r["rounds"])
                c["timing"] = {"rounds": rounds, "stable": r["stable"]}
            # which shape the ratios were measured on travels with every variant's metrics
            shape = ", ".join(f"{k} {v}" for k, v in r["input_shapes"].items())
            for c in (fp32, *chunk):
                c["metrics"]["timed_on"] = f"{shape} ({r['shape_source']})"

    def _chunks(self, todo: list[dict], fp32: dict) -> list[list[dict]]:
        """Candidates in groups, one timing process each (fp32 joins every group)."""
        from compression.engine.passes._util import file_size

        budget = (self.memory_mb or 4096) * 2**20 / _CHUNK_MEMORY_SHARE - file_size(fp32["path"])
        chunks: list[list[dict]] = []
        used = 0.0
        for c in todo:
            size = file_size(c["path"])
            if not chunks or len(chunks[-1]) >= _CHUNK or (used + size > budget and chunks[-1]):
                chunks.append([])
                used = 0.0
            chunks[-1].append(c)
            used += size
        return chunks

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
                # the leader is checked from round 3 on: stable after 5 rounds at the
                # earliest, more only while the fastest still changes
                min_rounds=3,
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
            drop_slower_than=DROP_SLOWER_THAN,
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
        # a variant's evaluation stops once it can no longer reach the quality KPIs
        bounds = {k: self.kpis[k] for k in ("min_fidelity", "max_accuracy_drop") if k in self.kpis}
        try:
            results = run_isolated(
                evaluate_many,
                paths,
                self.evaluation,
                str(self.input_path),
                self.threads,
                self.kinds,
                bounds or None,
                str(self.out_dir / "reference-outputs.npz"),
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
            acc, fid, metric = quality(res["ok"])
            c["evaluated"] = True
            if res["ok"].get("stopped"):  # the figures are the best it could still reach
                c["metrics"]["evaluation_stopped"] = res["ok"]["stopped"]
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
                c["violations"], c["meets_kpis"] = [T.FAILED % {"error": c["error"]}], False
                continue
            if not c.get("metrics"):
                c["violations"], c["meets_kpis"] = [T.NOT_MEASURED], False
                continue
            v = violations(c["metrics"], self.kpis)
            stopped = c["metrics"].get("evaluation_stopped")
            if stopped and v:
                v.append(
                    T.EVALUATION_STOPPED % {"samples": stopped["samples"], "total": stopped["of"]}
                )
            if self.evaluation and not c.get("evaluated") and c["recipe"] != "fp32":
                v = [x for x in v if "unknown" not in x]
                v.append(c.get("skip_reason") or T.NOT_EVALUATED)
            c["violations"], c["meets_kpis"] = v, not v
