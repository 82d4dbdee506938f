"""Load the demo model and its datasets into an empty registry (used by `make run`)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand

from compression import services
from compression.choices import DatasetPurpose, ModelTask
from compression.models import MLModel

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
DEMO_NAME = "digits-cnn"


class Command(BaseCommand):
    help = "Register the bundled digits CNN with calibration and evaluation data if empty."

    def handle(self, *args, **options):
        if MLModel.objects.exists():
            self.stdout.write("Registry not empty; demo not loaded.")
            return
        model_path = FIXTURES / "digits_cnn.onnx"
        if not model_path.exists():
            self.stderr.write(f"{model_path} missing; run compression/fixtures/make_digits.py")
            return
        model = services.do_create_model(
            name=DEMO_NAME, task=ModelTask.CLASSIFICATION,
            description="Small CNN trained on scikit-learn's digits (32×32 grayscale, 10 classes).",
        )
        services.check_and_register_version(model, model_path, original_filename=model_path.name)
        for purpose, filename in (
            (DatasetPurpose.CALIBRATION, "digits_calibration.npz"),
            (DatasetPurpose.EVALUATION, "digits_eval.npz"),
        ):
            services.check_and_register_dataset(
                FIXTURES / filename, name=f"digits-{purpose}", purpose=purpose,
                original_filename=filename, model=model,
            )
        self.stdout.write(self.style.SUCCESS(f"Demo model {DEMO_NAME!r} loaded."))
