"""Task-aware fidelity: each output kind scored on what the user sees of it."""

from __future__ import annotations

import numpy as np
import pytest

from compression.engine import DatasetError
from compression.engine.evaluate import evaluate, fidelity
from compression.fixtures import zoo


def test_ctc_sequences_are_compared_as_decoded_strings():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (20, 16, 11)).astype(np.float32)
    got = ref.copy()
    # nudge one step per line so that its best class flips: numerically tiny, wrong strings
    for i in range(10):
        t = 3
        order = np.argsort(ref[i, t])
        got[i, t, order[-2]] = ref[i, t, order[-1]] + 1e-3
    f = fidelity(ref, got, "sequence")
    assert f["metric"] == "sequence_agreement"
    assert f["cosine"] > 0.99 and f["fidelity"] <= 0.55


def test_argmax_indices_need_exact_agreement():
    ref = np.array([1, 2, 3, 4], np.int64)
    f = fidelity(ref, np.array([1, 2, 3, 0], np.int64), "indices")
    assert (f["metric"], f["fidelity"]) == ("exact_agreement", 0.75)


def test_class_logits_use_top1_agreement():
    ref = np.eye(4, dtype=np.float32)
    got = ref.copy()
    got[0] = [0, 1.1, 0, 0]
    f = fidelity(ref, got, "classes")
    assert (f["metric"], f["fidelity"]) == ("top1_agreement", 0.75)


def test_boxes_use_iou_not_classification():
    ref = np.array([[[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.9, 0.8]]], np.float32)
    near = ref + 0.002
    f = fidelity(ref, near, "boxes")
    assert f["metric"] == "box_iou_agreement" and f["fidelity"] == 1.0
    far = ref.copy()
    far[0, 1] = [0.5, 0.5, 0.9, 0.9]
    assert fidelity(ref, far, "boxes")["fidelity"] == 0.5


def test_regression_and_embeddings():
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1, (50,)).astype(np.float32)
    f = fidelity(ref, ref + 0.01, "regression")
    assert f["metric"] == "relative_error" and f["fidelity"] > 0.98
    emb = rng.normal(0, 1, (8, 32)).astype(np.float32)
    assert fidelity(emb, emb, "embedding")["fidelity"] == 1.0


def test_evaluate_names_the_metric_and_takes_an_override(tmp_path):
    model, _cal, ev = zoo.ensure("crnn_ctc", tmp_path)
    r = evaluate(model, ev, reference_path=model)
    assert r["fidelity"]["log_probs"]["metric"] == "sequence_agreement"
    r = evaluate(model, ev, reference_path=model, kinds={"log_probs": "embedding"})
    assert r["fidelity"]["log_probs"]["metric"] == "cosine"
    with pytest.raises(DatasetError, match="unknown output kind"):
        evaluate(model, ev, reference_path=model, kinds={"log_probs": "poetry"})
