"""The model registry: models, their versions (with lineage) and datasets."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from compression.choices import (
    DatasetPurpose,
    DeviceChoice,
    JobMode,
    JobStatus,
    ModelTask,
    VersionStatus,
)


class MLModel(models.Model):
    name = models.CharField(_("name"), max_length=120, unique=True)
    task = models.CharField(
        _("task"), max_length=20, choices=ModelTask.choices, default=ModelTask.CLASSIFICATION
    )
    description = models.TextField(_("description"), blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="ml_models",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("model")
        verbose_name_plural = _("models")

    def __str__(self) -> str:
        return self.name

    def latest_version(self) -> ModelVersion | None:
        """The newest version that is not rejected (it may still be validating)."""
        return self.versions.exclude(status=VersionStatus.REJECTED).order_by("-number").first()


class ModelVersion(models.Model):
    """One immutable ONNX artifact of a model, validated and fingerprinted."""

    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField(_("version"))
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    recipe = models.JSONField(default=dict, blank=True)
    notes = models.TextField(blank=True)
    artifact = models.CharField(max_length=200)  # storage name: models/<sha256>.onnx
    original_filename = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    ir_version = models.PositiveIntegerField(null=True)
    opsets = models.JSONField(default=dict)
    producer = models.CharField(max_length=200, blank=True)
    inputs = models.JSONField(default=list)
    outputs = models.JSONField(default=list)
    parameters = models.BigIntegerField(default=0)
    flops = models.BigIntegerField(null=True, blank=True)
    op_histogram = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict, blank=True)
    # Uploads are validated on a worker; only `ready` versions can be released,
    # compressed or downloaded. A rejected one keeps its row with the reason.
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=VersionStatus.choices,
        default=VersionStatus.READY,
        db_index=True,
    )
    error_code = models.CharField(max_length=40, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="uniq_model_version_number"),
        ]
        verbose_name = _("model version")
        verbose_name_plural = _("model versions")

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"

    @property
    def is_ready(self) -> bool:
        return self.status == VersionStatus.READY

    def mark_ready(self, **described) -> bool:
        """validating → ready with what validation found; False if already decided."""
        moved = ModelVersion.objects.filter(pk=self.pk, status=VersionStatus.VALIDATING).update(
            status=VersionStatus.READY, **described
        )
        self.refresh_from_db()
        return bool(moved)

    def mark_rejected(self, code: str, message: str) -> bool:
        """validating → rejected with the reason; False if already decided."""
        moved = ModelVersion.objects.filter(pk=self.pk, status=VersionStatus.VALIDATING).update(
            status=VersionStatus.REJECTED, error_code=code[:40], error=message[:4000]
        )
        self.refresh_from_db()
        return bool(moved)

    @property
    def label(self) -> str:
        recipe = (self.recipe or {}).get("name")
        return f"v{self.number}" + (f" ({recipe})" if recipe else "")

    @property
    def device_label(self) -> str:
        """How devices name this version in inventory and telemetry (`digits:3`)."""
        return f"{self.model.name}:{self.number}"

    @property
    def download_name(self) -> str:
        return f"{self.model.name}-v{self.number}.onnx"

    def lineage(self) -> list[ModelVersion]:
        """This version and its ancestors, oldest first (cycle-safe)."""
        chain, seen, node = [], set(), self
        while node is not None and node.pk not in seen:
            chain.append(node)
            seen.add(node.pk)
            node = node.parent
        return list(reversed(chain))


class Dataset(models.Model):
    """A `.npz` with one array per model input (first axis = sample), optional `labels`."""

    name = models.CharField(_("name"), max_length=120)
    purpose = models.CharField(_("purpose"), max_length=20, choices=DatasetPurpose.choices)
    model = models.ForeignKey(
        MLModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="datasets"
    )
    artifact = models.CharField(max_length=200)  # storage name: datasets/<sha256>.npz
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    sample_count = models.PositiveIntegerField()
    arrays = models.JSONField(default=dict)  # name -> {"dtype", "shape"}
    has_labels = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("dataset")
        verbose_name_plural = _("datasets")

    def __str__(self) -> str:
        return f"{self.name} ({self.get_purpose_display()})"


LOG_LINES_KEPT = 200  # the job page shows a tail; the full story is in the worker log


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CompressionJob(models.Model):
    """One request to derive measured variants of a model version.

    State machine: queued → running → succeeded | failed | cancelled. Every
    transition is a conditional UPDATE on the status column, so two workers
    (a redelivered message, a duplicate) can never both own the job.
    """

    source = models.ForeignKey(
        ModelVersion,
        on_delete=models.PROTECT,
        related_name="jobs",
        verbose_name=_("source version"),
    )
    mode = models.CharField(_("mode"), max_length=10, choices=JobMode.choices, default=JobMode.AUTO)
    recipes = models.JSONField(_("recipes"), default=list, blank=True)
    kpis = models.JSONField(_("KPIs"), default=dict, blank=True)
    hardware_profile = models.ForeignKey(
        "devices.HardwareProfile",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="compression_jobs",
        verbose_name=_("hardware profile"),
    )
    calibration = models.ForeignKey(
        Dataset,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("calibration data"),
    )
    # none: latency-only (generated inputs, fidelity unknown)
    evaluation = models.ForeignKey(
        Dataset,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("evaluation data"),
    )
    time_budget_s = models.PositiveIntegerField(_("time budget (s)"), default=600)
    # training recipes' settings: {"training": bool, "epochs": n, "finetune_epochs": n,
    # "distill": {"ratio": r, "student_version": id}}
    options = models.JSONField(_("options"), default=dict, blank=True)

    status = models.CharField(
        _("status"),
        max_length=10,
        choices=JobStatus.choices,
        default=JobStatus.QUEUED,
        db_index=True,
    )
    progress = models.FloatField(_("progress"), default=0.0)  # 0..1
    current_step = models.CharField(_("current step"), max_length=200, blank=True)
    log = models.JSONField(default=list, blank=True)  # last LOG_LINES_KEPT lines
    error = models.TextField(_("error"), blank=True)
    result = models.JSONField(default=dict, blank=True)  # reason, pareto, chosen, host, seconds
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    worker_host = models.CharField(_("worker host"), max_length=255, blank=True)
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # the last step, on devices (compression.device_choice): "" → requested | waiting →
    # measured | estimate; the decision is in result["device_choice"]
    device_choice = models.CharField(
        _("device choice"), max_length=10, choices=DeviceChoice.choices, default="", blank=True
    )
    device_deadline = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = _("compression job")
        verbose_name_plural = _("compression jobs")

    def __str__(self) -> str:
        return f"job {self.pk} ({self.source})"

    @property
    def is_live(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def progress_percent(self) -> int:
        return round((self.progress or 0) * 100)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return round((end - self.started_at).total_seconds(), 1)

    @property
    def eta_s(self) -> float | None:
        """Seconds left, extrapolated from progress and capped by the time budget;
        None until there is enough progress to extrapolate from."""
        elapsed = self.duration_s
        if not self.is_live or elapsed is None or (self.progress or 0) < 0.05:
            return None
        linear = elapsed * (1 - self.progress) / self.progress
        return max(0.0, min(linear, self.time_budget_s - elapsed))

    # --- transitions -----------------------------------------------------------
    def _claimant_gone(self) -> bool:
        """The previous claimant is dead (same machine) or silent for too long."""
        stale = timezone.now() - timedelta(seconds=settings.EDGEFLEET_JOB_STALE_S)
        if self.heartbeat_at is None or self.heartbeat_at < stale:
            return True
        if self.worker_host != socket.gethostname():
            return False
        # Our own pid: a prefork child runs one task at a time, so the earlier run has ended
        # (a transient-error retry); otherwise the claimant must still be alive.
        return self.worker_pid == os.getpid() or not _pid_alive(self.worker_pid)

    def mark_running(self) -> bool:
        """Claim the job for this process. True if we own it now.

        A queued job is claimed once. A running job is taken over only when its
        claimant is gone (SIGKILLed child, lost machine): that is a redelivery,
        not a duplicate. A duplicate message for a live or finished job loses.
        """
        now = timezone.now()
        owned = {
            "status": JobStatus.RUNNING,
            "attempts": F("attempts") + 1,
            "worker_host": socket.gethostname(),
            "worker_pid": os.getpid(),
            "heartbeat_at": now,
        }
        queued = Q(status=JobStatus.QUEUED, cancel_requested=False)
        if CompressionJob.objects.filter(queued, pk=self.pk).update(started_at=now, **owned):
            self.refresh_from_db()
            return True
        self.refresh_from_db()
        if self.status != JobStatus.RUNNING or not self._claimant_gone():
            return False
        # Take over only from the exact claimant we judged gone (no race with a third worker).
        claimed = CompressionJob.objects.filter(
            pk=self.pk,
            status=JobStatus.RUNNING,
            worker_pid=self.worker_pid,
            worker_host=self.worker_host,
            attempts=self.attempts,
        ).update(**owned)
        self.refresh_from_db()
        return bool(claimed)

    def _finish(self, status: str, **fields) -> bool:
        fields.update(status=status, finished_at=timezone.now())
        done = CompressionJob.objects.filter(
            pk=self.pk, status__in=[JobStatus.QUEUED, JobStatus.RUNNING]
        ).update(**fields)
        self.refresh_from_db()
        return bool(done)

    def mark_succeeded(self, result: dict) -> bool:
        return self._finish(
            JobStatus.SUCCEEDED, result=result, progress=1.0, current_step=str(_("done")), error=""
        )

    def mark_failed(self, error: str) -> bool:
        return self._finish(JobStatus.FAILED, error=error[:4000])

    def mark_cancelled(self) -> bool:
        return self._finish(JobStatus.CANCELLED, current_step=str(_("cancelled")))

    def request_cancel(self) -> bool:
        """A queued job is cancelled at once; a running one is asked to stop. False if over."""
        if CompressionJob.objects.filter(pk=self.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.CANCELLED,
            cancel_requested=True,
            finished_at=timezone.now(),
            current_step=str(_("cancelled")),
        ):
            self.refresh_from_db()
            return True
        updated = CompressionJob.objects.filter(pk=self.pk, status=JobStatus.RUNNING).update(
            cancel_requested=True
        )
        self.refresh_from_db()
        return bool(updated)

    def report(self, *, progress: float, step: str, log: list[str]) -> None:
        """Progress written by the owner only (the ProgressReporter throttles the calls)."""
        CompressionJob.objects.filter(pk=self.pk, status=JobStatus.RUNNING).update(
            progress=progress,
            current_step=step[:200],
            log=log[-LOG_LINES_KEPT:],
            heartbeat_at=timezone.now(),
        )

    def ask_devices(self, state: str, *, deadline=None, result: dict | None = None) -> bool:
        """ "" → requested (devices only measure), waiting (their results will choose) or
        estimate (the request was refused), for a job that succeeded. False if asked
        already: a job asks its devices once."""
        fields = {"device_choice": state, "device_deadline": deadline}
        if result is not None:
            fields["result"] = result
        moved = CompressionJob.objects.filter(
            pk=self.pk, status=JobStatus.SUCCEEDED, device_choice=DeviceChoice.NONE
        ).update(**fields)
        self.refresh_from_db()
        return bool(moved)

    def decide_by_devices(self, state: str, result: dict) -> bool:
        """waiting → measured | estimate with the new result, once, and only for a job
        that succeeded. False if another decider was first."""
        assert state in (DeviceChoice.MEASURED, DeviceChoice.ESTIMATE)
        moved = CompressionJob.objects.filter(
            pk=self.pk, status=JobStatus.SUCCEEDED, device_choice=DeviceChoice.WAITING
        ).update(device_choice=state, result=result)
        self.refresh_from_db()
        return bool(moved)

    def cancel_was_requested(self) -> bool:
        return CompressionJob.objects.filter(pk=self.pk, cancel_requested=True).exists()


class Candidate(models.Model):
    """One recipe tried by a job, with its measurements and verdicts."""

    job = models.ForeignKey(CompressionJob, on_delete=models.CASCADE, related_name="candidates")
    recipe = models.CharField(_("recipe"), max_length=120)
    metrics = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    violations = models.JSONField(default=list, blank=True)
    meets_kpis = models.BooleanField(default=False)
    on_pareto = models.BooleanField(default=False)
    chosen = models.BooleanField(default=False)
    version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="candidates"
    )

    class Meta:
        ordering = ["job", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["job", "recipe"], name="uniq_job_candidate_recipe"),
        ]
        verbose_name = _("candidate")
        verbose_name_plural = _("candidates")

    def __str__(self) -> str:
        return f"{self.recipe} (job {self.job_id})"

    @property
    def is_original(self) -> bool:
        return self.recipe == "fp32"

    @property
    def throughput(self) -> float | None:
        """Inferences/s at the first measured batch size (batch 1, or the model's fixed batch)."""
        values = (self.metrics or {}).get("throughput_ips") or {}
        return next(iter(values.values()), None)
