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
        "bad = [m for m in sys.modules if m.startswith('django') or m.split('.')[0] in "
        "('fleet', 'devices', 'ota')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
