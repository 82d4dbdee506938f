"""The registry on a real S3 endpoint (moto's server mode over HTTP, not a mocked client)."""

from __future__ import annotations

import boto3
import pytest

from compression.models import MLModel
from tests.compression import bad_models
from tests.compression.test_uploads import upload, validated
from tests.conftest import tiny_model_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_storage(settings, s3_endpoint):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "edgefleet-test",
                "endpoint_url": s3_endpoint,
                "access_key": "test",
                "secret_key": "test",
                "region_name": "us-east-1",
                "default_acl": None,
                "file_overwrite": True,
            },
        },
    }
    from fleet.storage import ensure_bucket

    ensure_bucket()
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )


def keys(client) -> set[str]:
    listing = client.list_objects_v2(Bucket="edgefleet-test")
    return {item["Key"] for item in listing.get("Contents", [])}


def test_upload_and_download_through_s3(s3_storage, operator_api, operator_user):
    model = MLModel.objects.create(name="s3-model", owner=operator_user)
    data = tiny_model_bytes(seed=42)
    response = upload(operator_api, model, data)  # stored, then validated as the worker would
    assert response.status_code == 202, response.content
    assert validated(operator_api, response)["status"] == "ready"
    sha = response.json()["sha256"]
    assert f"models/{sha}.onnx" in keys(s3_storage)
    stored = s3_storage.get_object(Bucket="edgefleet-test", Key=f"models/{sha}.onnx")
    assert stored["Body"].read() == data
    download = operator_api.get(f"/api/v1/models/{model.pk}/versions/1/download/")
    assert b"".join(download.streaming_content) == data


def test_refused_upload_leaves_bucket_clean(s3_storage, operator_api, operator_user):
    model = MLModel.objects.create(name="s3-bad", owner=operator_user)
    before = keys(s3_storage)
    response = upload(operator_api, model, bad_models.external_relative())
    assert response.status_code == 202, response.content
    assert validated(operator_api, response)["status"] == "rejected"
    assert keys(s3_storage) == before  # the worker deletes what it refused
