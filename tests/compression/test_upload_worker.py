"""Uploads are validated by a real Celery worker, never on the request path.

The API stores the file and answers 202 `validating` at once; a `celery -A fleet
worker` on the compression queue validates it (`ready`, or `rejected` with the
reason); meanwhile device check-ins are answered as usual.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from compression.models import MLModel, ModelVersion
from tests.compression import bad_models
from tests.compression.jobs_support import WorkerPool, database_url, wait_for
from tests.conftest import bearer, need_service, stored_names, tiny_model_bytes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(180)]
REDIS_URL = os.environ.get("REDIS_URL", "")


@pytest.fixture
def worker(tmp_path, settings):
    if not REDIS_URL:
        need_service("Redis", "the API process and the worker share the broker")
    from fleet.celery import app

    with app.connection_for_write() as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_purge("compression")  # nothing left by other tests
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": REDIS_URL,
        "EDGEFLEET_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
        "PYTHONUNBUFFERED": "1",
    }
    if settings.STORAGES["default"]["BACKEND"].endswith("FileSystemStorage"):
        media = Path(settings.STORAGES["default"]["OPTIONS"]["location"])
        media.mkdir(parents=True, exist_ok=True)
        env["MEDIA_ROOT"] = str(media)
    pool = WorkerPool(tmp_path, env)
    pool.start("validator")
    yield
    pool.stop_all()


def post(client, model, data: bytes):
    file = SimpleUploadedFile("m.onnx", data, content_type="application/octet-stream")
    began = time.monotonic()
    response = client.post(
        f"/api/v1/models/{model.pk}/versions/", {"file": file}, format="multipart"
    )
    return response, time.monotonic() - began


def decided(client, pk: int):
    body = client.get(f"/api/v1/versions/{pk}/").json()
    return body if body["status"] != "validating" else None


def test_uploads_are_validated_by_the_worker(worker, operator_api, operator_user, admin_user):
    from devices import services

    _pk, enrollment = services.create_enrollment_token(name="uploads", actor=admin_user)
    _device, token = services.enroll(enrollment, {"uid": "cam-while-uploading"})
    device = bearer(token)
    model = MLModel.objects.create(name="detector", owner=operator_user)
    good = [post(operator_api, model, tiny_model_bytes(seed=s)) for s in (1, 2, 3)]
    bomb, _took = post(operator_api, model, bad_models.input_dependent_bomb())
    for response, _took in [*good, (bomb, 0)]:
        assert response.status_code == 202, response.content
        assert response.json()["status"] == "validating"
        assert response.json()["inputs"] == []  # not looked at by the request

    # while the worker validates, devices are answered as usual
    assert device.get("/api/v1/device/update").status_code == 204

    results = {
        r.json()["id"]: wait_for(
            lambda r=r: decided(operator_api, r.json()["id"]), 120, "validation", None
        )
        for r, _t in [*good, (bomb, 0)]
    }
    for response, _took in good:
        body = results[response.json()["id"]]
        assert body["status"] == "ready" and body["inputs"][0]["name"] == "x"
    rejected = results[bomb.json()["id"]]
    assert rejected["status"] == "rejected" and rejected["error_code"] == "inference_memory"
    # nothing lost or doubled: one row per upload, stored bytes only for the ready ones
    assert ModelVersion.objects.filter(model=model).count() == 4
    ready = set(
        ModelVersion.objects.filter(model=model, status="ready").values_list("artifact", flat=True)
    )
    assert len(ready) == 3 and stored_names("models") == ready
