"""Model upload through the API: happy path, dedupe, and every refusal (O1–O5).

The request stores the file and answers 202 `validating`; the worker's task
(called here as a function, as Celery would) validates it: `ready`, or
`rejected` with the code. tests/compression/test_upload_worker.py runs the
real worker."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import TestCase

from compression import tasks
from compression.models import MLModel, ModelVersion
from tests.compression import bad_models
from tests.conftest import stored_names, tiny_model_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(operator_user):
    return MLModel.objects.create(name="detector", owner=operator_user)


def upload(client, model, data: bytes, name: str = "m.onnx", *, validate: bool = True, **extra):
    """POST, then run the validation the commit enqueued (as the worker would)."""
    url = f"/api/v1/models/{model.pk}/versions/"
    file = SimpleUploadedFile(name, data, content_type="application/octet-stream")
    with TestCase.captureOnCommitCallbacks(execute=False) as enqueued:
        response = client.post(url, {"file": file, **extra}, format="multipart")
    if response.status_code == 202:
        assert response.json()["status"] == "validating" and len(enqueued) == 1
        assert response["Location"] == f"/api/v1/versions/{response.json()['id']}/"
        if validate:
            tasks.validate_model_version(response.json()["id"])
    return response


def validated(client, response) -> dict:
    return client.get(f"/api/v1/versions/{response.json()['id']}/").json()


def test_upload_list_detail_download(operator_api, model):
    data = tiny_model_bytes()
    response = upload(operator_api, model, data)
    assert response.status_code == 202, response.content
    body = validated(operator_api, response)
    assert body["status"] == "ready" and body["error_code"] == ""
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
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    other = MLModel.objects.create(name="other", owner=operator_user)
    third = upload(operator_api, other, data)
    assert third.status_code == 202
    assert third.json()["sha256"] == first.json()["sha256"]
    assert ModelVersion.objects.filter(sha256=first.json()["sha256"]).count() == 2
    assert stored_names("models") >= {f"models/{first.json()['sha256']}.onnx"}
    assert len([n for n in stored_names("models") if first.json()["sha256"] in n]) == 1


def test_versions_number_up_and_keep_lineage(operator_api, model):
    v1 = upload(operator_api, model, tiny_model_bytes(seed=1)).json()
    v2 = upload(operator_api, model, tiny_model_bytes(seed=2), parent=v1["id"]).json()
    assert v2["number"] == 2
    assert v2["parent"] == v1["id"]


# refused by the request itself (reads one byte) ...
REFUSED_AT_ONCE = [
    ("not_protobuf", bad_models.not_protobuf, "m.onnx", "not_onnx"),
    ("empty", lambda: b"", "m.onnx", "empty"),
    ("wrong_extension", tiny_model_bytes, "m.txt", "wrong_extension"),
]
# ... or by the worker's sandboxed validation
REJECTED_BY_VALIDATION = [
    ("external_relative", bad_models.external_relative, "external_data"),
    ("external_absolute", bad_models.external_absolute, "external_data"),
    ("truncated", bad_models.truncated, None),
    ("random_bytes", bad_models.random_bytes, None),
    ("unknown_domain", bad_models.unknown_domain, "unknown_domain"),
    ("unknown_opset", bad_models.unknown_opset, None),
    ("huge_initializer", bad_models.huge_declared_initializer, None),
    ("constant_of_shape_bomb", bad_models.constant_of_shape_bomb, "inference_memory"),
    ("input_dependent_bomb", bad_models.input_dependent_bomb, "inference_memory"),
]


@pytest.mark.parametrize(
    ("label", "make", "filename", "code"), REFUSED_AT_ONCE, ids=[b[0] for b in REFUSED_AT_ONCE]
)
def test_bad_upload_is_refused_cleanly(
    operator_api, model, leftover_uploads, label, make, filename, code
):
    before = stored_names("models")
    response = upload(operator_api, model, make(), name=filename)
    assert response.status_code == 400, (label, response.status_code, response.content)
    body = response.json()
    assert body["detail"] and isinstance(body["detail"], str)
    assert body["code"] == code, body
    assert stored_names("models") == before
    assert not ModelVersion.objects.filter(model=model).exists()
    assert leftover_uploads() == []
    # the server is alive and the next good upload works
    assert upload(operator_api, model, tiny_model_bytes(seed=9)).status_code == 202


@pytest.mark.parametrize(
    ("label", "make", "code"), REJECTED_BY_VALIDATION, ids=[b[0] for b in REJECTED_BY_VALIDATION]
)
def test_bad_model_is_rejected_with_its_reason(
    operator_api, model, leftover_uploads, label, make, code
):
    before = stored_names("models")
    response = upload(operator_api, model, make())
    assert response.status_code == 202, (label, response.content)
    body = validated(operator_api, response)
    assert body["status"] == "rejected", (label, body)
    assert body["error"] and body["error_code"]
    if code:
        assert body["error_code"] == code, body
    assert stored_names("models") == before  # the hostile bytes are not kept
    assert leftover_uploads() == []
    download = operator_api.get(f"/api/v1/versions/{body['id']}/download/")
    assert download.status_code == 409 and download.json()["code"] == "not_ready"
    good = upload(operator_api, model, tiny_model_bytes(seed=9))
    assert validated(operator_api, good)["status"] == "ready"
    assert model.latest_version().pk == good.json()["id"]


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
    body = validated(operator_api, response)
    assert body["status"] == "rejected"
    assert body["error_code"] in {"validator_crashed", "validator_timeout"}
    assert stored_names("models") == before
    settings.EDGEFLEET_VALIDATOR_TEST_CRASH = None
    again = upload(operator_api, model, tiny_model_bytes(seed=5))
    assert validated(operator_api, again)["status"] == "ready"


def test_missing_file_field_is_400(operator_api, model):
    response = operator_api.post(f"/api/v1/models/{model.pk}/versions/", {}, format="multipart")
    assert response.status_code == 400
    assert "file" in response.json()


def test_unknown_parent_is_400(operator_api, model):
    response = upload(operator_api, model, tiny_model_bytes(), parent=999999)
    assert response.status_code == 400


def test_upload_to_missing_model_is_404(operator_api):
    response = operator_api.post(
        "/api/v1/models/424242/versions/",
        {"file": SimpleUploadedFile("m.onnx", tiny_model_bytes())},
        format="multipart",
    )
    assert response.status_code == 404


def test_a_version_still_validating_cannot_be_released_compressed_or_downloaded(
    operator_api, model
):
    response = upload(operator_api, model, tiny_model_bytes(seed=7), validate=False)
    pk = response.json()["id"]
    release = operator_api.post(
        "/api/v1/releases/",
        {"name": "too early", "variants": [{"name": "default", "model_version": pk}]},
        format="json",
    )
    assert release.status_code == 400 and release.json()["code"] == "version_not_ready"
    from compression import jobs

    with pytest.raises(jobs.JobRejected) as refused:
        jobs.create_job(
            ModelVersion.objects.get(pk=pk), mode="recipes", recipes=["fp16"], enqueue=False
        )
    assert refused.value.code == "source_not_ready" and refused.value.field == "source"
    assert operator_api.get(f"/api/v1/versions/{pk}/download/").status_code == 409
    assert model.latest_version().pk == pk  # it is the newest, just not usable yet
