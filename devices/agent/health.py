"""Post-install health check: can this device run the model? (RELIABILITY U9)

Open an onnxruntime session, run warm-up inferences on generated input that
matches the declared inputs, and require every output to be finite and of the
declared rank. The updater runs it in a child process
(`python -m devices.agent.health MODEL...`) with a timeout, so a model that
crashes or hangs onnxruntime only takes the child down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # before onnxruntime loads (N1)

DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


def sample_inputs(session, rng=None, dim_default: int = 1) -> dict:
    """Random input for every declared input; symbolic dimensions become 1."""
    import numpy as np

    rng = rng or np.random.default_rng(0)
    feeds = {}
    for item in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else dim_default for d in item.shape]
        dtype = DTYPES.get(item.type, "float32")
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
    return ort.InferenceSession(path, sess_options=options,
                                providers=["CPUExecutionProvider"])


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


def run_health_check(paths: list[str], *, timeout_s: float = 120.0) -> str | None:
    """Check models in a child process; None when all are healthy."""
    try:
        proc = subprocess.run([sys.executable, "-m", "devices.agent.health", *paths],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"health check timed out after {timeout_s:.0f} s"
    if proc.returncode == 0:
        return None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    except (IndexError, KeyError, ValueError):
        return f"health check exited with {proc.returncode}: {proc.stderr.strip()[-300:]}"


def main(argv: list[str] | None = None) -> int:
    for path in argv if argv is not None else sys.argv[1:]:
        problem = check_model(path)
        if problem:
            print(json.dumps({"error": f"{Path(path).name}: {problem}"}))
            return 1
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
