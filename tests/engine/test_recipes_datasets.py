"""Recipes chain passes; datasets are checked against model inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compression.engine import DatasetError, PassConfigError, PassRefused
from compression.engine.datasets import load_dataset, make_calibration_reader
from compression.engine.recipes import (
    DEFAULT_RECIPES,
    list_recipes,
    needs_calibration,
    resolve,
    run_recipe,
)


def test_default_recipes_are_resolvable():
    assert set(DEFAULT_RECIPES) == {
        "prepare",
        "optimize",
        "int8-dynamic",
        "int8-static",
        "mixed-precision",
        "fp16",
        "prune-unstructured",
    }
    for name in list_recipes():
        assert resolve(name)
    assert resolve("prune-structured+optimize+int8-static") == (
        "prune-structured",
        "optimize",
        "int8-static",
    )
    assert needs_calibration("prune-structured+optimize+int8-static")
    assert not needs_calibration("fp16")
    with pytest.raises(PassConfigError, match="unknown pass 'int3'"):
        resolve("optimize+int3")


def test_chain_runs_through_temp_files(tmp_path, cnn_path, cnn_data):
    out = tmp_path / "out" / "final.onnx"
    result = run_recipe(
        "prune-structured+optimize+int8-static",
        cnn_path,
        out,
        calibration_path=cnn_data,
        overrides={"prune-structured.min_channels": 2, "max_samples": 8},
        workdir=tmp_path,
    )
    assert [s["pass"] for s in result.steps] == ["prune-structured", "optimize", "int8-static"]
    assert result.steps[2]["config"]["max_samples"] == 8
    assert result.steps[0]["config"]["min_channels"] == 2
    onnx.checker.check_model(onnx.load(out))
    assert not list(tmp_path.glob("edgefleet-recipe-*"))  # temp files cleaned up


def test_overrides_that_fit_no_pass_are_refused(tmp_path, cnn_path):
    with pytest.raises(PassConfigError, match=r"\['sparsity'\] do not apply"):
        run_recipe("fp16", cnn_path, tmp_path / "o.onnx", overrides={"sparsity": 0.5})


def test_refusal_propagates_from_a_chain(tmp_path, residual_cnn_path, cnn_data):
    with pytest.raises(PassRefused):
        run_recipe(
            "prune-structured+optimize",
            residual_cnn_path,
            tmp_path / "o.onnx",
            overrides={"min_channels": 2},
        )
    assert not (tmp_path / "o.onnx").exists()


def test_dataset_loads_and_batches(cnn_path, cnn_data):
    ds = load_dataset(cnn_data, cnn_path, max_samples=10)
    assert ds.size == 10 and ds.labels.shape == (10,)
    assert [len(b["x"]) for b in ds.batches(4)] == [4, 4, 2]
    reader = make_calibration_reader(cnn_data, cnn_path, max_samples=3)
    seen = 0
    while reader.get_next() is not None:
        seen += 1
    assert seen == 3


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input": np.zeros((2, 3, 16, 16), np.float32)}, r"no array for model input\(s\) \['x'\]"),
        ({"x": np.zeros((2, 3, 8, 8), np.float32)}, "axis 2 differs"),
        ({"x": np.zeros((2, 3, 16), np.float32)}, "expects rank 4"),
        ({"x": np.zeros((2, 3, 16, 16), np.complex64)}, "dtype complex64"),
        (
            {"x": np.zeros((2, 3, 16, 16), np.float32), "labels": np.zeros(3, np.int64)},
            "'labels' must be 2 integer class ids",
        ),
        ({"x": np.zeros((0, 3, 16, 16), np.float32)}, "holds no samples"),
    ],
)
def test_dataset_mismatch_is_a_clear_error(tmp_path, cnn_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(path, cnn_path)


def test_dataset_not_npz(tmp_path, cnn_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        load_dataset(path, cnn_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing.npz", cnn_path)


def test_dataset_refuses_pickles(tmp_path, cnn_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, x=np.array([object()], dtype=object))
    with pytest.raises(DatasetError):
        load_dataset(path, cnn_path)


@pytest.mark.parametrize("recipe", DEFAULT_RECIPES)
def test_every_default_recipe_output_passes_validation(tmp_path, cnn_path, cnn_data, recipe):
    from compression.engine import validate_model

    out = tmp_path / f"{recipe}.onnx"
    run_recipe(recipe, cnn_path, out, calibration_path=cnn_data, overrides=None)
    info = validate_model(out)
    # onnxruntime saves every domain it knows; the recipe keeps only the used ones
    assert set(info["opsets"]) <= {"ai.onnx", "com.microsoft"}
