"""benchmark (isolated) and evaluate (accuracy + fidelity)."""

from __future__ import annotations

import numpy as np
import pytest

from compression.engine import EngineError, SandboxCrashed
from compression.engine.benchmark import benchmark, host_info
from compression.engine.evaluate import evaluate, fidelity
from compression.engine.recipes import run_recipe


def test_benchmark_reports_latency_throughput_memory_and_host(cnn_path):
    r = benchmark(cnn_path, runs=10, warmup=2)
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
    assert set(r["throughput_ips"]) == {"1", "8"}  # dynamic batch: a larger batch too
    assert r["peak_rss_mb"] > 0 and r["load_ms"] > 0
    assert r["size_bytes"] > 0 and r["gzip_bytes"] > 0
    assert r["threads"] == 1 and r["dynamic_batch"] is True
    assert r["host"]["cores"] >= 1 and isinstance(r["host"]["isa"], list)


def test_benchmark_batch_sizes_and_threads(mlp_path):
    r = benchmark(mlp_path, runs=5, warmup=1, batch_sizes=(1, 4), threads=2)
    assert set(r["throughput_ips"]) == {"1", "4"}
    assert r["threads"] == 2


def test_benchmark_survives_a_crashing_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(EngineError, match="Protobuf parsing failed"):
        benchmark(bad, runs=1, warmup=0, timeout_s=60)


def test_benchmark_memory_limit_kills_only_the_child(cnn_path):
    with pytest.raises(SandboxCrashed):
        benchmark(cnn_path, runs=1, warmup=0, memory_mb=40)
    assert benchmark(cnn_path, runs=2, warmup=0)["latency_ms"]["p50"] > 0


def test_host_info_has_isa_flags():
    info = host_info()
    assert info["cpu_model"] and info["machine"]


def test_evaluate_accuracy_and_self_fidelity(cnn_path, cnn_data):
    r = evaluate(cnn_path, cnn_data, reference_path=cnn_path)
    assert r["accuracy"]["top1"] == 1.0 and r["accuracy"]["top5"] == 1.0
    f = r["fidelity"]["logits"]
    assert f["cosine"] == pytest.approx(1.0) and f["top1_agreement"] == 1.0
    assert f["max_abs_error"] == 0.0 and f["snr_db"] is None


def test_evaluate_quantized_against_reference(tmp_path, cnn_path, cnn_data):
    q = tmp_path / "q.onnx"
    run_recipe("int8-static", cnn_path, q, calibration_path=cnn_data)
    r = evaluate(q, cnn_data, reference_path=cnn_path)
    f = r["fidelity"]["logits"]
    assert 0.9 < f["cosine"] < 1.0
    assert f["snr_db"] > 5 and f["mean_abs_error"] > 0
    assert r["reference_accuracy"]["top1"] == 1.0
    assert r["accuracy"]["top1"] > 0.7


def test_evaluate_without_labels_reports_fidelity_only(mlp_path, mlp_data):
    r = evaluate(mlp_path, mlp_data, reference_path=mlp_path)
    assert "accuracy" not in r
    assert r["fidelity"]["y"]["cosine"] == pytest.approx(1.0)


def test_fidelity_math():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]])
    got = ref + 0.1
    f = fidelity(ref, got)
    assert f["max_abs_error"] == pytest.approx(0.1)
    assert f["snr_db"] == pytest.approx(10 * np.log10(30 / 0.04), rel=1e-3)
    assert f["top1_agreement"] == 1.0
