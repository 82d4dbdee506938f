from django.db import models
from django.utils.translation import gettext_lazy as _


class ModelTask(models.TextChoices):
    CLASSIFICATION = "classification", _("Image classification")
    DETECTION = "detection", _("Object detection")
    SEGMENTATION = "segmentation", _("Segmentation")
    REGRESSION = "regression", _("Regression / sensor model")
    ANOMALY = "anomaly", _("Anomaly detection")
    OTHER = "other", _("Other")


class DatasetPurpose(models.TextChoices):
    CALIBRATION = "calibration", _("Calibration")
    EVALUATION = "evaluation", _("Evaluation")


class VersionStatus(models.TextChoices):
    """An uploaded version is validated on a worker: `validating` until then."""

    VALIDATING = "validating", _("Validating")
    READY = "ready", _("Ready")
    REJECTED = "rejected", _("Rejected")


class JobMode(models.TextChoices):
    RECIPES = "recipes", _("Explicit recipes")
    AUTO = "auto", _("Auto (search against KPIs)")


class JobStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")


# KPI name -> (label, lower bound exclusive, upper bound inclusive or None)
JOB_KPIS: dict[str, tuple] = {
    "max_latency_ms": (_("Max latency p50 (ms)"), 0.0, None),
    "max_accuracy_drop": (_("Max accuracy drop (points)"), -0.000001, 100.0),
    "min_fidelity": (_("Min fidelity (top-1 agreement, 0–1)"), 0.0, 1.0),
    "max_size_mb": (_("Max size (MB)"), 0.0, None),
}


class DeviceChoice(models.TextChoices):
    """A job's last step, asked for in its options (`compression.device_choice`)."""

    NONE = "", _("not asked")
    REQUESTED = "requested", _("benchmark requested")
    WAITING = "waiting", _("waiting for device results")
    MEASURED = "measured", _("chosen by device results")
    ESTIMATE = "estimate", _("estimate kept")
