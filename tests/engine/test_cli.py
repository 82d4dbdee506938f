"""python -m compression: every command, JSON output, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "compression", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def test_inspect_human_and_json(cnn_path):
    assert "parameters" in cli("inspect", cnn_path).stdout
    info = json.loads(cli("inspect", cnn_path, "--json").stdout)
    assert info["inputs"][0]["name"] == "x"


def test_optimize_with_set_and_json(tmp_path, cnn_path, cnn_data):
    out = tmp_path / "q.onnx"
    r = json.loads(
        cli(
            "optimize",
            cnn_path,
            "-o",
            out,
            "--recipe",
            "int8-static",
            "--calibration",
            cnn_data,
            "--set",
            "per_channel=false",
            "--set",
            "max_samples=8",
            "--json",
        ).stdout
    )
    assert out.exists() and r["steps"][0]["config"]["per_channel"] is False


def test_benchmark_and_evaluate(tmp_path, cnn_path, cnn_data):
    b = json.loads(cli("benchmark", cnn_path, "--runs", 5, "--batch", 4, "--json").stdout)
    assert set(b["throughput_ips"]) == {"1", "4"}
    assert "p50" in cli("benchmark", cnn_path, "--runs", 3).stdout
    e = json.loads(
        cli("evaluate", cnn_path, "--data", cnn_data, "--reference", cnn_path, "--json").stdout
    )
    assert e["accuracy"]["top1"] == 1.0
    assert (
        "top1_agreement"
        in cli("evaluate", cnn_path, "--data", cnn_data, "--reference", cnn_path).stdout
    )


def test_auto_writes_variants_and_report(tmp_path, cnn_path, cnn_data):
    out = tmp_path / "auto"
    proc = cli(
        "auto",
        cnn_path,
        "--calibration",
        cnn_data,
        "--eval",
        cnn_data,
        "--max-accuracy-drop",
        5,
        "--budget-s",
        0,
        "--out",
        out,
    )
    assert "chosen:" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["candidates"][0]["recipe"] == "fp32"
    assert (out / "fp32.onnx").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("inspect", "{tmp}/missing.onnx"), "does not exist"),
        (("inspect", "{tmp}/corrupt.onnx"), "not a valid ONNX model"),
        (("evaluate", "{cnn}", "--data", "{tmp}/wrong.npz"), "no array for model input"),
        (("optimize", "{cnn}", "-o", "{tmp}/o.onnx", "--recipe", "nope"), "unknown pass 'nope'"),
        (
            ("optimize", "{cnn}", "-o", "{tmp}/o.onnx", "--recipe", "int8-static"),
            "needs calibration data",
        ),
        (
            (
                "optimize",
                "{cnn}",
                "-o",
                "{tmp}/o.onnx",
                "--recipe",
                "prune-structured",
                "--set",
                "min_channels=2",
                "--set",
                "ratio=0.5",
                "--set",
                "max_layers=x",
            ),
            "max_layers must be of type int",
        ),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, cnn_path, args, needle):
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x01\xff\xff garbage")
    np.savez(tmp_path / "wrong.npz", image=np.zeros((2, 3, 16, 16), np.float32))
    argv = [a.format(tmp=tmp_path, cnn=cnn_path) for a in args]
    proc = cli(*argv, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback(tmp_path):
    proc = cli("inspect", tmp_path / "missing.onnx", "--debug", check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_relative_paths_and_unknown_provider(tmp_path, cnn_path):
    shutil.copy(cnn_path, tmp_path / "rel.onnx")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "compression", *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env=env,
        )

    proc = run("benchmark", "rel.onnx", "--runs", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    proc = run("benchmark", "rel.onnx", "--provider", "NoSuchEP")
    # onnxruntime would fall back to CPU silently; we refuse instead
    assert proc.returncode == 2 and "'NoSuchEP' is not available" in proc.stderr


def test_auto_with_relative_paths(tmp_path, cnn_path, cnn_data):
    shutil.copy(cnn_path, tmp_path / "m.onnx")
    shutil.copy(cnn_data, tmp_path / "d.npz")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "compression",
            "auto",
            "m.onnx",
            "--calibration",
            "d.npz",
            "--eval",
            "d.npz",
            "--out",
            "out",
            "--budget-s",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 0, proc.stderr
    assert "measured on: x [1, 3, 16, 16] (data)" in proc.stdout
    assert (tmp_path / "out" / "report.json").exists()
