"""Serializers map fields and nothing else; validation lives in services."""

from __future__ import annotations

from rest_framework import serializers

from compression.choices import DatasetPurpose, ModelTask
from compression.models import Dataset, MLModel, ModelVersion


class ModelVersionSerializer(serializers.ModelSerializer):
    model_name = serializers.CharField(source="model.name", read_only=True)
    parent_number = serializers.IntegerField(source="parent.number", read_only=True, default=None)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "model",
            "model_name",
            "number",
            "parent",
            "parent_number",
            "recipe",
            "notes",
            "sha256",
            "size_bytes",
            "ir_version",
            "opsets",
            "producer",
            "inputs",
            "outputs",
            "parameters",
            "flops",
            "op_histogram",
            "metrics",
            "original_filename",
            "created_by",
            "created_at",
            "download_url",
            "status",
            "error_code",
            "error",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "status": {
                "help_text": "`validating` until a worker has checked the upload, then "
                "`ready` (usable) or `rejected` (see `error_code`, `error`)."
            },
            "error_code": {
                "help_text": "Why a version was rejected, as a slug (`external_data`, "
                "`inference_memory`, …); empty otherwise."
            },
            "error": {"help_text": "Why a version was rejected, for people; empty otherwise."},
        }

    def get_download_url(self, obj) -> str:
        request = self.context.get("request")
        url = f"/api/v1/models/{obj.model_id}/versions/{obj.number}/download/"
        return request.build_absolute_uri(url) if request else url


class VersionUploadSerializer(serializers.Serializer):
    # Empty files reach the service, which refuses them with the uniform `empty` code.
    file = serializers.FileField(
        allow_empty_file=True, help_text="An ONNX model (.onnx), no external data."
    )
    parent = serializers.IntegerField(required=False, help_text="Id of the parent version.")
    notes = serializers.CharField(required=False, allow_blank=True, default="")


class MLModelSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True, default=None)
    version_count = serializers.IntegerField(source="versions.count", read_only=True)
    latest_version = serializers.SerializerMethodField()
    task = serializers.ChoiceField(choices=ModelTask.choices, default=ModelTask.CLASSIFICATION)

    class Meta:
        model = MLModel
        fields = [
            "id",
            "name",
            "task",
            "description",
            "owner",
            "created_at",
            "version_count",
            "latest_version",
        ]
        read_only_fields = ["id", "owner", "created_at", "version_count", "latest_version"]

    def get_latest_version(self, obj) -> int | None:
        latest = obj.latest_version()
        return latest.number if latest else None


class DatasetSerializer(serializers.ModelSerializer):
    file = serializers.FileField(write_only=True, help_text="A .npz: one array per input.")
    purpose = serializers.ChoiceField(choices=DatasetPurpose.choices)

    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "purpose",
            "model",
            "file",
            "sha256",
            "size_bytes",
            "sample_count",
            "arrays",
            "has_labels",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "sha256",
            "size_bytes",
            "sample_count",
            "arrays",
            "has_labels",
            "created_at",
        ]
