"""Management commands used by `make run` and by engineers on the CLI."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from compression.models import Dataset, MLModel, ModelVersion
from tests.conftest import FIXTURES

pytestmark = pytest.mark.django_db


def test_bootstrap_creates_admin_once(monkeypatch, django_user_model):
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    out = io.StringIO()
    call_command("bootstrap", stdout=out)
    assert "password:" in out.getvalue()
    password = out.getvalue().split("password:")[1].split()[0]
    admin = django_user_model.objects.get(username="admin")
    assert admin.check_password(password)
    assert admin.groups.filter(name="admin").exists()
    again = io.StringIO()
    call_command("bootstrap", stdout=again)
    assert "password:" not in again.getvalue()


def test_bootstrap_respects_env(monkeypatch, django_user_model):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "root")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "s3cret-pass")
    call_command("bootstrap", stdout=io.StringIO())
    assert django_user_model.objects.get(username="root").check_password("s3cret-pass")


def test_import_model(tiny_onnx):
    out = io.StringIO()
    call_command("import_model", str(tiny_onnx), "--name", "cli-model", stdout=out)
    assert "registered cli-model v1" in out.getvalue()
    call_command("import_model", str(tiny_onnx), "--name", "cli-model", stdout=out)
    assert ModelVersion.objects.filter(model__name="cli-model").count() == 1


def test_import_model_refuses_garbage(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08garbage" * 10)
    with pytest.raises(CommandError, match="refused"):
        call_command("import_model", str(bad), "--name", "bad")


@pytest.mark.skipif(not (FIXTURES / "digits_cnn.onnx").exists(), reason="fixture not generated")
def test_seed_demo_loads_model_and_datasets():
    call_command("seed_demo", stdout=io.StringIO())
    model = MLModel.objects.get(name="digits-cnn")
    version = model.versions.get()
    assert version.inputs and version.outputs and version.parameters > 0
    assert Dataset.objects.filter(model=model, has_labels=True).exists()
    call_command("seed_demo", stdout=io.StringIO())  # idempotent
    assert MLModel.objects.count() == 1


def test_drf_create_token_gives_a_working_api_token(operator_user, tiny_onnx):
    from rest_framework.test import APIClient

    out = io.StringIO()
    call_command("drf_create_token", operator_user.username, stdout=out)
    token = out.getvalue().split()[2]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    model = client.post("/api/v1/models/", {"name": "via-token"}).json()
    from django.test import TestCase

    from compression import tasks

    with tiny_onnx.open("rb") as fh, TestCase.captureOnCommitCallbacks(execute=False):
        created = client.post(
            f"/api/v1/models/{model['id']}/versions/", {"file": fh}, format="multipart"
        )
    assert created.status_code == 202 and created.json()["status"] == "validating"
    assert tasks.validate_model_version(created.json()["id"]) == "ready"  # the worker's part
    assert client.get("/api/v1/models/").json()["count"] == 1
    download = client.get(created.json()["download_url"])
    assert b"".join(download.streaming_content) == tiny_onnx.read_bytes()
