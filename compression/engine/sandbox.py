"""Run a function in a fresh, resource-limited Python process.

Why a process and not a thread: a hostile or simply huge model can segfault
onnxruntime or allocate without bound. Only a separate process with rlimits
and a wall-clock timeout keeps the web server / Celery worker alive (O4).

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
    (RLIMIT_CPU, default: the timeout rounded up), ``timeout_s`` the wall clock.
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
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(payload_path), str(result_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env,
            cwd=tmp,
            start_new_session=True,  # own process group: a timeout kills its threads/children too
        )
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise SandboxTimeout(
                f"the isolated process did not finish within {timeout_s:g} s and was killed"
            ) from None
        except BaseException:
            # interrupted (a task's soft time limit, Ctrl-C): take the child down with us
            _kill_group(proc)
            raise
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


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone is fine
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
