"""The CLI's own wheel: built from fleet/cli, installed into a fresh venv with no index
(so any declared dependency would fail the install), and `edgefleet` runs there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
CLI_SOURCE = Path(__file__).resolve().parents[2] / "fleet" / "cli"


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=240, check=False, **kwargs
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_wheel_installs_alone_into_a_fresh_venv_and_runs(tmp_path):
    source = tmp_path / "src"  # a copy: building in place would litter the checkout
    shutil.copytree(CLI_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("edgefleet_cli-*-py3-none-any.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", wheel)
    installed = run(venv / "bin" / "python", "-m", "pip", "list", "--format=freeze").stdout
    names = {line.split("==")[0].lower() for line in installed.split()}
    assert names - {"pip", "setuptools", "wheel"} == {"edgefleet-cli"}

    helped = run(venv / "bin" / "edgefleet", "--help", cwd=tmp_path)
    assert "exit codes:" in helped.stdout
    for command in ("push", "compress", "release create", "deploy", "status", "logs", "login"):
        text = run(venv / "bin" / "edgefleet", *command.split(), "--help", cwd=tmp_path).stdout
        assert f"usage: edgefleet {command}" in text
    down = subprocess.run(
        [venv / "bin" / "edgefleet", "status", "--url", "http://127.0.0.1:9", "--token", "t"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert down.returncode == 1 and "cannot reach the server" in down.stderr
