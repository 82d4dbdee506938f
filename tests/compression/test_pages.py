"""Registry pages: upload form, list, detail with metadata and lineage, downloads."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from compression.models import MLModel
from tests.compression import bad_models
from tests.conftest import tiny_model_bytes

pytestmark = pytest.mark.django_db


def test_operator_uploads_through_the_form(client, operator_user):
    client.force_login(operator_user)
    response = client.post("/models/upload/", {
        "name": "web-model", "task": "classification", "description": "from the browser",
        "file": SimpleUploadedFile("web.onnx", tiny_model_bytes()),
    })
    model = MLModel.objects.get(name="web-model")
    assert response.status_code == 302
    assert response["Location"] == f"/models/{model.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert 'id="meta-inputs"' in page and ">x<" in page
    assert "ai.onnx 17" in page or "17" in page
    listing = client.get("/models/").content.decode()
    assert "web-model" in listing


def test_form_shows_validator_message_and_creates_nothing(client, operator_user):
    client.force_login(operator_user)
    response = client.post("/models/upload/", {
        "name": "evil", "task": "other",
        "file": SimpleUploadedFile("evil.onnx", bad_models.external_absolute()),
    })
    assert response.status_code == 400
    assert "external" in response.content.decode().lower()
    assert not MLModel.objects.filter(name="evil").exists()


def test_new_version_from_detail_page_gets_parent(client, operator_user):
    client.force_login(operator_user)
    client.post("/models/upload/", {"name": "m", "task": "other",
                                    "file": SimpleUploadedFile("a.onnx", tiny_model_bytes(1))})
    model = MLModel.objects.get(name="m")
    client.post(f"/models/{model.pk}/versions/",
                {"file": SimpleUploadedFile("b.onnx", tiny_model_bytes(2))})
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
