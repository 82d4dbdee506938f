"""Post-install health check: can this device run the model? (docs/reliability.md U9)

Open an onnxruntime session, run warm-up inferences on generated input that
matches the declared inputs, and require every output to be finite and of the
declared rank. The updater runs it in a child process
(`python -m devices.agent.health [--memory-mb N] MODEL...`) with a timeout and
an address-space limit (RLIMIT_AS, set by the child before onnxruntime loads;
RLIMIT_CPU too), so a model that crashes, hangs or allocates without bound at
inference time (a ConstantOfShape bomb) only takes the child down and fails
the check: the old model stays.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # before onnxruntime loads (N1)

DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def sample_inputs(session, rng=None, dim_default: int = 1, *, strict: bool = False):
    """Random input for every declared input: symbolic dimensions become 1, floats
    standard normal, integers 0-9. An input of a type not in DTYPES gets float32, or
    with `strict` the answer is None (the server's upload check feeds the same input:
    what passes there is what a device runs first)."""
    import numpy as np

    rng = rng or np.random.default_rng(0)
    feeds = {}
    for item in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else dim_default for d in item.shape or []]
        dtype = DTYPES.get(item.type)
        if dtype is None:
            if strict:
                return None
            dtype = "float32"
        if dtype.startswith("float"):
            feeds[item.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            feeds[item.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[item.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def open_session(path: str, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def check_outputs(session, outputs) -> str | None:
    import numpy as np

    for meta, value in zip(session.get_outputs(), outputs, strict=False):
        array = np.asarray(value)
        if isinstance(meta.shape, list | tuple) and meta.shape and array.ndim != len(meta.shape):
            return f"output {meta.name} has rank {array.ndim}, declared {len(meta.shape)}"
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            return f"output {meta.name} is not finite"
    return None


def check_model(path: str, runs: int = 3) -> str | None:
    """None when healthy, else the reason."""
    try:
        session = open_session(path)
        feeds = sample_inputs(session)
        for _ in range(runs):
            problem = check_outputs(session, session.run(None, feeds))
            if problem:
                return problem
    except Exception as exc:  # any failure of onnxruntime is the answer we report
        return f"{type(exc).__name__}: {exc}"[:500]
    return None


def default_memory_mb() -> int:
    """Half the device's RAM, at least 512 MB: room for onnxruntime and a real model."""
    try:
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return 1024
    return max(512, int(ram_mb) // 2)


def run_health_check(
    paths: list[str], *, timeout_s: float = 120.0, memory_mb: int | None = None
) -> str | None:
    """Check models in a child process; None when all are healthy."""
    memory_mb = int(memory_mb or default_memory_mb())
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                f"{__package__}.health",
                "--memory-mb",
                str(memory_mb),
                "--cpu-s",
                str(int(timeout_s) + 1),
                *paths,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"health check timed out after {timeout_s:.0f} s"
    if proc.returncode == 0:
        return None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    except (IndexError, KeyError, ValueError):
        return f"health check exited with {proc.returncode}: {proc.stderr.strip()[-300:]}"


def limit_resources(memory_mb: int | None, cpu_s: int | None) -> None:
    if memory_mb:
        limit = int(memory_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_s:
        resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_s), int(cpu_s) + 1))


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    limits = {}
    while args and args[0] in ("--memory-mb", "--cpu-s") and len(args) > 1:
        limits[args[0]] = int(args[1])
        args = args[2:]
    # The libraries first: the limit is about what the model allocates.
    import numpy.random  # noqa: F401
    import onnxruntime  # noqa: F401

    limit_resources(limits.get("--memory-mb"), limits.get("--cpu-s"))
    for path in args:
        problem = check_model(path)
        if problem:
            print(json.dumps({"error": f"{Path(path).name}: {problem}"}))
            return 1
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
