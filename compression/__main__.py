"""``python -m compression``: the engine's command line (no Django involved).

    inspect MODEL.onnx
    optimize IN.onnx -o OUT.onnx --recipe NAME [--calibration CAL.npz] [--set key=value ...]
    benchmark MODEL.onnx [--threads N] [--runs N] [--batch N]
    evaluate MODEL.onnx --data DATA.npz [--reference REF.onnx]
    auto IN.onnx --calibration CAL.npz --eval EVAL.npz [--max-latency-ms X] ... --out DIR
    auto IN.onnx --latency-only --out DIR      (no data yet: generated inputs)

``--json`` prints JSON; errors exit 2 with one line (``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _need_file(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    return path


def _table(rows: list[list], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_inspect(args) -> dict:
    from compression.engine import inspect_model

    info = inspect_model(_need_file(args.model, "model"))
    if not args.json:
        print(
            f"ir_version {info['ir_version']}  opsets {info['opsets']}  "
            f"producer {info['producer'] or '-'}"
        )
        for kind in ("inputs", "outputs"):
            for v in info[kind]:
                print(f"{kind[:-1]:7} {v['name']}: {v['dtype']} {v['shape']}")
        print(
            f"parameters {info['parameters']:,}  FLOPs (batch 1) {info['flops']:,}  "
            f"size {info['size_bytes']:,} bytes"
        )
        print("ops: " + ", ".join(f"{k}×{v}" for k, v in info["op_histogram"].items()))
    return info


def cmd_optimize(args) -> dict:
    from compression.engine.recipes import run_recipe

    result = run_recipe(
        args.recipe,
        _need_file(args.model, "model"),
        args.output,
        calibration_path=args.calibration,
        overrides=_parse_sets(args.set),
        train_path=args.train and _need_file(args.train, "training data"),
        eval_path=args.eval and _need_file(args.eval, "evaluation data"),
    )
    out = result.to_dict()
    if not args.json:
        for s in result.steps:
            metrics = ", ".join(
                f"{k}={v}" for k, v in s["metrics"].items() if not isinstance(v, list | dict)
            )
            print(f"{s['pass']}: {metrics}")
            for note in s["notes"]:
                print(f"  - {note}")
            for row in s["metrics"].get("history") or []:
                if row["epoch"]:
                    metric = s["metrics"]["metric"]
                    print(
                        f"  epoch {row['epoch']}: loss {row['loss']:.4f}  "
                        f"{metric} {row[metric]:.4f}"
                    )
        print(f"wrote {result.output_path} in {result.seconds:.1f} s")
    return out


def cmd_benchmark(args) -> dict:
    from compression.engine.benchmark import benchmark

    batches = tuple(sorted({1, args.batch})) if args.batch else (1,)
    r = benchmark(
        _need_file(args.model, "model"),
        threads=args.threads,
        runs=args.runs,
        warmup=args.warmup,
        batch_sizes=batches,
        provider=args.provider,
    )
    if not args.json:
        lat = r["latency_ms"]
        print(
            f"latency ms (batch {lat['batch']}, {lat['runs']} runs): p50 {lat['p50']:.3f}  "
            f"p90 {lat['p90']:.3f}  p95 {lat['p95']:.3f}  p99 {lat['p99']:.3f}  "
            f"mean {lat['mean']:.3f}"
        )
        print(
            "throughput: "
            + ", ".join(f"batch {b}: {v:.1f}/s" for b, v in r["throughput_ips"].items())
        )
        print(
            f"load {r['load_ms']:.1f} ms  peak RSS {r['peak_rss_mb']:.1f} MB  size "
            f"{r['size_bytes']:,} B (gzip {r['gzip_bytes']:,} B)  threads {r['threads']}"
        )
        h = r["host"]
        print(f"host: {h['cpu_model']} ({h['cores']} cores) ISA {' '.join(h['isa'])}")
    return r


def cmd_evaluate(args) -> dict:
    from compression.engine.evaluate import evaluate

    r = evaluate(
        _need_file(args.model, "model"),
        _need_file(args.data, "dataset"),
        reference_path=args.reference and _need_file(args.reference, "reference"),
    )
    if not args.json:
        print(f"samples {r['samples']}")
        if "accuracy" in r:
            a = r["accuracy"]
            print(
                f"accuracy ({a['output']}): top1 {a['top1']:.4f}"
                + (f"  top5 {a['top5']:.4f}" if "top5" in a else "")
            )
        for name, f in r.get("fidelity", {}).items():
            print(f"fidelity {name}: " + "  ".join(f"{k} {v}" for k, v in f.items()))
    return r


def cmd_auto(args) -> dict:
    from compression.engine.search import auto

    kpis = {
        "max_latency_ms": args.max_latency_ms,
        "max_accuracy_drop": args.max_accuracy_drop,
        "min_fidelity": args.min_fidelity,
        "max_size_mb": args.max_size_mb,
        "provider": args.provider,
    }

    def progress(fraction: float, step: str) -> None:
        if not args.json:
            print(f"[{fraction * 100:5.1f}%] {step}", file=sys.stderr)

    if args.eval is None and not args.latency_only:
        raise ValueError(
            "give --eval DATA.npz, or --latency-only to time generated inputs "
            "(fidelity is then unknown)"
        )
    kinds = _parse_sets(args.output_kind)
    # relative paths are the caller's: the sandboxed children run in their own directories
    r = auto(
        Path(_need_file(args.model, "model")).resolve(),
        calibration_path=args.calibration
        and Path(_need_file(args.calibration, "calibration dataset")).resolve(),
        evaluation_path=args.eval and Path(_need_file(args.eval, "evaluation dataset")).resolve(),
        kpis=kpis,
        threads=args.threads,
        budget_s=args.budget_s,
        out_dir=Path(args.out).resolve(),
        progress=progress,
        output_kinds=kinds or None,
        thorough=args.thorough,
    )
    if not args.json:
        rows = []
        for c in r["candidates"]:
            m = c["metrics"] or {}
            rows.append(
                [
                    c["recipe"],
                    m.get("p50_ms"),
                    m.get("p50_ratio"),
                    m.get("size_ratio"),
                    m.get("accuracy"),
                    m.get("fidelity"),
                    m.get("fidelity_metric"),
                    "yes" if c["meets_kpis"] else c["verdict"][:60],
                    "*" if c["pareto"] else "",
                ]
            )
        print(
            _table(
                rows,
                [
                    "recipe",
                    "p50 ms",
                    "p50 x",
                    "size x",
                    "accuracy",
                    "fidelity",
                    "metric",
                    "meets KPIs",
                    "pareto",
                ],
            )
        )
        print(
            f"measured on: {r['measurement'].get('shape')} "
            f"({r['measurement'].get('shape_source')}), interleaved with fp32"
        )
        print(f"chosen: {r['chosen']}  {r['reason']}")
        print(f"report: {Path(args.out) / 'report.json'}")
    return r


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="python -m compression", parents=[common], description="EdgeFleet compression engine"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", parents=[common], help="IO, opsets, params, ops, FLOPs")
    p.add_argument("model")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("optimize", parents=[common], help="apply a recipe")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--recipe", required=True, help="a pass or a chain (a+b+c)")
    p.add_argument("--calibration")
    p.add_argument(
        "--train",
        help="training .npz for distill/qat/pruning recovery (default: the calibration data)",
    )
    p.add_argument("--eval", help="early-stopping .npz for training recipes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_optimize)
    p = sub.add_parser("benchmark", parents=[common], help="latency, throughput, memory")
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="also measure this batch size")
    p.add_argument("--provider", default="CPUExecutionProvider", help="execution provider")
    p.set_defaults(func=cmd_benchmark)
    p = sub.add_parser("evaluate", parents=[common], help="accuracy and fidelity")
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--reference")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("auto", parents=[common], help="search recipes against KPIs")
    p.add_argument("model")
    p.add_argument("--calibration", help="calibration .npz (int8 recipes need it)")
    p.add_argument("--eval", help="evaluation .npz (fidelity/accuracy; latency shapes)")
    p.add_argument(
        "--latency-only",
        action="store_true",
        help="no data yet: time generated inputs; fidelity is reported as unknown",
    )
    p.add_argument(
        "--output-kind",
        action="append",
        default=[],
        metavar="OUTPUT=KIND",
        help="override how an output is scored: classes, sequence, indices, boxes, "
        "regression, embedding",
    )
    p.add_argument("--max-latency-ms", type=float)
    p.add_argument("--max-accuracy-drop", type=float, help="percentage points")
    p.add_argument("--min-fidelity", type=float, help="top-1 agreement (or cosine), 0..1")
    p.add_argument("--max-size-mb", type=float)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=600)
    p.add_argument(
        "--thorough",
        action="store_true",
        help="also search the recipes that take minutes (qat, pruning with "
        "recovery fine-tuning, NNCF where installed)",
    )
    p.add_argument("--provider", default="CPUExecutionProvider", help="execution provider")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_auto)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # the CLI's contract: one clear line, the traceback only on request
        if args.debug:
            raise
        from google.protobuf.message import DecodeError

        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, DecodeError):
            msg = f"the file is not a valid ONNX model ({msg})"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
