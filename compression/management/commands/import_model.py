from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from compression import services
from compression.choices import ModelTask
from compression.models import MLModel


class Command(BaseCommand):
    help = "Validate an ONNX file and register it as a new version of a model (created if new)."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--name", required=True)
        parser.add_argument("--task", default=ModelTask.CLASSIFICATION, choices=ModelTask.values)
        parser.add_argument("--description", default="")

    def handle(self, *args, path: Path, name: str, task: str, description: str, **options):
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        model = MLModel.objects.filter(name=name).first() or services.create_model(
            name=name, task=task, description=description
        )
        try:
            result = services.register_version(
                model, path, original_filename=path.name, parent=model.latest_version()
            )
        except services.UploadRejected as exc:
            raise CommandError(f"{path}: refused ({exc.code}): {exc.message}") from None
        verb = "registered" if result.created else "already registered as"
        self.stdout.write(f"{path.name} {verb} {result.version} (sha256 {result.version.sha256})")
