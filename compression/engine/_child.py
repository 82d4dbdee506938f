"""Entry point of the sandboxed child process (see ``sandbox.run_isolated``)."""

from __future__ import annotations

import importlib
import json
import os
import resource
import traceback
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def _set_limits(memory_mb: int | None, cpu_s: int | None) -> None:
    if memory_mb:
        limit = int(memory_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_s:
        # soft limit sends SIGXCPU; the hard limit one second later is a SIGKILL backstop
        resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_s), int(cpu_s) + 1))


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so a sandbox started inside a sandbox
    (the fp16 load check) never outlives the one that started it."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def _resolve(qualname: str):
    module_name, _, attr = qualname.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def main(payload: dict, result_path: str) -> None:
    _die_with_parent()
    _set_limits(payload.get("memory_mb"), payload.get("cpu_s"))
    from compression.engine.errors import EngineError

    try:
        func = _resolve(payload["func"])
        value = func(*payload["args"], **payload["kwargs"])
        result = {"ok": True, "value": value}
    except EngineError as exc:
        result = {
            "ok": False,
            "error": {"class": type(exc).__name__, "args": exc.to_args(), "message": str(exc)},
        }
    except MemoryError:
        # an allocation refused by RLIMIT_AS: report it as a crash-class outcome
        result = {
            "ok": False,
            "error": {
                "class": "SandboxCrashed",
                "args": ["the isolated process ran out of memory"],
                "message": "out of memory",
            },
        }
    except Exception as exc:
        # anything else crosses back as RemoteError with its type name and message
        traceback.print_exc()
        result = {
            "ok": False,
            "error": {"class": type(exc).__name__, "args": [], "message": str(exc)[:2000]},
        }
    tmp = result_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    Path(tmp).replace(result_path)
