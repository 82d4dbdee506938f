"""One dataset contract for the upload check and the job check; latency-only jobs;
the format help's example; KPI-missing variants not offered for release."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from compression import jobs, runner, services
from compression.choices import JobStatus
from compression.fixtures import zoo
from compression.models import Candidate, Dataset
from tests.compression.jobs_support import load_demo

pytestmark = pytest.mark.django_db


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture
def audio_model():
    model = services.create_model(name="kws", task="classification")
    services.register_version(
        model, zoo.model_path("audio_kws_b1"), original_filename="audio_kws_b1.onnx"
    )
    return model


def _upload(api, model, data: bytes, purpose="evaluation"):
    return api.post(
        "/api/v1/datasets/",
        {
            "name": "d",
            "purpose": purpose,
            "model": model.pk,
            "file": SimpleUploadedFile("d.npz", data),
        },
        format="multipart",
    )


@pytest.mark.parametrize("sr", [np.array(16000), np.array([16000, 8000])])
def test_a_scalar_input_passes_the_upload_and_the_job_check(operator_api, audio_model, sr):
    audio = np.zeros((2, 16000), np.float32)
    response = _upload(operator_api, audio_model, _npz(audio=audio, sr=sr))
    assert response.status_code == 201, response.content
    dataset = Dataset.objects.get(pk=response.json()["id"])
    assert dataset.sample_count == 2
    job = jobs.create_job(audio_model.latest_version(), evaluation=dataset, enqueue=False)
    assert job.status == JobStatus.QUEUED


def test_the_same_contract_refuses_a_bad_scalar_at_upload(operator_api, audio_model):
    response = _upload(
        operator_api, audio_model, _npz(audio=np.zeros((2, 16000), np.float32), sr=np.zeros((2, 1)))
    )
    assert response.status_code == 400
    assert "scalar" in str(response.json())


def test_example_download_fits_the_contract(client, operator_user, audio_model, tmp_path):
    client.force_login(operator_user)
    page = client.get(f"/models/{audio_model.pk}/")
    assert b'id="dataset-format"' in page.content and b'id="dataset-example"' in page.content
    response = client.get(f"/models/{audio_model.pk}/datasets/example.npz")
    assert response.status_code == 200
    path = tmp_path / "example.npz"
    path.write_bytes(response.content)
    ds = services.register_dataset(
        path, name="ex", purpose="evaluation", original_filename="example.npz", model=audio_model
    )
    assert ds.sample_count == 4 and ds.has_labels


def test_example_of_a_model_without_versions_is_404(client, operator_user):
    client.force_login(operator_user)
    model = services.create_model(name="empty", task="classification")
    assert client.get(f"/models/{model.pk}/datasets/example.npz").status_code == 404


def test_anonymous_cannot_download_the_example(client, audio_model):
    assert client.get(f"/models/{audio_model.pk}/datasets/example.npz").status_code in (302, 403)


def test_latency_only_job_runs_and_kpi_missing_variants_are_not_offered(client, operator_user):
    demo = load_demo()
    job = jobs.create_job(
        demo.version,
        mode="recipes",
        recipes=["optimize", "int8-dynamic"],
        kpis={"max_size_mb": 0.5},
        enqueue=False,
    )
    assert job.evaluation is None
    assert runner.run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.result["latency_only"] and job.result["measurement"]["shape"]
    assert all(c.metrics.get("fidelity") is None for c in job.candidates.all() if c.metrics)
    client.force_login(operator_user)
    page = client.get(f"/models/jobs/{job.pk}/").content.decode()
    assert 'id="job-shape"' in page and "latency-only" in page
    missing = Candidate.objects.filter(job=job, meets_kpis=False).exclude(recipe="fp32")
    assert missing.exists()


def test_a_fidelity_kpi_without_evaluation_data_is_refused():
    demo = load_demo()
    with pytest.raises(jobs.JobRejected) as exc:
        jobs.create_job(demo.version, kpis={"min_fidelity": 0.9}, enqueue=False)
    assert exc.value.field == "evaluation"
