"""Load the demo model and its datasets into an empty registry (used by `make run`)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand

from compression import jobs, runner, services
from compression.choices import DatasetPurpose, JobMode, ModelTask
from compression.models import MLModel

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
DEMO_NAME = "digits-cnn"


class Command(BaseCommand):
    help = (
        "Register the bundled digits CNN with calibration and evaluation data if empty; "
        "with --with-job also run one small compression job so the job pages show one."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--with-job",
            action="store_true",
            help="Also run one compression job of the demo model (`make run`).",
        )

    def handle(self, *args, **options):
        if MLModel.objects.exists():
            self.stdout.write("Registry not empty; demo not loaded.")
            return
        model_path = FIXTURES / "digits_cnn.onnx"
        if not model_path.exists():
            self.stderr.write(f"{model_path} missing; run compression/fixtures/make_digits.py")
            return
        model = services.create_model(
            name=DEMO_NAME,
            task=ModelTask.CLASSIFICATION,
            description="Small CNN trained on scikit-learn's digits (32×32 grayscale, 10 classes).",
        )
        version = services.register_version(
            model, model_path, original_filename=model_path.name
        ).version
        datasets = {}
        for purpose, filename in (
            (DatasetPurpose.CALIBRATION, "digits_calibration.npz"),
            (DatasetPurpose.EVALUATION, "digits_eval.npz"),
        ):
            datasets[purpose] = services.register_dataset(
                FIXTURES / filename,
                name=f"digits-{purpose}",
                purpose=purpose,
                original_filename=filename,
                model=model,
            )
        self.stdout.write(self.style.SUCCESS(f"Demo model {DEMO_NAME!r} loaded."))
        if options["with_job"]:
            self._demo_job(version, datasets)

    def _demo_job(self, version, datasets) -> None:
        """Run in this process (no worker needed yet); a few seconds on the digits CNN."""
        from devices.models import HardwareProfile

        job = jobs.create_job(
            version,
            mode=JobMode.AUTO,
            kpis={"max_latency_ms": 5, "max_accuracy_drop": 1},
            hardware_profile=HardwareProfile.objects.filter(slug="x86-gateway-1c").first(),
            calibration=datasets[DatasetPurpose.CALIBRATION],
            evaluation=datasets[DatasetPurpose.EVALUATION],
            time_budget_s=45,
            enqueue=False,
        )
        outcome = runner.run_job(job.pk)
        job.refresh_from_db()
        self.stdout.write(
            f"Demo compression job {job.pk}: {outcome} "
            f"(chosen {job.result.get('chosen')}, {job.duration_s} s)."
        )
