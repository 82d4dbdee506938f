"""Jobs API: start, list, inspect and cancel compression jobs.

Serializers map fields; `compression.jobs.create_job` validates.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from compression import jobs
from compression.choices import JobMode
from compression.models import Candidate, CompressionJob, Dataset, ModelVersion
from devices.models import HardwareProfile
from fleet import audit
from fleet.refusal import Refusal
from fleet.roles import Role


class CandidateSerializer(serializers.ModelSerializer):
    version_number = serializers.IntegerField(source="version.number", read_only=True, default=None)

    class Meta:
        model = Candidate
        fields = [
            "id",
            "recipe",
            "metrics",
            "error",
            "violations",
            "meets_kpis",
            "on_pareto",
            "chosen",
            "version",
            "version_number",
        ]
        read_only_fields = fields


# What a client submits when it creates a job; every other field is the server's.
WRITABLE_FIELDS = (
    "source",
    "mode",
    "recipes",
    "kpis",
    "options",
    "hardware_profile",
    "calibration",
    "evaluation",
    "time_budget_s",
)


class CompressionJobSerializer(serializers.ModelSerializer):
    hardware_profile = serializers.SlugRelatedField(
        slug_field="slug", queryset=HardwareProfile.objects.all(), required=False, allow_null=True
    )
    mode = serializers.ChoiceField(choices=JobMode.choices, default=JobMode.AUTO)
    recipes = serializers.ListField(
        child=serializers.CharField(max_length=120), required=False, default=list
    )
    kpis = serializers.DictField(
        required=False,
        default=dict,
        help_text="max_latency_ms, max_accuracy_drop (points), min_fidelity (0–1), max_size_mb",
    )
    options = serializers.DictField(
        required=False,
        default=dict,
        help_text="training recipes: training (auto: add qat), epochs, finetune_epochs, "
        "distill {ratio, student_version}; the last step on devices: device_benchmark "
        "{target {groups, hardware_profiles, devices}, choose, timeout_s}",
    )
    source = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all())
    calibration = serializers.PrimaryKeyRelatedField(
        queryset=Dataset.objects.all(), required=False, allow_null=True
    )
    evaluation = serializers.PrimaryKeyRelatedField(  # none: latency-only
        queryset=Dataset.objects.all(), required=False, allow_null=True
    )
    candidates = CandidateSerializer(many=True, read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)

    class Meta:
        model = CompressionJob
        fields = [
            "id",
            *WRITABLE_FIELDS,
            "status",
            "progress",
            "current_step",
            "log",
            "error",
            "result",
            "cancel_requested",
            "attempts",
            "worker_host",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "device_choice",
            "device_deadline",
            "candidates",
        ]
        read_only_fields = [name for name in fields if name not in WRITABLE_FIELDS]


class CompressionJobViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = CompressionJobSerializer
    action_roles = {"cancel": Role.OPERATOR}
    ci_actions = {"create"}

    def get_queryset(self):
        qs = CompressionJob.objects.select_related("hardware_profile", "created_by")
        return qs.prefetch_related("candidates__version")

    @extend_schema(
        responses={
            201: CompressionJobSerializer,
            400: OpenApiResponse(description="Refused, with `code` and `detail`"),
        }
    )
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            job = jobs.create_job(
                data["source"],
                mode=data["mode"],
                recipes=data["recipes"],
                kpis=data["kpis"],
                hardware_profile=data.get("hardware_profile"),
                calibration=data.get("calibration"),
                evaluation=data.get("evaluation"),
                time_budget_s=data.get("time_budget_s", 600),
                actor=request.user,
                options=data.get("options"),
            )
        except jobs.JobRejected as exc:
            audit.note(request, "job.create", data["source"], refused=exc.code)
            raise
        audit.note(request, "job.create", job)
        return Response(self.get_serializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={202: CompressionJobSerializer, 409: OpenApiResponse(description="Already over")},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = self.get_object()
        accepted = jobs.cancel_job(job)
        audit.note(request, "job.cancel", job, accepted=accepted)
        if not accepted:
            raise Refusal(
                "job_over", "The job has already ended.", 409, extra={"status": job.status}
            )
        return Response(self.get_serializer(job).data, status=status.HTTP_202_ACCEPTED)
