from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from compression.models import Dataset

pytestmark = pytest.mark.django_db


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def post(client, data: bytes, name="cal.npz", purpose="calibration"):
    return client.post(
        "/api/v1/datasets/",
        {
            "name": "cal",
            "purpose": purpose,
            "file": SimpleUploadedFile(name, data),
        },
        format="multipart",
    )


def test_dataset_upload(operator_api):
    data = npz_bytes(x=np.zeros((16, 4), "float32"), labels=np.arange(16))
    response = post(operator_api, data)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["sample_count"] == 16 and body["has_labels"]
    assert body["arrays"]["x"] == {"dtype": "float32", "shape": [16, 4]}
    download = operator_api.get(f"/api/v1/datasets/{body['id']}/download/")
    assert b"".join(download.streaming_content) == data


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"not a zip", "cal.npz"),
        (npz_bytes(x=np.zeros((4, 2))), "cal.csv"),
        (npz_bytes(x=np.zeros((4, 2)), labels=np.zeros(5)), "cal.npz"),
        (npz_bytes(x=np.array([object()], dtype=object)), "cal.npz"),
    ],
)
def test_bad_datasets_refused(operator_api, data, name):
    response = post(operator_api, data, name=name)
    assert response.status_code == 400
    assert response.json()["detail"]
    assert not Dataset.objects.exists()


def test_bad_purpose(operator_api):
    assert post(operator_api, npz_bytes(x=np.zeros((2, 2))), purpose="x").status_code == 400


def test_viewer_cannot_upload_dataset(viewer_api):
    assert post(viewer_api, npz_bytes(x=np.zeros((2, 2)))).status_code == 403
