"""Registry workflows: register model versions and datasets from uploaded files.

Functions are named by what they do; each states what it checks and its
precondition in its docstring (docs/architecture.md, naming).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils.translation import gettext as _

from compression.choices import DatasetPurpose, VersionStatus
from compression.engine import ModelRejected, validate_model
from compression.models import Dataset, MLModel, ModelVersion
from fleet import storage
from fleet.refusal import Refusal

log = logging.getLogger(__name__)


class UploadRejected(Refusal):
    """An upload we refuse (`fleet.refusal`)."""


@dataclass
class Registered:
    version: ModelVersion
    created: bool


def _sandbox_copy(src: str | Path, filename: str) -> tuple[Path, str, int]:
    """Copy an upload into a private directory; return (path, sha256, size).

    The validator runs with that directory as its whole world, so even a
    reference to external data could only point at our own copy.
    """
    workdir = Path(tempfile.mkdtemp(prefix="upload-", dir=settings.FILE_UPLOAD_TEMP_DIR))
    dst = workdir / filename
    shutil.copyfile(src, dst)
    sha256, size = storage.sha256_file(dst)
    return dst, sha256, size


def create_model(*, name: str, task: str, description: str = "", owner=None) -> MLModel:
    """Precondition: the name is free (the unique constraint enforces it)."""
    return MLModel.objects.create(name=name, task=task, description=description, owner=owner)


def register_version(
    model: MLModel,
    upload_path: str | Path,
    *,
    original_filename: str,
    actor=None,
    parent: ModelVersion | None = None,
    recipe: dict | None = None,
    metrics: dict | None = None,
    notes: str = "",
    _test_crash: str | None = None,
) -> Registered:
    """Validate an ONNX file in the sandbox now, store it content-addressed, add a
    ready version. For callers already off the request path (compression jobs on a
    worker, `manage.py import_model`, the demo seed); uploads through the web go
    through `accept_upload`, which validates on a worker.

    The same bytes uploaded again to the same model return the existing version
    (created=False). Nothing is left in storage when anything fails.
    """
    _check_names(model, original_filename, parent)
    path, sha256, size = _sandbox_copy(upload_path, "model.onnx")
    try:
        existing = model.versions.filter(sha256=sha256).first()
        if existing is not None:
            return Registered(existing, created=False)
        info = _validate(path, _test_crash)
        name = storage.content_name("models", sha256, ".onnx")
        wrote = storage.put_file(path, name)
        try:
            version = _insert_version(
                model,
                name=name,
                sha256=sha256,
                size=size,
                original_filename=original_filename,
                actor=actor,
                parent=parent,
                recipe=recipe,
                metrics=metrics,
                notes=notes,
                described=described(info),
            )
        except Exception:
            if wrote and not _artifact_in_use(name):
                storage.delete_quietly(name)
            raise
        return Registered(version, created=True)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def _check_names(model: MLModel, original_filename: str, parent: ModelVersion | None) -> None:
    if not original_filename.lower().endswith(".onnx"):
        raise UploadRejected("wrong_extension", _("Model files must have the .onnx extension."))
    if parent is not None and parent.model_id != model.pk:
        raise UploadRejected("bad_parent", _("The parent version belongs to another model."))


def _validate(path: Path, test_crash: str | None = None) -> dict:
    try:
        return validate_model(
            path,
            timeout_s=settings.EDGEFLEET_VALIDATOR_TIMEOUT_S,
            memory_mb=settings.EDGEFLEET_VALIDATOR_MEMORY_MB,
            max_bytes=settings.EDGEFLEET_MAX_UPLOAD_BYTES,
            # Tests make the sandbox die through this setting (never set from env).
            _test_crash=test_crash or settings.EDGEFLEET_VALIDATOR_TEST_CRASH,
        )
    except ModelRejected as exc:
        status = 413 if exc.code == "too_large" else 400
        raise UploadRejected(exc.code, exc.message, status) from None


def described(info: dict) -> dict:
    """ModelVersion fields from the validator's description of the model."""
    return {
        "ir_version": info.get("ir_version"),
        "opsets": info.get("opsets") or {},
        "producer": (info.get("producer") or "")[:200],
        "inputs": info.get("inputs") or [],
        "outputs": info.get("outputs") or [],
        "parameters": info.get("parameters") or 0,
        "flops": info.get("flops"),
        "op_histogram": info.get("op_histogram") or {},
    }


def _insert_version(model: MLModel, **fields) -> ModelVersion:
    with transaction.atomic():
        # Lock the model row so two concurrent uploads don't pick the same number.
        MLModel.objects.select_for_update().filter(pk=model.pk).first()
        number = (model.versions.aggregate(n=Max("number"))["n"] or 0) + 1
        return ModelVersion.objects.create(
            model=model,
            number=number,
            parent=fields["parent"],
            recipe=fields["recipe"] or {},
            metrics=fields["metrics"] or {},
            notes=fields["notes"],
            artifact=fields["name"],
            original_filename=fields["original_filename"][:255],
            sha256=fields["sha256"],
            size_bytes=fields["size"],
            created_by=fields["actor"],
            **fields["described"],
        )


def _artifact_in_use(name: str) -> bool:
    """A version that is not rejected still needs these bytes."""
    return (
        ModelVersion.objects.filter(artifact=name).exclude(status=VersionStatus.REJECTED).exists()
    )


def register_dataset(
    upload_path: str | Path,
    *,
    name: str,
    purpose: str,
    original_filename: str,
    model: MLModel | None = None,
    actor=None,
) -> Dataset:
    """Inspect an `.npz` without loading its arrays, store it, add a Dataset row."""
    if not original_filename.lower().endswith(".npz"):
        raise UploadRejected("wrong_extension", _("Datasets must be .npz files."))
    if purpose not in DatasetPurpose.values:
        raise UploadRejected("bad_purpose", _("Unknown dataset purpose %(p)r.") % {"p": purpose})
    path, sha256, size = _sandbox_copy(upload_path, "data.npz")
    try:
        arrays = read_npz_headers(path)
        samples = _check_arrays(arrays, model)
        storage_name = storage.content_name("datasets", sha256, ".npz")
        wrote = storage.put_file(path, storage_name)
        try:
            return Dataset.objects.create(
                name=name,
                purpose=purpose,
                model=model,
                artifact=storage_name,
                sha256=sha256,
                size_bytes=size,
                sample_count=samples,
                arrays=arrays,
                has_labels="labels" in arrays,
                created_by=actor,
            )
        except Exception:
            if wrote and not Dataset.objects.filter(artifact=storage_name).exists():
                storage.delete_quietly(storage_name)
            raise
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def discard_dataset(dataset: Dataset) -> None:
    """Delete a dataset that nothing uses yet, and its bytes unless another dataset
    has the same ones (storage is content-addressed)."""
    dataset.delete()
    if not Dataset.objects.filter(artifact=dataset.artifact).exists():
        storage.delete_quietly(dataset.artifact)


def read_npz_headers(path: str | Path) -> dict[str, dict]:
    """Names, dtypes and shapes of the arrays in an .npz, reading headers only."""
    arrays: dict[str, dict] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    shape, dtype = _npy_header(fh)
                if dtype.hasobject:
                    raise UploadRejected(
                        "bad_dataset",
                        _("Array %(a)s holds Python objects; refused.") % {"a": info.filename},
                    )
                arrays[info.filename[:-4]] = {"dtype": str(dtype), "shape": list(shape)}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        message = _("Not a readable .npz file: %(e)s") % {"e": exc}
        raise UploadRejected("bad_dataset", message) from None
    if not arrays:
        raise UploadRejected("bad_dataset", _("The .npz file holds no arrays."))
    return arrays


def _npy_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


def _check_arrays(arrays: dict[str, dict], model: MLModel | None) -> int:
    """The engine's dataset contract (the same one the job check applies)."""
    from compression.engine.datasets import check_contract
    from compression.engine.errors import DatasetError

    latest = model.latest_version() if model is not None else None
    if latest is not None:
        try:
            return check_contract(arrays, latest.inputs)["samples"]
        except DatasetError as exc:
            raise UploadRejected("bad_dataset", str(exc)) from None
    # no model to check against: per-sample arrays must agree; 0-d arrays are fixed values
    counts = {name: meta["shape"][0] for name, meta in arrays.items() if meta["shape"]}
    if len(set(counts.values())) > 1:
        raise UploadRejected(
            "bad_dataset",
            _("Every array must have the same number of samples on axis 0; got %(c)s.")
            % {"c": counts},
        )
    labels = arrays.get("labels")
    n = next(iter(counts.values()), 1)
    if labels is not None and (labels["shape"] or [None])[0] != n:
        raise UploadRejected("bad_dataset", _("'labels' must hold one class id per sample."))
    return n


INPUT_STATS_MAX_SAMPLES = 1000


def calibration_input_stats(version: ModelVersion) -> dict:
    """Per input of `version`: the summary the agent compares its real inputs with
    (`devices.agent.drift.summarize`), from the newest calibration dataset of the
    model; {} without one. Computed once per (version, dataset) and kept in
    `version.metrics["input_stats"]`."""
    from django.core.files.storage import default_storage

    from devices.agent import drift

    dataset = (
        Dataset.objects.filter(model_id=version.model_id, purpose=DatasetPurpose.CALIBRATION)
        .order_by("-created_at")
        .first()
    )
    if dataset is None:
        return {}
    kept = (version.metrics or {}).get("input_stats") or {}
    if kept.get("dataset") == dataset.sha256:
        return kept.get("inputs") or {}
    names = [str(i.get("name")) for i in version.inputs or [] if isinstance(i, dict)]
    inputs: dict[str, dict] = {}
    try:
        with (
            default_storage.open(dataset.artifact, "rb") as fh,
            np.load(fh, allow_pickle=False) as data,
        ):
            for name in names:
                if name in data.files:
                    summary = drift.summarize(data[name][:INPUT_STATS_MAX_SAMPLES])
                    if summary:
                        inputs[name] = summary
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        log.warning("input statistics of %s not computed: %s", version, exc)
        return {}
    metrics = {
        **(version.metrics or {}),
        "input_stats": {"dataset": dataset.sha256, "inputs": inputs},
    }
    ModelVersion.objects.filter(pk=version.pk).update(metrics=metrics)
    version.metrics = metrics
    return inputs
