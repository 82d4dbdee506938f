"""The reference models: valid, usable through the CLI as the issue writes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from compression.engine import validate_model
from compression.engine.passes import get_pass
from compression.engine.search import auto
from compression.fixtures import make_transformer

FIXTURES = Path(__file__).resolve().parents[2] / "compression" / "fixtures"


def cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "compression", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_committed_fixtures_are_small_and_valid():
    total = sum(p.stat().st_size for p in FIXTURES.iterdir() if p.is_file())
    assert total < 20 * 1024 * 1024
    info = validate_model(FIXTURES / "digits_cnn.onnx")
    assert info["inputs"][0]["shape"][0] == "batch"  # dynamic batch axis
    assert info["opsets"]["ai.onnx"] >= 13
    data = np.load(FIXTURES / "digits_eval.npz")
    assert set(data.files) == {"image", "labels"}
    assert len(np.load(FIXTURES / "digits_calibration.npz")["image"]) == 200


def test_cli_on_digits_as_written_in_the_issue(tmp_path):
    model, cal = FIXTURES / "digits_cnn.onnx", FIXTURES / "digits_calibration.npz"
    data = FIXTURES / "digits_eval.npz"
    assert "Conv" in cli("inspect", model)
    out = tmp_path / "q.onnx"
    cli(
        "optimize",
        model,
        "-o",
        out,
        "--recipe",
        "int8-static",
        "--calibration",
        cal,
        "--set",
        "calibrate_method=percentile",
    )
    assert out.stat().st_size < 0.28 * model.stat().st_size
    bench = json.loads(cli("benchmark", out, "--threads", 1, "--runs", 10, "--batch", 8, "--json"))
    assert set(bench["throughput_ips"]) == {"1", "8"}
    ev = json.loads(cli("evaluate", out, "--data", data, "--reference", model, "--json"))
    assert ev["reference_accuracy"]["top1"] - ev["accuracy"]["top1"] <= 0.005


@pytest.mark.slow
def test_structured_pruning_handles_mobilenet_depthwise_blocks(tmp_path):
    p = get_pass("prune-structured")
    result = p.run(
        FIXTURES / "mobilenetv2.onnx", p.make_config({"ratio": 0.25}), tmp_path / "pruned.onnx"
    )
    m = result.metrics
    assert m["layers_pruned"] >= 17  # every expansion conv, through its depthwise conv
    assert m["parameter_ratio"] < 0.9 and m["flop_ratio"] < 0.9
    sess = ort.InferenceSession(result.output_path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((1, 3, 224, 224), np.float32)})[0]
    assert out.shape == (1, 1000)


@pytest.mark.slow
def test_auto_picks_dynamic_int8_for_the_transformer(tmp_path):
    model, cal, ev = make_transformer.ensure(tmp_path / "cache")
    validate_model(model)
    report = auto(
        model,
        calibration_path=cal,
        evaluation_path=ev,
        kpis={"min_fidelity": 0.9},
        out_dir=tmp_path / "auto",
        recipes=("int8-dynamic", "fp16"),
        runs=20,
    )
    by = {c["recipe"]: c for c in report["candidates"]}
    assert report["chosen"] == "int8-dynamic"
    assert by["int8-dynamic"]["metrics"]["p50_ratio"] < 1.0


def test_mobilenet_fixture_is_trained_on_its_synthetic_task():
    """Trained end to end: held-out task images are classified right with real margins,
    so int8 agreement is measured against a model that knows its task."""
    from compression.fixtures import make_mobilenet

    images, labels = make_mobilenet.labelled_images(32, seed=make_mobilenet.SEED + 2)
    sess = ort.InferenceSession(str(make_mobilenet.MODEL), providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [sess.run(None, {"input": images[i : i + 8]})[0] for i in range(0, 32, 8)]
    )
    assert logits.shape == (32, 1000)
    assert (logits.argmax(1) == labels).mean() >= 0.9
    top2 = np.sort(logits, axis=1)[:, -2:]
    spread = logits.max() - logits.min()
    # the median margin between the two best classes is a real share of the output's range
    assert np.median(top2[:, 1] - top2[:, 0]) > 0.1 * spread
