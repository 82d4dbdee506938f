"""Model upload through the API: happy path, dedupe, and every refusal (O1–O5)."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from compression.models import MLModel, ModelVersion
from tests.compression import bad_models
from tests.conftest import stored_names, tiny_model_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(operator_user):
    return MLModel.objects.create(name="detector", owner=operator_user)


def upload(client, model, data: bytes, name: str = "m.onnx", **extra):
    url = f"/api/v1/models/{model.pk}/versions/"
    file = SimpleUploadedFile(name, data, content_type="application/octet-stream")
    return client.post(url, {"file": file, **extra}, format="multipart")


def test_upload_list_detail_download(operator_api, model):
    data = tiny_model_bytes()
    response = upload(operator_api, model, data)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["number"] == 1
    assert body["inputs"][0]["name"] == "x"
    assert body["outputs"][0]["name"] == "y"
    assert body["opsets"].get("ai.onnx", body["opsets"].get("")) == 17
    assert body["parameters"] == 4 * 8 + 8 * 3
    assert body["size_bytes"] == len(data)

    listing = operator_api.get(f"/api/v1/models/{model.pk}/versions/").json()
    assert [v["number"] for v in listing] == [1]
    detail = operator_api.get(f"/api/v1/models/{model.pk}/versions/1/").json()
    assert detail["sha256"] == body["sha256"]
    download = operator_api.get(f"/api/v1/models/{model.pk}/versions/1/download/")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == data  # byte-for-byte (O5)
    flat = operator_api.get(f"/api/v1/versions/{body['id']}/download/")
    assert b"".join(flat.streaming_content) == data


def test_same_bytes_twice_is_one_object(operator_api, model, operator_user):
    data = tiny_model_bytes(seed=3)
    first = upload(operator_api, model, data)
    second = upload(operator_api, model, data)
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    other = MLModel.objects.create(name="other", owner=operator_user)
    third = upload(operator_api, other, data)
    assert third.status_code == 201
    assert third.json()["sha256"] == first.json()["sha256"]
    assert ModelVersion.objects.filter(sha256=first.json()["sha256"]).count() == 2
    assert stored_names("models") >= {f"models/{first.json()['sha256']}.onnx"}
    assert len([n for n in stored_names("models") if first.json()["sha256"] in n]) == 1


def test_versions_number_up_and_keep_lineage(operator_api, model):
    v1 = upload(operator_api, model, tiny_model_bytes(seed=1)).json()
    v2 = upload(operator_api, model, tiny_model_bytes(seed=2), parent=v1["id"]).json()
    assert v2["number"] == 2
    assert v2["parent"] == v1["id"]


BAD_UPLOADS = [
    ("external_relative", bad_models.external_relative, "m.onnx", "external_data"),
    ("external_absolute", bad_models.external_absolute, "m.onnx", "external_data"),
    ("truncated", bad_models.truncated, "m.onnx", None),
    ("random_bytes", bad_models.random_bytes, "m.onnx", None),
    ("not_protobuf", bad_models.not_protobuf, "m.onnx", "not_onnx"),
    ("empty", lambda: b"", "m.onnx", "empty"),
    ("wrong_extension", tiny_model_bytes, "m.txt", "wrong_extension"),
    ("unknown_domain", bad_models.unknown_domain, "m.onnx", "unknown_domain"),
    ("unknown_opset", bad_models.unknown_opset, "m.onnx", None),
    ("huge_initializer", bad_models.huge_declared_initializer, "m.onnx", None),
]


@pytest.mark.parametrize(("label", "make", "filename", "code"), BAD_UPLOADS,
                         ids=[b[0] for b in BAD_UPLOADS])
def test_bad_upload_is_refused_cleanly(operator_api, model, leftover_uploads,
                                       label, make, filename, code):
    before = stored_names("models")
    response = upload(operator_api, model, make(), name=filename)
    assert 400 <= response.status_code < 500, (label, response.status_code, response.content)
    body = response.json()
    assert body["detail"] and isinstance(body["detail"], str)
    if code:
        assert body["code"] == code, body
    assert stored_names("models") == before
    assert not ModelVersion.objects.filter(model=model).exists()
    assert leftover_uploads() == []
    # the server is alive and the next good upload works
    assert upload(operator_api, model, tiny_model_bytes(seed=9)).status_code == 201


def test_oversize_body_is_413_before_reading(operator_api, model, settings):
    settings.EDGEFLEET_MAX_UPLOAD_BYTES = 1024
    before = stored_names("models")
    response = upload(operator_api, model, tiny_model_bytes(hidden=256))
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert stored_names("models") == before


@pytest.mark.parametrize("mode", ["segfault", "hang", "oom"])
def test_validator_crash_only_kills_the_sandbox(operator_api, model, settings, mode):
    settings.EDGEFLEET_VALIDATOR_TEST_CRASH = mode
    settings.EDGEFLEET_VALIDATOR_TIMEOUT_S = 3
    settings.EDGEFLEET_VALIDATOR_MEMORY_MB = 512
    before = stored_names("models")
    response = upload(operator_api, model, tiny_model_bytes())
    assert response.status_code == 400
    assert response.json()["code"] in {"validator_crashed", "validator_timeout"}
    assert stored_names("models") == before
    settings.EDGEFLEET_VALIDATOR_TEST_CRASH = None
    assert upload(operator_api, model, tiny_model_bytes()).status_code == 201


def test_missing_file_field_is_400(operator_api, model):
    response = operator_api.post(f"/api/v1/models/{model.pk}/versions/", {}, format="multipart")
    assert response.status_code == 400
    assert "file" in response.json()


def test_unknown_parent_is_400(operator_api, model):
    response = upload(operator_api, model, tiny_model_bytes(), parent=999999)
    assert response.status_code == 400


def test_upload_to_missing_model_is_404(operator_api):
    response = operator_api.post("/api/v1/models/424242/versions/",
                                 {"file": SimpleUploadedFile("m.onnx", tiny_model_bytes())},
                                 format="multipart")
    assert response.status_code == 404
