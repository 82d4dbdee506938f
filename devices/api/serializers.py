"""Field mapping only; the rules live in devices.services, devices.ingest and the models
(called from here, never restated)."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from devices.choices import LogLevel
from devices.models import (
    Alert,
    Device,
    DeviceGroup,
    EnrollmentToken,
    HardwareProfile,
    QueryGroup,
)


class TagListField(serializers.ListField):
    """Tag names in, tag names out (from a prefetched many-to-many)."""

    child = serializers.CharField(max_length=64)

    def to_representation(self, data):
        return sorted(tag.name for tag in data.all())


class DeviceSerializer(serializers.ModelSerializer):
    group = serializers.PrimaryKeyRelatedField(
        queryset=DeviceGroup.objects.all(), allow_null=True, required=False
    )
    group_name = serializers.CharField(source="group.name", read_only=True, default=None)
    tags = TagListField(required=False)
    hardware_profile = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Device
        fields = [
            "uid",
            "name",
            "group",
            "group_name",
            "tags",
            "hardware_profile",
            "inventory",
            "model_version",
            "agent_version",
            "status",
            "last_seen",
            "created_at",
        ]
        read_only_fields = [
            "uid",
            "inventory",
            "model_version",
            "agent_version",
            "status",
            "last_seen",
            "created_at",
        ]


class DeviceGroupSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeviceGroup
        fields = ["id", "name", "description", "offline_after_s", "created_at"]
        read_only_fields = ["id", "created_at"]


class QueryGroupSerializer(serializers.ModelSerializer):
    class Meta:
        model = QueryGroup
        fields = ["id", "name", "query", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_query(self, value: str) -> str:
        """The model's rule (`QueryGroup.clean`), as a 400 on `query`."""
        try:
            QueryGroup(query=value).clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return value


class EnrollmentTokenSerializer(serializers.ModelSerializer):
    tags = TagListField(required=False)
    group = serializers.PrimaryKeyRelatedField(
        queryset=DeviceGroup.objects.all(), allow_null=True, required=False
    )
    created_by = serializers.StringRelatedField()
    is_usable = serializers.BooleanField(read_only=True)

    class Meta:
        model = EnrollmentToken
        fields = [
            "id",
            "name",
            "prefix",
            "group",
            "tags",
            "expires_at",
            "max_uses",
            "uses",
            "is_usable",
            "created_by",
            "created_at",
            "revoked_at",
        ]
        read_only_fields = ["id", "prefix", "uses", "created_by", "created_at", "revoked_at"]


class EnrollmentTokenCreatedSerializer(EnrollmentTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; stored only hashed.")

    class Meta(EnrollmentTokenSerializer.Meta):
        fields = [*EnrollmentTokenSerializer.Meta.fields, "token"]


class AlertSerializer(serializers.ModelSerializer):
    device = serializers.SlugRelatedField(slug_field="uid", read_only=True)

    class Meta:
        model = Alert
        fields = ["id", "device", "kind", "state", "message", "detail", "opened_at", "resolved_at"]
        read_only_fields = fields


class LogLineSerializer(serializers.Serializer):
    boot_id = serializers.CharField()
    seq = serializers.IntegerField()
    ts = serializers.DateTimeField()
    level = serializers.ChoiceField(choices=LogLevel.choices)
    message = serializers.CharField()
    deployment_id = serializers.IntegerField(allow_null=True)


class HardwareProfileSerializer(serializers.ModelSerializer):
    class Meta:
        model = HardwareProfile
        fields = [
            "id",
            "slug",
            "name",
            "description",
            "arch",
            "intra_op_threads",
            "execution_provider",
            "ram_mb",
        ]
        read_only_fields = fields
