"""Latency, throughput and memory of one model, measured in an isolated process.

Each model runs in its own fresh subprocess (``run_isolated``): a crash or a
memory blow-up cannot take the caller down, and peak RSS is the model's own,
not the accumulated high-water mark of earlier models. Every result records the
host (CPU model, cores, ISA flags) because int8/fp16 speed depends on them.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from compression.engine.errors import EngineError
from compression.engine.passes._util import file_size, gzip_size
from compression.engine.sandbox import run_isolated

# ISA features that decide which kernels onnxruntime can use
_ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "asimddp",
    "fphp",
    "asimdhp",
    "sve",
    "i8mm",
    "bf16",
)


@functools.lru_cache(maxsize=1)
def host_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model in ("unknown", "", "x86_64"):
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:
        ort_version = None
    return {
        "cpu_model": model,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "isa": sorted(f for f in _ISA_FLAGS if f in flags),
        "onnxruntime": ort_version,
        "python": platform.python_version(),
    }


def _feeds(sess, batch: int, dim_values: dict[str, int]) -> dict:
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in sess.get_inputs():
        shape = []
        for axis, d in enumerate(inp.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif axis == 0:
                shape.append(batch)
            else:
                shape.append(int(dim_values.get(str(d), 1)))
        kind = inp.type
        if "float16" in kind:
            feeds[inp.name] = rng.normal(0, 1, shape).astype(np.float16)
        elif "float" in kind or "double" in kind:
            dtype = np.float64 if "double" in kind else np.float32
            feeds[inp.name] = rng.normal(0, 1, shape).astype(dtype)
        elif "bool" in kind:
            feeds[inp.name] = np.zeros(shape, dtype=bool)
        else:
            # token ids and similar: zeros are always in range
            feeds[inp.name] = np.zeros(shape, dtype=np.int64 if "int64" in kind else np.int32)
    return feeds


def _dynamic_batch(sess) -> bool:
    return all(
        not (isinstance(i.shape[0], int) and i.shape[0] > 0) for i in sess.get_inputs() if i.shape
    )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _session(model_path: str, threads: int, provider: str):
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        # onnxruntime would silently fall back to CPU and the numbers would lie
        raise EngineError(
            f"Execution provider {provider!r} is not available here; "
            f"available: {', '.join(available)}."
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(model_path, sess_options=opts, providers=[provider])


def data_feeds(model_path: str, data_path: str | None, batch: int) -> dict | None:
    """The first ``batch`` samples of the dataset (the model's own batch if it fixes one)."""
    if not data_path:
        return None
    from compression.engine.datasets import load_dataset

    dataset = load_dataset(data_path, model_path, max_samples=max(batch, 1))
    return next(dataset.batches(batch), None)


def _shapes(feeds: dict) -> dict[str, list[int]]:
    return {k: list(np.shape(v)) for k, v in feeds.items()}


def measure(
    model_path: str,
    threads: int,
    runs: int,
    warmup: int,
    batch_sizes: list[int],
    provider: str,
    extra_batch: int | None,
    dim_values: dict,
    data_path: str | None = None,
) -> dict:
    """The part that runs inside the sandbox child."""
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    sess = _session(model_path, threads, provider)
    load_ms = (time.perf_counter() - started) * 1000
    dynamic = _dynamic_batch(sess)
    sizes = list(dict.fromkeys(batch_sizes if dynamic else [1]))
    if dynamic and extra_batch and sizes == [1]:
        sizes.append(extra_batch)
    latency: dict = {}
    throughput: dict = {}
    shapes: dict = {}
    for b in sizes:
        feeds = data_feeds(model_path, data_path, b) if data_path else None
        if feeds is None or (b > 1 and len(next(iter(feeds.values()), [])) != b):
            if data_path and b > 1:
                continue  # not enough samples (or a scalar per sample) for this batch
            feeds = _feeds(sess, b, dim_values)
        if b == sizes[0]:
            shapes = _shapes(feeds)
        for _ in range(warmup):
            sess.run(None, feeds)
        n = runs if b == 1 else max(5, runs // b)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - t0) * 1000)
        throughput[str(b)] = round(b * n / (sum(times) / 1000), 3)
        if b == sizes[0]:
            latency = {
                "batch": b,
                "p50": round(_percentile(times, 50), 4),
                "p90": round(_percentile(times, 90), 4),
                "p95": round(_percentile(times, 95), 4),
                "p99": round(_percentile(times, 99), 4),
                "mean": round(statistics.fmean(times), 4),
                "min": round(min(times), 4),
                "runs": n,
            }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "input_shapes": shapes,
        "shape_source": "data" if data_path else "synthetic",
        "load_ms": round(load_ms, 3),
        "latency_ms": latency,
        "throughput_ips": throughput,
        "peak_rss_mb": round(peak, 2),
        "baseline_rss_mb": round(rss_base, 2),
        "dynamic_batch": dynamic,
        "providers": sess.get_providers(),
    }


def benchmark(
    model_path: str | Path,
    *,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    batch_sizes: tuple[int, ...] = (1,),
    provider: str = "CPUExecutionProvider",
    timeout_s: float = 300,
    memory_mb: int | None = 4096,
    extra_batch: int | None = 8,
    dim_values: dict[str, int] | None = None,
    data_path: str | Path | None = None,
) -> dict:
    """Measure ``model_path`` in a fresh subprocess; see module docstring.

    With ``data_path`` latency is measured on the dataset's own samples (their
    shapes, which dynamic dims such as an image width decide); without it on
    synthetic inputs whose dynamic dims come from ``dim_values`` (default 1).
    ``input_shapes`` / ``shape_source`` in the result say which. When the
    batch axis is dynamic and only batch 1 is asked for, throughput is also
    measured at ``extra_batch`` (set it to None to skip).
    """
    model_path = str(Path(model_path).resolve())  # the child runs in its own directory
    data = str(Path(data_path).resolve()) if data_path else None
    result = run_isolated(
        measure,
        model_path,
        threads,
        runs,
        warmup,
        list(batch_sizes),
        provider,
        extra_batch,
        dict(dim_values or {}),
        data,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        cpu_s=int(timeout_s * max(1, threads)) + 5,
        env={"OMP_NUM_THREADS": str(threads)},
    )
    result.update(
        {
            "threads": threads,
            "provider": provider,
            "size_bytes": file_size(model_path),
            "gzip_bytes": gzip_size(model_path),
            "host": host_info(),
        }
    )
    return result


def _median(values: list[float]) -> float:
    return float(np.median(np.asarray(values))) if values else float("nan")


def _ratios(rounds: dict[str, list[float]], label: str, reference: str) -> list[float]:
    """Per round, ``label``'s median over the reference's in the same round."""
    return [a / b for a, b in zip(rounds[label], rounds[reference], strict=False)]


def interleaved(
    paths: dict[str, str],
    reference: str,
    threads: int,
    provider: str,
    data_path: str | None,
    runs: int,
    warmup: int,
    min_rounds: int,
    max_rounds: int,
    contenders: list[str] | None,
    dim_values: dict,
    drop_slower_than: float | None = None,
) -> dict:
    """The sandbox child of ``compare``: every model in one process, timed in turns."""
    import psutil

    proc = psutil.Process()
    sessions, feeds, rss, load_ms = {}, None, {}, {}
    for label, path in paths.items():
        before = proc.memory_info().rss
        t0 = time.perf_counter()
        sessions[label] = _session(path, threads, provider)
        load_ms[label] = round((time.perf_counter() - t0) * 1000, 3)
        if feeds is None:
            feeds = data_feeds(path, data_path, 1) or _feeds(sessions[label], 1, dim_values)
        for _ in range(warmup):
            sessions[label].run(None, feeds)
        rss[label] = round((proc.memory_info().rss - before) / 2**20, 2)
    labels = list(paths)
    rounds: dict[str, list[float]] = {k: [] for k in labels}
    every: dict[str, list[float]] = {k: [] for k in labels}
    leaders: list[str] = []
    stable = False
    dropped: set[str] = set()
    for r in range(max_rounds):
        # rotate the order: no model always runs first (cold caches) or right after another
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            if label in dropped:
                continue
            sess, times = sessions[label], []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                times.append((time.perf_counter() - t0) * 1000)
            rounds[label].append(_median(times))
            every[label].extend(times)
        if contenders and r + 1 >= min_rounds:
            ratio = {
                k: _median([a / b for a, b in zip(rounds[k], rounds[reference], strict=True)])
                for k in contenders
            }
            leaders.append(min(ratio, key=ratio.get))
            if len(leaders) >= 3 and len(set(leaders[-3:])) == 1:
                stable = True
                break
        elif not contenders and r + 1 >= min_rounds:
            break
        if drop_slower_than and not contenders:
            # far slower than the reference over its rounds so far: known well enough to
            # rule it out; more rounds of it would only cost time
            dropped |= {
                k
                for k in labels
                if k != reference and _median(_ratios(rounds, k, reference)) > drop_slower_than
            }
    out = {}
    for label in labels:
        ratios = _ratios(rounds, label, reference)
        out[label] = {
            "p50_ms": round(_median(rounds[label]), 4),
            "p95_ms": round(_percentile(every[label], 95), 4),
            "ratio": round(_median(ratios), 4),
            "ratio_low": round(float(np.percentile(ratios, 25)), 4),
            "ratio_high": round(float(np.percentile(ratios, 75)), 4),
            "load_ms": load_ms[label],
            "rss_mb": rss[label],
            "rounds": len(ratios),
        }
    return {
        "models": out,
        "rounds": len(rounds[reference]),
        "runs_per_round": runs,
        "stable": stable if contenders else None,
        "leaders": leaders,
        "input_shapes": _shapes(feeds),
        "shape_source": "data" if data_path else "synthetic",
    }


def compare(
    paths: dict[str, str | Path],
    *,
    reference: str,
    threads: int = 1,
    provider: str = "CPUExecutionProvider",
    data_path: str | Path | None = None,
    runs: int = 10,
    warmup: int = 3,
    min_rounds: int = 5,
    max_rounds: int = 5,
    contenders: list[str] | None = None,
    dim_values: dict[str, int] | None = None,
    timeout_s: float = 600,
    memory_mb: int | None = 4096,
    drop_slower_than: float | None = None,
) -> dict:
    """Time ``paths`` interleaved with ``reference`` in one process; decide on ratios.

    Each round runs every model ``runs`` times in a rotating order and keeps its
    median; a model's ``ratio`` is the median over rounds of its round median
    divided by the reference's in the same round. Load drifts over seconds, so
    the ratio of neighbours is far steadier than absolute milliseconds measured
    apart. With ``contenders``, rounds go on (up to ``max_rounds``) until the
    fastest contender has stayed the same for three rounds (``stable``). Without
    contenders, ``drop_slower_than`` stops timing a model after the first round in
    which it ran more than that many times slower than the reference (its ``rounds``
    say how many it got).
    """
    resolved = {k: str(Path(v).resolve()) for k, v in paths.items()}
    data = str(Path(data_path).resolve()) if data_path else None
    return run_isolated(
        interleaved,
        resolved,
        reference,
        threads,
        provider,
        data,
        runs,
        warmup,
        min_rounds,
        max_rounds,
        contenders,
        dict(dim_values or {}),
        drop_slower_than,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        cpu_s=int(timeout_s * max(1, threads)) + 5,
        env={"OMP_NUM_THREADS": str(threads)},
    )
