"""Model uploads from the web and the API: stored and answered at once, validated
on a worker. A version reads `validating` until `do_validate_version` has run
the sandboxed checks, then `ready` or `rejected` (with `error_code`, `error`)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from compression.choices import VersionStatus
from compression.engine import ModelRejected, check_file
from compression.models import MLModel, ModelVersion
from compression.services import (
    Registered,
    UploadRejected,
    _artifact_in_use,
    _check_names,
    _insert_version,
    _sandbox_copy,
    _validate,
    described,
)
from fleet import storage

log = logging.getLogger(__name__)


@dataclass
class StagedUpload:
    """An upload copied next to us, fingerprinted, cheaply checked and stored."""

    path: Path
    sha256: str
    size: int
    name: str
    wrote: bool


def stage_model_upload(upload_path: str | Path, original_filename: str) -> StagedUpload:
    """Checks that read one byte (extension, size, magic), then the bytes go to
    storage under their sha256. No transaction may be open here: the storage
    write can be slow. Pair with `release_staged`."""
    if not original_filename.lower().endswith(".onnx"):
        raise UploadRejected("wrong_extension", _("Model files must have the .onnx extension."))
    path, sha256, size = _sandbox_copy(upload_path, "model.onnx")
    try:
        check_file(path, max_bytes=settings.EDGEFLEET_MAX_UPLOAD_BYTES)
        name = storage.content_name("models", sha256, ".onnx")
        wrote = storage.put_file(path, name)
    except ModelRejected as exc:
        shutil.rmtree(path.parent, ignore_errors=True)
        status = 413 if exc.code == "too_large" else 400
        raise UploadRejected(exc.code, exc.message, status) from None
    except Exception:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise
    return StagedUpload(path, sha256, size, name, wrote)


def release_staged(staged: StagedUpload) -> None:
    """Drop the local copy; drop the stored bytes too if no version took them."""
    shutil.rmtree(staged.path.parent, ignore_errors=True)
    if staged.wrote and not _artifact_in_use(staged.name):
        storage.delete_quietly(staged.name)


def queue_version(
    model: MLModel,
    staged: StagedUpload,
    *,
    original_filename: str,
    actor=None,
    parent: ModelVersion | None = None,
    notes: str = "",
) -> Registered:
    """Add a `validating` version for staged bytes and enqueue its validation once
    the row is committed; the same bytes again return the existing version."""
    _check_names(model, original_filename, parent)
    existing = model.versions.filter(sha256=staged.sha256).first()
    if existing is not None:
        return Registered(existing, created=False)
    version = _insert_version(
        model,
        name=staged.name,
        sha256=staged.sha256,
        size=staged.size,
        original_filename=original_filename,
        actor=actor,
        parent=parent,
        recipe=None,
        metrics=None,
        notes=notes,
        described={"status": VersionStatus.VALIDATING},
    )
    from compression.tasks import validate_model_version

    transaction.on_commit(lambda: validate_model_version.delay(version.pk))
    return Registered(version, created=True)


def accept_upload(
    model: MLModel,
    upload_path: str | Path,
    *,
    original_filename: str,
    actor=None,
    parent: ModelVersion | None = None,
    notes: str = "",
) -> Registered:
    """Stage, then queue: what the API and the version page call."""
    staged = stage_model_upload(upload_path, original_filename)
    try:
        return queue_version(
            model,
            staged,
            original_filename=original_filename,
            actor=actor,
            parent=parent,
            notes=notes,
        )
    finally:
        release_staged(staged)


def do_validate_version(version_id: int) -> str:
    """The worker's half of an upload. Precondition: none; a version that is not
    `validating` (gone, or decided by an earlier delivery) is left alone."""
    version = ModelVersion.objects.filter(pk=version_id, status=VersionStatus.VALIDATING).first()
    if version is None:
        return "skipped"
    workdir = Path(tempfile.mkdtemp(prefix="validate-", dir=settings.FILE_UPLOAD_TEMP_DIR))
    try:
        path = workdir / "model.onnx"
        try:
            with default_storage.open(version.artifact, "rb") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
        except FileNotFoundError:
            version.mark_rejected("artifact_missing", _("The uploaded file is gone from storage."))
            return "rejected"
        if storage.sha256_file(path)[0] != version.sha256:
            version.mark_rejected(
                "artifact_changed", _("The stored file does not match the uploaded bytes.")
            )
            return "rejected"
        try:
            info = _validate(path)
        except UploadRejected as exc:
            if version.mark_rejected(exc.code, exc.message) and not _artifact_in_use(
                version.artifact
            ):
                storage.delete_quietly(version.artifact)  # hostile bytes do not stay
            log.info("model version %s rejected: %s", version_id, exc.code)
            return "rejected"
        version.mark_ready(**described(info))
        return "ready"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def requeue_stale_validations(older_than_s: int = 600) -> list[int]:
    """Versions still `validating` long after upload (their message was lost with
    a broker outage or a worker machine): enqueue them again; a duplicate
    delivery is harmless (`do_validate_version` decides once)."""
    from compression.tasks import validate_model_version

    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    stale = list(
        ModelVersion.objects.filter(
            status=VersionStatus.VALIDATING, created_at__lt=cutoff
        ).values_list("pk", flat=True)
    )
    for pk in stale:
        validate_model_version.delay(pk)
    return stale
