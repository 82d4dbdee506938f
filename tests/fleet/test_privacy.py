"""N1: no EdgeFleet process phones home; onnxruntime telemetry is off before it loads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need_service

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import os, sys, time
sys.path.insert(0, {root!r})
os.environ["DJANGO_SETTINGS_MODULE"] = "fleet.settings"
import django
django.setup()
from compression.engine import validate_model
from tests.conftest import tiny_model_bytes
import numpy as np, onnxruntime as ort
path = {model!r}
open(path, "wb").write(tiny_model_bytes())
validate_model(path, timeout_s=60)              # sandboxed child process
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
for _ in range(20):
    session.run(None, {{"x": np.zeros((1, 4), "float32")}})
time.sleep(3)                                    # telemetry would fire within seconds
print("probe-ok", os.environ.get("ORT_DISABLE_TELEMETRY"))
"""


def _clean_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(EDGEFLEET_VAR_DIR=str(tmp_path / "var"), DATABASE_URL=f"sqlite:///{tmp_path}/db")
    env.pop("REDIS_URL", None)
    env.pop("AWS_STORAGE_BUCKET_NAME", None)
    return env


@pytest.mark.parametrize("module", ["compression.engine", "fleet.settings", "fleet.celery"])
def test_telemetry_switch_is_set_by_our_entry_points(module, tmp_path):
    code = f"import os, {module}; print(os.environ.get('ORT_DISABLE_TELEMETRY'))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_clean_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip().splitlines()[-1] == "1", proc.stderr


def test_no_outbound_connections_during_validation_and_inference(tmp_path):
    strace = shutil.which("strace")
    if strace is None:
        need_service("strace", "needed to watch connect() of native code")
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(root=str(ROOT), model=str(tmp_path / "m.onnx")))
    log = tmp_path / "strace.log"
    proc = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=connect,sendto,sendmsg",
            "-o",
            str(log),
            sys.executable,
            str(script),
        ],
        env=_clean_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and "ptrace" in proc.stderr.lower():
        need_service("ptrace", proc.stderr.strip()[:200])
    assert "probe-ok 1" in proc.stdout, proc.stderr[-2000:]
    outbound = [
        line
        for line in log.read_text().splitlines()
        if re.search(r"AF_INET6?", line) and not re.search(r"127\.0\.0\.1|::1", line)
    ]
    assert outbound == [], outbound
