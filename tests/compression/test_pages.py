"""Registry pages: upload form, list, detail with metadata and lineage, downloads."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import TestCase

from compression import tasks
from compression.models import MLModel, ModelVersion
from tests.compression import bad_models
from tests.conftest import tiny_model_bytes

pytestmark = pytest.mark.django_db


def post(client, url: str, data: dict):
    """Post a form; the validations its commit enqueued are not run yet."""
    with TestCase.captureOnCommitCallbacks(execute=False):
        return client.post(url, data)


def upload(client, name: str, content: bytes, task: str = "other", **fields):
    """Post the upload form with `content` as the model file."""
    form = {"name": name, "task": task, **fields}
    return post(client, "/models/upload/", {**form, "file": SimpleUploadedFile("m.onnx", content)})


def validate_pending() -> None:
    """What the worker does with the enqueued validations."""
    for pk in ModelVersion.objects.filter(status="validating").values_list("pk", flat=True):
        tasks.validate_model_version(pk)


def test_operator_uploads_through_the_form(client, operator_user):
    client.force_login(operator_user)
    response = upload(
        client,
        "web-model",
        tiny_model_bytes(),
        task="classification",
        description="from the browser",
    )
    model = MLModel.objects.get(name="web-model")
    assert response.status_code == 302
    assert response["Location"] == f"/models/{model.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert "Validating" in page and 'hx-trigger="every 2s"' in page  # polls until decided
    assert "/versions/1/download/" not in page
    validate_pending()
    page = client.get(response["Location"]).content.decode()
    assert "Ready" in page and 'hx-trigger="every 2s"' not in page
    assert 'id="meta-inputs"' in page and ">x<" in page
    assert "ai.onnx 17" in page or "17" in page
    listing = client.get("/models/").content.decode()
    assert "web-model" in listing


def test_form_shows_validator_message_and_creates_nothing(client, operator_user):
    client.force_login(operator_user)
    response = upload(client, "evil", bad_models.not_protobuf())
    assert response.status_code == 400
    assert "not an onnx model" in response.content.decode().lower()
    assert not MLModel.objects.filter(name="evil").exists()


def test_rejected_version_shows_its_reason(client, operator_user):
    client.force_login(operator_user)
    response = upload(client, "evil", bad_models.external_absolute())
    assert response.status_code == 302
    validate_pending()
    page = client.get(response["Location"]).content.decode()
    assert "Rejected" in page and "external_data" in page
    assert client.get(f"{response['Location']}versions/1/download/").status_code == 404


def test_upload_page_does_no_storage_write_inside_a_transaction(client, operator_user, monkeypatch):
    from django.db import connection

    from fleet import storage

    inside = []
    real = storage.put_file

    def spy(path, name):
        inside.append(connection.in_atomic_block and not connection.savepoint_ids)
        return real(path, name)

    monkeypatch.setattr(storage, "put_file", spy)
    client.force_login(operator_user)
    # the test itself runs in one transaction: only a savepoint would show a view's atomic()
    assert connection.in_atomic_block and not connection.savepoint_ids
    response = upload(client, "web-model", tiny_model_bytes())
    assert response.status_code == 302 and inside == [True]


def test_new_version_from_detail_page_gets_parent(client, operator_user):
    client.force_login(operator_user)
    upload(client, "m", tiny_model_bytes(1))
    model = MLModel.objects.get(name="m")
    post(
        client,
        f"/models/{model.pk}/versions/",
        {"file": SimpleUploadedFile("b.onnx", tiny_model_bytes(2))},
    )
    validate_pending()
    v1, v2 = model.versions.order_by("number")
    assert v2.parent == v1
    assert [v.number for v in v2.lineage()] == [1, 2]
    page = client.get(f"/models/{model.pk}/").content.decode()
    assert 'id="lineage"' in page and "v2" in page
    download = client.get(f"/models/{model.pk}/versions/2/download/")
    assert b"".join(download.streaming_content) == tiny_model_bytes(2)


def test_viewer_sees_no_upload_controls(client, viewer_user, operator_user):
    MLModel.objects.create(name="ro", owner=operator_user)
    client.force_login(viewer_user)
    assert "Upload a model" not in client.get("/models/").content.decode()
    model = MLModel.objects.get(name="ro")
    assert client.post(f"/models/{model.pk}/versions/", {}).status_code == 403


def test_widget_renders(client, viewer_user):
    client.force_login(viewer_user)
    assert client.get("/models/widget/").status_code == 200


def test_widget_counts_read_as_words(client, viewer_user):
    """One model reads "1 model", not "1 models"; Chinese counts with its measure word."""
    MLModel.objects.create(name="only")
    client.force_login(viewer_user)
    page = client.get("/models/widget/").content.decode()
    assert '<span class="stat">1</span> model ·' in page
    assert '<span class="stat">0</span> versions' in page
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    page = client.get("/models/widget/").content.decode()
    assert '<span class="stat">1</span> 个模型 · <span class="stat">0</span> 个版本' in page


def test_language_switch_to_chinese(client, viewer_user):
    client.force_login(viewer_user)
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/models/"})
    page = client.get("/models/").content.decode()
    assert 'lang="zh-hans"' in page


def test_pages_are_translated_to_chinese(client, viewer_user):
    client.force_login(viewer_user)
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/models/"})
    page = client.get("/models/").content.decode()
    assert "模型" in page and "退出登录" in page
