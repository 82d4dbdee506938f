"""POST /api/v1/push/: a model version with its datasets, all or nothing (`edgefleet push`)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from compression import push, services
from compression.api.serializers import ModelVersionSerializer
from compression.choices import ModelTask
from fleet import audit


class PushSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, help_text="Model name; created if new.")
    file = serializers.FileField(allow_empty_file=True, help_text="An ONNX model (.onnx).")
    calibration = serializers.FileField(required=False, help_text="Calibration data (.npz).")
    evaluation = serializers.FileField(
        required=False, help_text="Evaluation data (.npz, `labels` optional)."
    )
    task = serializers.ChoiceField(choices=ModelTask.choices, default=ModelTask.CLASSIFICATION)
    notes = serializers.CharField(required=False, allow_blank=True, default="")


class PushResultSerializer(serializers.Serializer):
    created = serializers.BooleanField()
    version = ModelVersionSerializer()
    calibration = serializers.IntegerField(allow_null=True)
    evaluation = serializers.IntegerField(allow_null=True)


def _upload(file) -> push.Upload | None:
    return push.Upload(file.temporary_file_path(), file.name) if file is not None else None


class PushView(APIView):
    """Operators and the CI role; the same bytes again answer 200 with the same ids."""

    parser_classes = [MultiPartParser]
    ci_actions = {"post"}

    @extend_schema(
        request=PushSerializer,
        responses={
            201: PushResultSerializer,
            200: OpenApiResponse(PushResultSerializer, "Same bytes: the existing version"),
            400: OpenApiResponse(description="Refused, with `code` and `detail`; nothing created"),
        },
    )
    def post(self, request):
        form = PushSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            pushed = push.push_model(
                data["name"],
                _upload(data["file"]),
                calibration=_upload(data.get("calibration")),
                evaluation=_upload(data.get("evaluation")),
                task=data["task"],
                notes=data["notes"],
                actor=request.user,
            )
        except services.UploadRejected as exc:
            audit.note(request, "model.push", None, refused=exc.code, name=data["name"])
            raise
        audit.note(request, "model.push", pushed.version, created=pushed.created)
        body = {
            "created": pushed.created,
            "version": ModelVersionSerializer(pushed.version, context={"request": request}).data,
            **{
                purpose: (pushed.datasets[purpose].pk if purpose in pushed.datasets else None)
                for purpose in ("calibration", "evaluation")
            },
        }
        return Response(
            body, status=status.HTTP_201_CREATED if pushed.created else status.HTTP_200_OK
        )
