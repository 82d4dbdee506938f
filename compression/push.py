"""Push: a model version and its datasets in one request, all or nothing.

What a CI pipeline (the `edgefleet push` command) calls: the model is found or
created by name, the ONNX file registered (the same bytes again give the same
version), the calibration and evaluation `.npz` attached (the same bytes again
give the same dataset). When any part is refused, whatever this call created is
removed again, so a failed push never leaves a model without versions or a
version without the datasets its pipeline needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from compression import services
from compression.choices import DatasetPurpose, ModelTask
from compression.models import Dataset, MLModel, ModelVersion
from fleet import storage

NAME_MAX = MLModel._meta.get_field("name").max_length


@dataclass
class Upload:
    path: str | Path
    filename: str


@dataclass
class Pushed:
    version: ModelVersion
    created: bool
    datasets: dict[str, Dataset]


def push_model(
    name: str,
    model: Upload,
    *,
    calibration: Upload | None = None,
    evaluation: Upload | None = None,
    task: str = ModelTask.CLASSIFICATION,
    notes: str = "",
    actor=None,
) -> Pushed:
    """Validate and register everything, or raise `UploadRejected` having created nothing."""
    name = (name or "").strip()
    if not name or len(name) > NAME_MAX:
        raise services.UploadRejected(
            "bad_name", _("A model name of 1 to %(n)s characters is required.") % {"n": NAME_MAX}
        )
    if task not in ModelTask.values:
        raise services.UploadRejected("bad_task", _("Unknown task %(t)r.") % {"t": task})
    created: list = []  # rows this call made, newest last
    try:
        ml_model = MLModel.objects.filter(name=name).first()
        if ml_model is None:
            ml_model, new = _create_model(name, task, actor)
            if new:
                created.append(ml_model)
        registered = services.register_version(
            ml_model, model.path, original_filename=model.filename, actor=actor, notes=notes
        )
        if registered.created:
            created.append(registered.version)
        datasets = {}
        for purpose, upload in (
            (DatasetPurpose.CALIBRATION, calibration),
            (DatasetPurpose.EVALUATION, evaluation),
        ):
            if upload is None:
                continue
            dataset, new = _dataset(ml_model, purpose, upload, actor)
            _check_fits(dataset, registered.version)
            datasets[purpose.value] = dataset
            if new:
                created.append(dataset)
    except Exception:
        _undo(created)
        raise
    return Pushed(registered.version, registered.created, datasets)


def _create_model(name: str, task: str, actor) -> tuple[MLModel, bool]:
    owner = actor if getattr(actor, "pk", None) else None
    try:
        with transaction.atomic():
            return services.create_model(name=name, task=task, owner=owner), True
    except IntegrityError:  # a concurrent push created it first: use theirs
        return MLModel.objects.get(name=name), False


def _dataset(model: MLModel, purpose: str, upload: Upload, actor) -> tuple[Dataset, bool]:
    sha256, _size = storage.sha256_file(upload.path)
    existing = Dataset.objects.filter(model=model, purpose=purpose, sha256=sha256).first()
    if existing is not None:
        return existing, False
    dataset = services.register_dataset(
        upload.path,
        name=f"{model.name}-{purpose}-{sha256[:8]}"[:120],
        purpose=purpose,
        original_filename=upload.filename,
        model=model,
        actor=actor,
    )
    return dataset, True


def _check_fits(dataset: Dataset, version: ModelVersion) -> None:
    """A dataset reused by its bytes must still feed the version just pushed."""
    missing = [i["name"] for i in version.inputs or [] if i.get("name") not in dataset.arrays]
    if missing:
        raise services.UploadRejected(
            "bad_dataset",
            _("The dataset has no array for model input(s) %(m)s.") % {"m": ", ".join(missing)},
        )


def _undo(rows: list) -> None:
    """Delete what a refused push created (newest first) and artifacts nobody else uses."""
    for row in reversed(rows):
        artifact = getattr(row, "artifact", None)
        row.delete()
        if artifact and not (
            ModelVersion.objects.filter(artifact=artifact).exists()
            or Dataset.objects.filter(artifact=artifact).exists()
        ):
            storage.delete_quietly(artifact)
