"""Field mapping only; every rule lives in ota.services."""

from __future__ import annotations

from rest_framework import serializers

from ota.models import (
    BenchmarkRequest,
    BenchmarkResult,
    Deployment,
    DeviceUpdate,
    Release,
    ReleaseVariant,
)


class ReleaseVariantSerializer(serializers.ModelSerializer):
    hardware_profile = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    model_version_label = serializers.SerializerMethodField()

    class Meta:
        model = ReleaseVariant
        fields = ["name", "model_version", "model_version_label", "hardware_profile"]

    def get_model_version_label(self, obj) -> str:
        return f"{obj.model_version.model.name}:{obj.model_version.number}"


class VariantInputSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=40, default="default")
    model_version = serializers.IntegerField()
    hardware_profile = serializers.CharField(required=False, allow_null=True, allow_blank=True)


class ReleaseSerializer(serializers.ModelSerializer):
    variants = ReleaseVariantSerializer(many=True, read_only=True)
    created_by = serializers.StringRelatedField()

    class Meta:
        model = Release
        fields = [
            "id",
            "name",
            "slot",
            "notes",
            "default_variant",
            "policy",
            "variants",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields


class ReleaseCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120)
    slot = serializers.SlugField(max_length=64, default="default")
    notes = serializers.CharField(required=False, allow_blank=True, default="")
    default_variant = serializers.SlugField(max_length=40, required=False, allow_null=True)
    policy = serializers.JSONField(required=False, default=dict)
    variants = VariantInputSerializer(many=True)
    allow_kpi_misses = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Release variants that missed their compression job's KPIs anyway.",
    )


class DeploymentSerializer(serializers.ModelSerializer):
    release_name = serializers.CharField(source="release.name", read_only=True)
    created_by = serializers.StringRelatedField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "release",
            "release_name",
            "kind",
            "slot",
            "target",
            "phases",
            "gates",
            "status",
            "current_phase",
            "pause_reason",
            "gate_report",
            "target_count",
            "scheduled_at",
            "install_window",
            "shadow",
            "rollback_of",
            "created_by",
            "created_at",
            "started_at",
            "phase_started_at",
            "finished_at",
            "evaluated_at",
        ]
        read_only_fields = fields


class DeploymentCreateSerializer(serializers.Serializer):
    release = serializers.IntegerField()
    target = serializers.JSONField()
    phases = serializers.JSONField(required=False, default=list)
    gates = serializers.JSONField(required=False, default=dict)
    scheduled_at = serializers.DateTimeField(required=False, allow_null=True)
    install_window = serializers.JSONField(required=False, allow_null=True)
    shadow = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text='Shadow mode: {"inferences": N, "seconds": T, "min_agreement": 0..1}. '
        "The agent runs the candidate beside the active model on the same inputs and "
        "switches only at that agreement; the gate min_shadow_agreement pauses the rollout.",
    )


class PreviewSerializer(serializers.Serializer):
    target = serializers.JSONField()
    phases = serializers.JSONField(required=False, default=list)


class PauseSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False, default="paused by operator")


class DeviceUpdateSerializer(serializers.ModelSerializer):
    device = serializers.SlugRelatedField(slug_field="uid", read_only=True)

    class Meta:
        model = DeviceUpdate
        fields = [
            "id",
            "deployment",
            "device",
            "slot",
            "phase",
            "state",
            "manifest_version",
            "model_label",
            "previous_label",
            "attempts",
            "error",
            "error_code",
            "shadow",
            "assigned_at",
            "started_at",
            "finished_at",
            "updated_at",
        ]
        read_only_fields = fields


class BenchmarkResultSerializer(serializers.ModelSerializer):
    device = serializers.SlugRelatedField(source="run.device", slug_field="uid", read_only=True)
    hardware_profile = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    model_version = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = BenchmarkResult
        fields = [
            "model_version",
            "device",
            "hardware_profile",
            "state",
            "predicted_p95_ms",
            *BenchmarkResult.FIGURES,
            "error",
            "measured_at",
        ]
        read_only_fields = fields


class BenchmarkRequestSerializer(serializers.ModelSerializer):
    versions = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    runs = serializers.SerializerMethodField()
    results = serializers.SerializerMethodField()

    class Meta:
        model = BenchmarkRequest
        fields = [
            "id",
            "versions",
            "target",
            "inferences",
            "expires_at",
            "job",
            "created_at",
            "runs",
            "results",
        ]
        read_only_fields = fields

    def get_runs(self, obj) -> dict:
        counts: dict[str, int] = {}
        for state in obj.runs.values_list("state", flat=True):
            counts[state] = counts.get(state, 0) + 1
        return counts

    def get_results(self, obj) -> list[dict]:
        rows = BenchmarkResult.objects.filter(run__request=obj).select_related(
            "run__device", "hardware_profile"
        )
        return BenchmarkResultSerializer(rows, many=True).data


class BenchmarkCreateSerializer(serializers.Serializer):
    versions = serializers.JSONField(help_text="ModelVersion ids, 1 to 20")
    target = serializers.JSONField(help_text="groups / hardware_profiles / tags / devices")
    inferences = serializers.JSONField(required=False, default=200)
    expires_in_s = serializers.JSONField(required=False, default=3600)
    job = serializers.IntegerField(required=False, allow_null=True, default=None)
