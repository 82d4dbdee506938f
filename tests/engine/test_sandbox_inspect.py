"""run_isolated, inspect_model and the engine's independence from Django."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compression.engine import RemoteError, SandboxCrashed, SandboxTimeout, inspect_model
from compression.engine.sandbox import run_isolated


def test_run_isolated_returns_json_result():
    assert run_isolated("json:dumps", {"a": 1}, timeout_s=30) == '{"a": 1}'


def test_run_isolated_reraises_remote_errors():
    with pytest.raises(RemoteError) as info:
        run_isolated("json:loads", "{not json", timeout_s=30)
    assert info.value.exc_type == "JSONDecodeError"


def test_run_isolated_crash_and_timeout():
    with pytest.raises(SandboxCrashed) as info:
        run_isolated("compression.engine.validate:_misbehave", "segfault", timeout_s=30)
    assert "SIGSEGV" in info.value.reason
    with pytest.raises(SandboxTimeout):
        run_isolated("time:sleep", 30, timeout_s=1)


def burn_cpu(seconds: float) -> float:
    """Work for `seconds` of this process's CPU time (startup included)."""
    import time

    while time.process_time() < seconds:
        pass
    return time.process_time()


def test_time_limit_stretches_with_the_load_but_not_for_a_sleeper():
    """Four processes on one core: the child needs about 4x its CPU time in wall time.
    It is not refused for the others' load; a child that sleeps still is, on time."""
    import os
    import time

    cpu = min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # the busy loops and the child inherit it
    hogs = []
    try:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
        began = time.monotonic()
        used = run_isolated("tests.engine.test_sandbox_inspect:burn_cpu", 1.5, timeout_s=2)
        took = time.monotonic() - began
        assert used >= 1.5 and took > 2, took  # it needed more wall time than its limit
        began = time.monotonic()
        with pytest.raises(SandboxTimeout):
            run_isolated("time:sleep", 60, timeout_s=2)
        assert time.monotonic() - began < 20
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        os.sched_setaffinity(0, saved)


def test_run_isolated_rejects_local_functions():
    def local():
        return 1

    with pytest.raises(ValueError, match="module-level"):
        run_isolated(local, timeout_s=5)


def test_inspect_model(cnn_path):
    info = inspect_model(cnn_path)
    json.dumps(info)
    assert set(info) >= {
        "ir_version",
        "opsets",
        "producer",
        "inputs",
        "outputs",
        "parameters",
        "op_histogram",
        "flops",
        "size_bytes",
    }
    assert info["outputs"][0]["shape"] == ["N", 10]
    # conv1: 2*16*16*8*27, conv2: 2*16*16*12*72, fc: 2*10*12 plus elementwise ops
    assert info["flops"] > 2 * 16 * 16 * 8 * 27 + 2 * 16 * 16 * 12 * 72
    assert info["parameters"] == 8 * 27 + 8 + 4 * 8 + 12 * 72 + 12 + 4 * 12 + 10 * 12 + 10


def test_engine_imports_no_django():
    code = (
        "import sys, compression.engine, compression.engine.passes, compression.engine.recipes, "
        "compression.engine.benchmark, compression.engine.evaluate, compression.engine.search, "
        "compression.engine.datasets, compression.__main__\n"
        # the engine may use the device agent's Django-free modules (the task-aware
        # comparison is shared with shadow evaluation); nothing else of the server
        "bad = [m for m in sys.modules if m.startswith('django') or m.split('.')[0] in "
        "('fleet', 'ota') or (m.split('.')[0] == 'devices' and m not in ('devices', "
        "'devices.agent') and not m.startswith('devices.agent.'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
