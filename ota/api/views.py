"""Operator API: releases, deployments (+ actions), device updates. Thin: parse,
authorize, call one service, serialize."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from fleet import audit
from fleet.refusal import Refusal
from fleet.roles import Role
from ota import benchmarks, services
from ota.api import serializers as s
from ota.models import BenchmarkRequest, Deployment, DeviceUpdate, Release


class ReleaseViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Release.objects.prefetch_related(
        "variants__model_version__model", "variants__hardware_profile"
    ).select_related("created_by")
    serializer_class = s.ReleaseSerializer
    ci_actions = {"create"}

    @extend_schema(request=s.ReleaseCreateSerializer, responses={201: s.ReleaseSerializer})
    def create(self, request):
        data = s.ReleaseCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        release = services.create_release(**data.validated_data, actor=request.user)
        audit.note(request, "release.create", release)
        return Response(s.ReleaseSerializer(release).data, status=status.HTTP_201_CREATED)


class DeploymentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Deployment.objects.select_related("release", "created_by")
    serializer_class = s.DeploymentSerializer
    action_roles = {"preview": Role.VIEWER}
    ci_actions = {"create"}  # canaries only: ota.services checks what a CI rollout may be

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.request.query_params.get("status"):
            queryset = queryset.filter(status=self.request.query_params["status"])
        return queryset

    @extend_schema(request=s.DeploymentCreateSerializer, responses={201: s.DeploymentSerializer})
    def create(self, request):
        data = s.DeploymentCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        release = Release.objects.filter(pk=fields.pop("release")).first()
        if release is None:
            raise Refusal("bad_release", "Unknown release.")
        deployment = services.start_deployment(
            release, fields.pop("target"), actor=request.user, **fields
        )
        audit.note(
            request,
            "deployment.start",
            deployment,
            devices=deployment.target_count,
            phases=deployment.phases,
        )
        return Response(s.DeploymentSerializer(deployment).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.PreviewSerializer, responses={200: dict})
    @action(detail=False, methods=["post"])
    def preview(self, request):
        data = s.PreviewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(
            services.preview(data.validated_data["target"], data.validated_data["phases"])
        )

    def _act(self, request, name: str, done: bool):
        deployment = self.get_object()
        audit.note(request, f"deployment.{name}", deployment)
        if not done:
            raise Refusal("bad_state", f"Cannot {name} a {deployment.status} deployment.", 409)
        deployment.refresh_from_db()
        return Response(s.DeploymentSerializer(deployment).data)

    @extend_schema(request=s.PauseSerializer, responses={200: s.DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        data = s.PauseSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return self._act(
            request, "pause", services.pause(self.get_object(), data.validated_data["reason"])
        )

    @extend_schema(request=None, responses={200: s.DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._act(request, "resume", services.resume(self.get_object()))

    @extend_schema(request=None, responses={200: s.DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        try:
            done = services.approve(self.get_object(), actor=request.user)
        except services.OtaError as exc:
            audit.note(request, "deployment.approve", self.get_object(), refused=exc.code)
            raise
        return self._act(request, "approve", done)

    @extend_schema(request=None, responses={200: s.DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def abort(self, request, pk=None):
        return self._act(request, "abort", services.abort(self.get_object()))

    @extend_schema(request=None, responses={201: s.DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        deployment = self.get_object()
        back = services.rollback(deployment, actor=request.user)
        audit.note(request, "deployment.rollback", deployment, rollback=back.pk)
        return Response(s.DeploymentSerializer(back).data, status=status.HTTP_201_CREATED)


class DeviceUpdateViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    queryset = DeviceUpdate.objects.select_related("device")
    serializer_class = s.DeviceUpdateSerializer

    def get_queryset(self):
        queryset = super().get_queryset()
        params = self.request.query_params
        if params.get("deployment", "").isdigit():
            queryset = queryset.filter(deployment_id=int(params["deployment"]))
        if params.get("device"):
            queryset = queryset.filter(device__uid=params["device"])
        if params.get("state"):
            queryset = queryset.filter(state=params["state"])
        return queryset


class BenchmarkViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """On-device benchmarks of chosen versions on chosen devices, before any rollout."""

    queryset = BenchmarkRequest.objects.prefetch_related("versions")
    serializer_class = s.BenchmarkRequestSerializer

    @extend_schema(
        request=s.BenchmarkCreateSerializer, responses={201: s.BenchmarkRequestSerializer}
    )
    def create(self, request):
        data = s.BenchmarkCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        job = None
        if fields.pop("job") is not None:
            from compression.models import CompressionJob

            job = CompressionJob.objects.filter(pk=request.data.get("job")).first()
            if job is None:
                raise services.OtaError("bad_job", "Unknown job.", field="job")
        created = benchmarks.create_request(**fields, job=job, actor=request.user)
        audit.note(request, "benchmark.create", created, devices=created.runs.count())
        return Response(s.BenchmarkRequestSerializer(created).data, status=status.HTTP_201_CREATED)
