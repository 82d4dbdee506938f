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
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
              "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16", "neon", "asimd",
              "asimddp", "fphp", "asimdhp", "sve", "i8mm", "bf16")


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
    return all(not (isinstance(i.shape[0], int) and i.shape[0] > 0)
               for i in sess.get_inputs() if i.shape)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(model_path: str, threads: int, runs: int, warmup: int, batch_sizes: list[int],
            provider: str, extra_batch: int | None, dim_values: dict) -> dict:
    """The part that runs inside the sandbox child."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        # onnxruntime would silently fall back to CPU and the numbers would lie
        raise EngineError(f"Execution provider {provider!r} is not available here; "
                          f"available: {', '.join(available)}.")
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    started = time.perf_counter()
    sess = ort.InferenceSession(model_path, sess_options=opts, providers=[provider])
    load_ms = (time.perf_counter() - started) * 1000
    dynamic = _dynamic_batch(sess)
    sizes = list(dict.fromkeys(batch_sizes if dynamic else [1]))
    if dynamic and extra_batch and sizes == [1]:
        sizes.append(extra_batch)
    latency: dict = {}
    throughput: dict = {}
    for b in sizes:
        feeds = _feeds(sess, b, dim_values)
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
                "p50": round(_percentile(times, 50), 4), "p90": round(_percentile(times, 90), 4),
                "p95": round(_percentile(times, 95), 4), "p99": round(_percentile(times, 99), 4),
                "mean": round(statistics.fmean(times), 4), "min": round(min(times), 4),
                "runs": n,
            }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "load_ms": round(load_ms, 3),
        "latency_ms": latency,
        "throughput_ips": throughput,
        "peak_rss_mb": round(peak, 2),
        "baseline_rss_mb": round(rss_base, 2),
        "dynamic_batch": dynamic,
        "providers": sess.get_providers(),
    }


def benchmark(model_path: str | Path, *, threads: int = 1, runs: int = 50, warmup: int = 5,
              batch_sizes: tuple[int, ...] = (1,), provider: str = "CPUExecutionProvider",
              timeout_s: float = 300, memory_mb: int | None = 4096,
              extra_batch: int | None = 8, dim_values: dict[str, int] | None = None) -> dict:
    """Measure ``model_path`` in a fresh subprocess; see module docstring.

    When the batch axis is dynamic and only batch 1 is asked for, throughput is
    also measured at ``extra_batch`` (set it to None to skip).
    """
    model_path = str(Path(model_path).resolve())  # the child runs in its own directory
    result = run_isolated(
        measure, model_path, threads, runs, warmup, list(batch_sizes), provider, extra_batch,
        dict(dim_values or {}),
        timeout_s=timeout_s, memory_mb=memory_mb,
        cpu_s=int(timeout_s * max(1, threads)) + 5,
        env={"OMP_NUM_THREADS": str(threads)},
    )
    result.update({
        "threads": threads,
        "provider": provider,
        "size_bytes": file_size(model_path),
        "gzip_bytes": gzip_size(model_path),
        "host": host_info(),
    })
    return result
