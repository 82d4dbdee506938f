"""Operator API: devices, groups, query groups, enrollment tokens, alerts, hardware
profiles."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from devices import metrics, query, services
from devices.api.serializers import (
    AlertSerializer,
    DeviceGroupSerializer,
    DeviceSerializer,
    EnrollmentTokenCreatedSerializer,
    EnrollmentTokenSerializer,
    HardwareProfileSerializer,
    LogLineSerializer,
    QueryGroupSerializer,
)
from devices.models import (
    Alert,
    Device,
    DeviceGroup,
    EnrollmentToken,
    HardwareProfile,
    LogLine,
    QueryGroup,
)
from fleet import audit
from fleet.roles import Role

FILTERS = [
    OpenApiParameter(name, str, description=text)
    for name, text in [
        ("group", "group id"),
        ("tag", "tag name"),
        ("status", "online / offline / revoked"),
        ("hardware", "hardware profile slug"),
        ("model_version", "installed model version"),
        ("q", "search uid or name"),
        ("query", "query-group expression, e.g. hardware=rpi4"),
        ("query_group", "query group id"),
    ]
]


@extend_schema(parameters=FILTERS)
class DeviceViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = DeviceSerializer
    lookup_field = "uid"
    lookup_value_regex = r"[A-Za-z0-9._:-]+"
    write_role = Role.ADMIN  # moving devices and tagging them is fleet administration
    action_roles = {"revoke": Role.ADMIN}
    http_method_names = ["get", "patch", "post", "head", "options"]

    def get_queryset(self):
        queryset = (
            Device.objects.select_related("group", "hardware_profile")
            .prefetch_related("tags")
            .order_by("uid")
        )
        if self.action != "list":
            return queryset
        try:
            return query.filter_by_params(queryset, self.request.query_params)
        except DjangoValidationError as exc:
            raise ValidationError({"query": exc.messages}) from None

    def perform_update(self, serializer):
        device = serializer.instance
        data = serializer.validated_data
        try:
            services.update_device(device, data)
        except services.DeviceError as exc:
            raise ValidationError({"tags": [exc.message]}) from None
        audit.note(self.request, "device.update", device, fields=sorted(data))

    @extend_schema(request=None, responses={200: DeviceSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, uid=None):
        device = self.get_object()
        count = services.revoke_device(device)
        audit.note(request, "device.revoke", device, credentials=count)
        return Response(self.get_serializer(device).data)

    @extend_schema(
        parameters=[OpenApiParameter("minutes", int)], responses={200: {"type": "object"}}
    )
    @action(detail=True, methods=["get"])
    def telemetry(self, request, uid=None):
        minutes = _int_param(request, "minutes", 60, 1, 7 * 24 * 60)
        return Response(metrics.series(self.get_object(), minutes))

    @extend_schema(
        parameters=[OpenApiParameter("level", str)], responses={200: LogLineSerializer(many=True)}
    )
    @action(detail=True, methods=["get"])
    def logs(self, request, uid=None):
        lines = LogLine.objects.filter(device=self.get_object()).order_by("-ts", "-seq")
        if request.query_params.get("level"):
            lines = lines.filter(level=request.query_params["level"])
        page = self.paginate_queryset(lines)
        return self.get_paginated_response(LogLineSerializer(page, many=True).data)


def _int_param(request, name, default, low, high) -> int:
    raw = request.query_params.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValidationError({name: ["must be an integer"]}) from None
    return max(low, min(high, value))


class DeviceGroupViewSet(viewsets.ModelViewSet):
    queryset = DeviceGroup.objects.order_by("name")
    serializer_class = DeviceGroupSerializer
    write_role = Role.ADMIN

    def perform_create(self, serializer):
        audit.note(self.request, "group.create", serializer.save())

    def perform_update(self, serializer):
        audit.note(self.request, "group.update", serializer.save())

    def perform_destroy(self, instance):
        audit.note(self.request, "group.delete", instance)
        instance.delete()


class QueryGroupViewSet(viewsets.ModelViewSet):
    queryset = QueryGroup.objects.order_by("name")
    serializer_class = QueryGroupSerializer
    write_role = Role.ADMIN

    def perform_create(self, serializer):
        audit.note(self.request, "query_group.create", serializer.save())

    def perform_update(self, serializer):
        audit.note(self.request, "query_group.update", serializer.save())

    @extend_schema(responses={200: DeviceSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def devices(self, request, pk=None):
        devices = (
            self.get_object()
            .devices()
            .select_related("group", "hardware_profile")
            .prefetch_related("tags")
            .order_by("uid")
        )
        page = self.paginate_queryset(devices)
        return self.get_paginated_response(DeviceSerializer(page, many=True).data)


class EnrollmentTokenViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Admins only: an enrollment token lets anything that holds it join the fleet."""

    serializer_class = EnrollmentTokenSerializer
    read_role = Role.ADMIN
    write_role = Role.ADMIN

    def get_queryset(self):
        return EnrollmentToken.objects.select_related("created_by").prefetch_related("tags")

    @extend_schema(responses={201: EnrollmentTokenCreatedSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            token, value = services.create_enrollment_token(
                actor=request.user, **serializer.validated_data
            )
        except services.DeviceError as exc:
            raise ValidationError({"tags": [exc.message]}) from None
        audit.note(request, "enrollment_token.create", token)
        token.token = value
        return Response(EnrollmentTokenCreatedSerializer(token).data, status=201)

    @extend_schema(request=None, responses={200: EnrollmentTokenSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        token = self.get_object()
        token.revoke()
        audit.note(request, "enrollment_token.revoke", token)
        return Response(self.get_serializer(token).data)


class AlertViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = AlertSerializer

    def get_queryset(self):
        alerts = Alert.objects.select_related("device").order_by("-opened_at")
        state = self.request.query_params.get("state")
        return alerts.filter(state=state) if state else alerts


class HardwareProfileViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = HardwareProfile.objects.order_by("name")
    serializer_class = HardwareProfileSerializer
    lookup_field = "slug"
