"""Registry API: thin views that parse, authorize, call one service, serialize."""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.db import IntegrityError
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from compression import services, uploads
from compression.api.serializers import (
    DatasetSerializer,
    MLModelSerializer,
    ModelVersionSerializer,
    VersionUploadSerializer,
)
from compression.models import Dataset, MLModel, ModelVersion
from fleet import audit
from fleet.refusal import Refusal
from fleet.roles import Role


def version_artifact(version: ModelVersion):
    """The version's bytes, or 409 while it is validating / once rejected."""
    if not version.is_ready:
        raise Refusal(
            "not_ready",
            f"Version {version} is {version.status}.",
            409,
            extra={"status": version.status},
        )
    return artifact_response(version.artifact, version.download_name, version.sha256)


def artifact_response(name: str, filename: str, sha256: str) -> FileResponse:
    response = FileResponse(default_storage.open(name, "rb"), as_attachment=True, filename=filename)
    response["ETag"] = f'"{sha256}"'
    response["X-Content-SHA256"] = sha256
    return response


class MLModelViewSet(viewsets.ModelViewSet):
    queryset = MLModel.objects.select_related("owner").order_by("name")
    serializer_class = MLModelSerializer
    action_roles = {"destroy": Role.ADMIN}
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        name = self.request.query_params.get("name")
        return self.queryset.filter(name=name) if name else self.queryset

    def perform_create(self, serializer):
        try:
            model = services.create_model(owner=self.request.user, **serializer.validated_data)
        except IntegrityError:
            raise ValidationError({"name": ["A model with this name already exists."]}) from None
        serializer.instance = model
        audit.note(self.request, "model.create", model)

    def perform_update(self, serializer):
        audit.note(self.request, "model.update", serializer.save())

    def perform_destroy(self, instance):
        audit.note(self.request, "model.delete", instance)
        instance.delete()


class ModelVersionListView(APIView):
    """GET the versions of a model; POST a new version (multipart `file`)."""

    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(responses=ModelVersionSerializer(many=True))
    def get(self, request, model_pk: int):
        model = get_object_or_404(MLModel, pk=model_pk)
        versions = model.versions.select_related("model", "parent", "created_by")
        serializer = ModelVersionSerializer(versions, many=True, context={"request": request})
        return Response(serializer.data)

    @extend_schema(
        request=VersionUploadSerializer,
        description=(
            "Stores the file and answers at once: 202 with the new version in status "
            "`validating`. A worker then validates it in a sandbox; poll the version "
            "(`GET /api/v1/versions/{id}/`) until `status` is `ready` or `rejected` "
            "(then `error_code` and `error` say why). Only the cheap checks (extension, "
            "empty file, size, ONNX magic byte) refuse the upload itself with 400/413."
        ),
        responses={
            202: OpenApiResponse(ModelVersionSerializer, "Stored; status `validating`"),
            200: OpenApiResponse(ModelVersionSerializer, "Same bytes: the existing version"),
            400: OpenApiResponse(description="Refused upload, with `code` and `detail`"),
            413: OpenApiResponse(description="Body over the size limit"),
        },
    )
    def post(self, request, model_pk: int):
        model = get_object_or_404(MLModel, pk=model_pk)
        form = VersionUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        parent = None
        if (parent_id := form.validated_data.get("parent")) is not None:
            parent = ModelVersion.objects.filter(pk=parent_id).first()
            if parent is None:
                raise ValidationError({"parent": ["No such version."]})
        try:
            result = uploads.accept_upload(
                model,
                upload.temporary_file_path(),
                original_filename=upload.name,
                actor=request.user,
                parent=parent,
                notes=form.validated_data["notes"],
            )
        except services.UploadRejected as exc:
            audit.note(request, "version.upload", model, refused=exc.code)
            raise
        audit.note(request, "version.upload", result.version, created=result.created)
        data = ModelVersionSerializer(result.version, context={"request": request}).data
        if not result.created:
            return Response(data, status=status.HTTP_200_OK)
        return Response(
            data,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": f"/api/v1/versions/{result.version.pk}/"},
        )


class ModelVersionDetailView(APIView):
    @extend_schema(responses=ModelVersionSerializer)
    def get(self, request, model_pk: int, number: int):
        version = get_object_or_404(ModelVersion, model_id=model_pk, number=number)
        return Response(ModelVersionSerializer(version, context={"request": request}).data)


class ModelVersionDownloadView(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request, model_pk: int, number: int):
        version = get_object_or_404(
            ModelVersion.objects.select_related("model"), model_id=model_pk, number=number
        )
        return version_artifact(version)


class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    """Every version of every model, by id (what jobs and releases refer to)."""

    queryset = ModelVersion.objects.select_related("model", "parent", "created_by")
    serializer_class = ModelVersionSerializer

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        version = self.get_object()
        return version_artifact(version)


class DatasetViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Dataset.objects.select_related("model")
    serializer_class = DatasetSerializer
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        params, queryset = self.request.query_params, self.queryset
        if params.get("model", "").isdigit():
            queryset = queryset.filter(model_id=int(params["model"]))
        if params.get("purpose"):
            queryset = queryset.filter(purpose=params["purpose"])
        return queryset

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = data["file"]
        dataset = services.register_dataset(
            upload.temporary_file_path(),
            name=data["name"],
            purpose=data["purpose"],
            original_filename=upload.name,
            model=data.get("model"),
            actor=request.user,
        )
        audit.note(request, "dataset.upload", dataset)
        return Response(self.get_serializer(dataset).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        dataset = self.get_object()
        return artifact_response(dataset.artifact, f"{dataset.name}.npz", dataset.sha256)
