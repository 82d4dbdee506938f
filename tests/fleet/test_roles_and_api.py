"""Role matrix, CSRF, audit and schema for the registry API (A3, A4, A5, A7)."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from compression.models import MLModel
from fleet.models import AuditEntry, AuditResult
from tests.conftest import tiny_model_bytes

pytestmark = pytest.mark.django_db


def onnx_file(seed=0):
    return SimpleUploadedFile("m.onnx", tiny_model_bytes(seed=seed))


def test_anonymous_api_gets_401(anon_api):
    response = anon_api.get("/api/v1/models/")
    assert response.status_code == 401
    assert "Token" in response["WWW-Authenticate"]


def test_anonymous_page_redirects_to_login(client):
    response = client.get("/models/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_viewer_reads_but_cannot_write(viewer_api, operator_user):
    model = MLModel.objects.create(name="m", owner=operator_user)
    assert viewer_api.get("/api/v1/models/").status_code == 200
    assert viewer_api.post("/api/v1/models/", {"name": "x"}).status_code == 403
    upload = viewer_api.post(
        f"/api/v1/models/{model.pk}/versions/", {"file": onnx_file()}, format="multipart"
    )
    assert upload.status_code == 403
    denied = AuditEntry.objects.filter(actor_name="vera-viewer", result=AuditResult.DENIED)
    assert denied.count() == 2


def test_viewer_cannot_open_upload_page(client, viewer_user):
    client.force_login(viewer_user)
    assert client.get("/models/upload/").status_code == 403


def test_operator_creates_model_and_audit_row(operator_api):
    response = operator_api.post("/api/v1/models/", {"name": "cam-detector", "task": "detection"})
    assert response.status_code == 201, response.content
    entry = AuditEntry.objects.get(action="model.create")
    assert entry.actor_name == "oscar-operator"
    assert entry.actor_role == "operator"
    assert entry.object_repr == "cam-detector"
    assert entry.result == AuditResult.OK


def test_duplicate_model_name_is_400(operator_api):
    operator_api.post("/api/v1/models/", {"name": "dup"})
    response = operator_api.post("/api/v1/models/", {"name": "dup"})
    assert response.status_code == 400
    assert "name" in response.json()


def test_bad_task_is_400(operator_api):
    response = operator_api.post("/api/v1/models/", {"name": "n", "task": "telepathy"})
    assert response.status_code == 400


def test_read_only_fields_cannot_be_set(operator_api, admin_user):
    response = operator_api.post(
        "/api/v1/models/", {"name": "ro", "owner": admin_user.pk, "id": 999}
    )
    assert response.status_code == 201
    model = MLModel.objects.get(name="ro")
    assert model.owner.username == "oscar-operator"
    assert model.pk != 999


def test_only_admin_deletes_models(operator_api, admin_api, operator_user):
    model = MLModel.objects.create(name="gone", owner=operator_user)
    assert operator_api.delete(f"/api/v1/models/{model.pk}/").status_code == 403
    assert admin_api.delete(f"/api/v1/models/{model.pk}/").status_code == 204


def test_session_write_without_csrf_is_403(operator_user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(operator_user)
    response = client.post("/api/v1/models/", {"name": "csrf"}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not MLModel.objects.filter(name="csrf").exists()


def test_session_page_post_without_csrf_is_403(operator_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator_user)
    response = client.post("/models/upload/", {"name": "x", "task": "other", "file": onnx_file()})
    assert response.status_code == 403


def test_page_size_is_capped(viewer_api, operator_user):
    MLModel.objects.bulk_create(MLModel(name=f"m{i:03d}") for i in range(210))
    body = viewer_api.get("/api/v1/models/?page_size=100000").json()
    assert body["count"] == 210
    assert len(body["results"]) == 200


def test_schema_is_valid_openapi3(viewer_api):
    from openapi_spec_validator import validate

    response = viewer_api.get("/api/schema/?format=json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    validate(spec)
    assert "/api/v1/models/{model_pk}/versions/" in spec["paths"]


def test_swagger_ui_is_served_locally(client, viewer_user):
    client.force_login(viewer_user)
    html = client.get("/api/docs/").content.decode()
    assert "cdn" not in html.lower()


def test_login_is_throttled_per_account(client, operator_user):
    for _ in range(10):
        client.post("/accounts/login/", {"username": "oscar-operator", "password": "wrong"})
    response = client.post(
        "/accounts/login/", {"username": "oscar-operator", "password": "pw-oscar-operator"}
    )
    assert response.status_code == 429
    assert response["Retry-After"]


def test_login_and_home(client, operator_user):
    response = client.post(
        "/accounts/login/", {"username": "oscar-operator", "password": "pw-oscar-operator"}
    )
    assert response.status_code == 302
    home = client.get("/")
    assert home.status_code == 200
    assert b"hx-get" in home.content


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
