"""The model registry: models, their versions (with lineage) and datasets."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from compression.choices import DatasetPurpose, ModelTask


class MLModel(models.Model):
    name = models.CharField(_("name"), max_length=120, unique=True)
    task = models.CharField(
        _("task"), max_length=20, choices=ModelTask.choices, default=ModelTask.CLASSIFICATION
    )
    description = models.TextField(_("description"), blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
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
        return self.versions.order_by("-number").first()


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
    def label(self) -> str:
        recipe = (self.recipe or {}).get("name")
        return f"v{self.number}" + (f" ({recipe})" if recipe else "")

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
