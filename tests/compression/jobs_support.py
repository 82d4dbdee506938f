"""Shared setup for the compression job tests: the demo model with its datasets."""

from __future__ import annotations

from dataclasses import dataclass

from compression import services
from compression.choices import DatasetPurpose, ModelTask
from compression.models import Dataset, ModelVersion
from tests.conftest import FIXTURES

FAST_RECIPES = ["int8-static", "fp16"]


@dataclass
class Demo:
    version: ModelVersion
    calibration: Dataset
    evaluation: Dataset


def load_demo(name: str = "digits-cnn") -> Demo:
    model = services.do_create_model(name=name, task=ModelTask.CLASSIFICATION)
    version = services.check_and_register_version(
        model, FIXTURES / "digits_cnn.onnx", original_filename="digits_cnn.onnx").version
    datasets = {
        purpose: services.check_and_register_dataset(
            FIXTURES / filename, name=f"digits-{purpose}", purpose=purpose,
            original_filename=filename, model=model)
        for purpose, filename in ((DatasetPurpose.CALIBRATION, "digits_calibration.npz"),
                                  (DatasetPurpose.EVALUATION, "digits_eval.npz"))
    }
    return Demo(version, datasets["calibration"], datasets["evaluation"])


def job_payload(demo: Demo, **extra) -> dict:
    return {"source": demo.version.pk, "mode": "recipes", "recipes": FAST_RECIPES,
            "calibration": demo.calibration.pk, "evaluation": demo.evaluation.pk,
            "time_budget_s": 120, **extra}
