"""POST /api/v1/push/: one request registers a model version and its datasets, or
nothing at all; the same bytes again answer with the same ids."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from compression.models import Dataset, MLModel, ModelVersion
from fleet.models import AuditEntry
from tests.cli.conftest import DEMO_CALIBRATION, DEMO_EVAL, DEMO_MODEL
from tests.conftest import stored_names, tiny_model_bytes

pytestmark = pytest.mark.django_db


def upload(path, name=None):
    return SimpleUploadedFile(name or path.name, path.read_bytes())


def demo_push(client, **extra):
    body = {
        "name": "digits-cnn",
        "file": upload(DEMO_MODEL),
        "calibration": upload(DEMO_CALIBRATION),
        "evaluation": upload(DEMO_EVAL),
        **extra,
    }
    return client.post("/api/v1/push/", body, format="multipart")


def nothing_stored():
    return (
        not MLModel.objects.exists()
        and not ModelVersion.objects.exists()
        and not Dataset.objects.exists()
        and not stored_names("models")
        and not stored_names("datasets")
    )


def test_ci_pushes_model_and_datasets_then_same_bytes_same_ids(ci_api, leftover_uploads):
    first = demo_push(ci_api)
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["created"] is True
    version = ModelVersion.objects.get(pk=body["version"]["id"])
    assert version.model.name == "digits-cnn" and version.number == 1
    assert version.model.owner.username == "cici-pipeline"
    calibration, evaluation = (
        Dataset.objects.get(pk=body[k]) for k in ("calibration", "evaluation")
    )
    assert (calibration.purpose, evaluation.purpose) == ("calibration", "evaluation")
    assert evaluation.has_labels and evaluation.model_id == version.model_id

    again = demo_push(ci_api)
    assert again.status_code == 200, again.content
    assert again.json()["created"] is False
    assert again.json()["version"]["id"] == version.pk
    assert (again.json()["calibration"], again.json()["evaluation"]) == (
        calibration.pk,
        evaluation.pk,
    )
    assert ModelVersion.objects.count() == 1 and Dataset.objects.count() == 2
    assert leftover_uploads() == []
    audit = AuditEntry.objects.filter(action="model.push", actor_role="ci")
    assert [e.detail for e in audit.order_by("id")] == [{"created": True}, {"created": False}]


def test_new_bytes_are_a_new_version_of_the_same_model(operator_api, tmp_path):
    model = tmp_path / "m.onnx"
    for seed, number in ((1, 1), (2, 2)):
        model.write_bytes(tiny_model_bytes(seed))
        response = operator_api.post(
            "/api/v1/push/", {"name": "tiny", "file": upload(model)}, format="multipart"
        )
        assert response.status_code == 201, response.content
        assert response.json()["version"]["number"] == number
        assert response.json()["calibration"] is None
    assert MLModel.objects.get().versions.count() == 2


@pytest.mark.parametrize(
    "files, code",
    [
        ({"file": SimpleUploadedFile("m.onnx", b"this is no protobuf at all")}, None),
        ({"file": SimpleUploadedFile("m.onnx", b"")}, "empty"),
        ({"file": SimpleUploadedFile("m.txt", tiny_model_bytes())}, "wrong_extension"),
    ],
)
def test_refused_model_leaves_nothing(ci_api, files, code):
    response = ci_api.post("/api/v1/push/", {"name": "new-model", **files}, format="multipart")
    assert response.status_code == 400, response.content
    assert response.json()["detail"]
    if code:
        assert response.json()["code"] == code
    assert nothing_stored()


def test_refused_dataset_undoes_the_new_model_and_version(ci_api):
    bad = SimpleUploadedFile("eval.npz", b"PK not really a zip")
    response = demo_push(ci_api, evaluation=bad)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "bad_dataset"
    assert nothing_stored()
    assert AuditEntry.objects.get(action="model.push").result == "rejected"


def test_dataset_for_other_inputs_undoes_only_what_this_push_made(ci_api, tmp_path):
    assert demo_push(ci_api).status_code == 201
    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_model_bytes(3))  # input "x": the digits datasets do not fit
    response = ci_api.post(
        "/api/v1/push/",
        {"name": "digits-cnn", "file": upload(model), "evaluation": upload(DEMO_EVAL)},
        format="multipart",
    )
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "bad_dataset"
    assert ModelVersion.objects.count() == 1 and Dataset.objects.count() == 2
    assert MLModel.objects.count() == 1
    assert stored_names("models") == {ModelVersion.objects.get().artifact}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x"},
        {"name": "", "file": b"x"},
        {"name": "x" * 121, "file": b"x"},
        {"name": "x", "file": "not-a-file"},
        {"name": "x", "task": "telepathy", "file": b"x"},
    ],
)
def test_malformed_push_is_400(ci_api, body):
    body = {
        k: SimpleUploadedFile("m.onnx", v) if isinstance(v, bytes) else v for k, v in body.items()
    }
    response = ci_api.post("/api/v1/push/", body, format="multipart")
    assert response.status_code == 400, response.content
    assert nothing_stored()


def test_json_body_is_415(ci_api):
    response = ci_api.post("/api/v1/push/", {"name": "x"}, format="json")
    assert response.status_code == 415


def test_viewer_and_anonymous_cannot_push(viewer_api, anon_api):
    assert demo_push(viewer_api).status_code == 403
    assert demo_push(anon_api).status_code == 401
    assert nothing_stored()
