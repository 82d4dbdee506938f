"""Run a function in a fresh, resource-limited Python process.

Why a process and not a thread: a hostile or simply huge model can segfault
onnxruntime or allocate without bound. Only a separate process with rlimits
and a time limit that stretches with the machine's load keeps the web server /
Celery worker alive (O4).

The function is named by ``"module:qualname"`` (or given as a module-level
callable); arguments and the return value travel as JSON. Engine errors
raised in the child are rebuilt in the parent with the same type.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compression.engine.errors import ERROR_TYPES, RemoteError, SandboxCrashed, SandboxTimeout

# The child bootstraps sys.path from the parent before importing anything, so
# that the engine (and test helpers) import the same way in both processes.
_BOOTSTRAP = (
    "import json, sys; p = json.load(open(sys.argv[1])); sys.path[:0] = p['sys_path']; "
    "from compression.engine._child import main; main(p, sys.argv[2])"
)


def qualname_of(func: Callable[..., Any] | str) -> str:
    if isinstance(func, str):
        if ":" not in func:
            raise ValueError(f"expected 'module:function', got {func!r}")
        return func
    if "<locals>" in func.__qualname__ or func.__module__ == "__main__":
        raise ValueError("run_isolated needs a module-level function importable by name")
    return f"{func.__module__}:{func.__qualname__}"


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (likely out of CPU time)" if name == "SIGXCPU" else ""
        if name == "SIGKILL":
            hint = " (killed, possibly out of memory)"
        return f"the isolated process was killed by {name}{hint}"
    return f"the isolated process exited with status {returncode}"


def run_isolated(
    func: Callable[..., Any] | str,
    *args: Any,
    timeout_s: float = 60,
    memory_mb: int | None = 2048,
    cpu_s: int | None = None,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    """Call ``func(*args, **kwargs)`` in a child process and return its JSON result.

    ``memory_mb`` caps the address space (RLIMIT_AS), ``cpu_s`` the CPU seconds
    (RLIMIT_CPU, default: the timeout rounded up), ``timeout_s`` the time the child
    may have the machine (wall time less its waits for a CPU: `_wait`).
    Raises ``SandboxTimeout`` when the child hangs, ``SandboxCrashed`` when it
    dies, and re-raises engine errors the child raised.
    """
    if cpu_s is None:
        cpu_s = int(timeout_s) + 1
    payload = {
        "func": qualname_of(func),
        "args": list(args),
        "kwargs": kwargs,
        "memory_mb": memory_mb,
        "cpu_s": cpu_s,
        # "" means the current directory; the child runs elsewhere, so make it absolute
        "sys_path": [p or str(Path.cwd()) for p in sys.path],
    }
    child_env = dict(os.environ)
    child_env["ORT_DISABLE_TELEMETRY"] = "1"
    # one thread unless told otherwise: the child must not oversubscribe the worker's core
    child_env.setdefault("OMP_NUM_THREADS", "1")
    if env:
        child_env.update(env)
    with tempfile.TemporaryDirectory(prefix="edgefleet-sandbox-") as tmp:
        payload_path = Path(tmp) / "payload.json"
        result_path = Path(tmp) / "result.json"
        payload_path.write_text(json.dumps(payload))
        stderr_path = Path(tmp) / "stderr"
        with open(stderr_path, "wb") as stderr_file:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(payload_path), str(result_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr_file,
                env=child_env,
                cwd=tmp,
                start_new_session=True,  # own process group: a timeout kills its children too
            )
        try:
            finished = _wait(proc, timeout_s)
        except BaseException:
            # interrupted (a task's soft time limit, Ctrl-C): take the child down with us
            _kill_group(proc)
            raise
        if not finished:
            _kill_group(proc)
            raise SandboxTimeout(
                f"the isolated process did not finish within {timeout_s:g} s and was killed"
            )
        stderr = stderr_path.read_bytes()
        if proc.returncode != 0 or not result_path.exists():
            tail = (stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
            detail = f": {tail[0][:300]}" if tail else ""
            raise SandboxCrashed(_describe_exit(proc.returncode) + detail)
        result = json.loads(result_path.read_text())
    if result.get("ok"):
        return result["value"]
    err = result["error"]
    cls = ERROR_TYPES.get(err["class"])
    if cls is None:
        raise RemoteError(err["class"], err["message"])
    raise cls(*err["args"])


# Whatever the load, a child is stopped after this many times its limit in wall time.
MAX_STRETCH = 10


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until the child exits (True) or has had `timeout_s` of the machine (False).

    The limit counts wall time minus the time the child sat runnable on a run queue
    waiting for a CPU (Linux schedstat): on a loaded machine it stretches with the
    load, so a slow but honest validation is not refused, while a child that sleeps
    or spins is stopped after `timeout_s`. Without schedstat it is the wall clock.
    """
    began = time.monotonic()
    while True:
        elapsed = time.monotonic() - began
        left = min(
            timeout_s - (elapsed - _runqueue_wait_s(proc.pid)),
            timeout_s * MAX_STRETCH - elapsed,
        )
        if left <= 0:
            return proc.poll() is not None
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            continue
        return True


def _runqueue_wait_s(pid: int) -> float:
    """Seconds the process's main thread waited for a CPU (0 when unknown)."""
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone is fine
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
