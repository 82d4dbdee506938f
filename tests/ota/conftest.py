"""OTA fixtures: stored model versions, enrolled devices with bearer clients, a release."""

from __future__ import annotations

import hashlib
import time

import pytest

from tests.conftest import (
    bearer,  # noqa: F401 - still importable from here
    seed_hardware_profiles,
    tiny_model_bytes,
)

# The deployment wizard's fields as an operator fills them in (add `release`).
WIZARD_FORM = {
    "tags": "cam",
    "phases": "10, 50, 100",
    "max_failure_rate": "0.2",
    "min_successful": "1",
    "max_latency_ratio": "1.5",
    "min_latency_samples": "3",
    "min_soak_s": "0",
}


def make_version(model_name: str = "digits", seed: int = 0, *, p95: float | None = 10.0):
    """A model version whose artifact is in storage, without the validation sandbox."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from compression.models import MLModel, ModelVersion

    data = tiny_model_bytes(seed)
    sha = hashlib.sha256(data).hexdigest()
    name = f"models/{sha}.onnx"
    if not default_storage.exists(name):
        default_storage.save(name, ContentFile(data))
    model, _ = MLModel.objects.get_or_create(name=model_name)
    number = model.versions.count() + 1
    metrics = {"latency_ms": {"p50": p95 * 0.8, "p95": p95}} if p95 else {}
    return ModelVersion.objects.create(
        model=model, number=number, artifact=name, sha256=sha, size_bytes=len(data), metrics=metrics
    )


@pytest.fixture(autouse=True)
def _profiles(db):
    seed_hardware_profiles()


def enroll(enrollment, uid: str, *, profile: str = "rpi4", installed=None):
    """(device, token); `installed`: a ModelVersion reported in the inventory's default slot."""
    from devices import services

    facts = {"uid": uid, "hardware_profile": profile}
    if installed is not None:
        facts["models"] = {
            "default": {
                "model_version": f"{installed.model.name}:{installed.number}",
                "sha256": installed.sha256,
            }
        }
    return services.enroll(enrollment[1], facts)


@pytest.fixture
def v1(db):
    return make_version(seed=1, p95=10.0)


@pytest.fixture
def v2(db):
    return make_version(seed=2, p95=10.0)


@pytest.fixture
def fleet(enrollment, v1):
    """Ten rpi4 devices running v1: [(device, token)]."""
    return [enroll(enrollment, f"cam-{i:02d}", installed=v1) for i in range(10)]


@pytest.fixture
def release(v2, operator_user):
    from ota import services

    return services.create_release(
        name="digits v2",
        variants=[{"name": "default", "model_version": v2.pk}],
        actor=operator_user,
    )


def report(client, update, state: str, **extra):
    return client.post(
        "/api/v1/device/update/status",
        {
            "deployment": update.deployment_id,
            "manifest_version": update.manifest_version,
            "slot": update.slot,
            "state": state,
            **extra,
        },
        format="json",
    )


def finish(update, state: str = "succeeded", **extra):
    """Drive one update through the agent's states via the service."""
    from ota import services

    for step in ("downloading", "downloaded", "installing", state):
        services.report_status(
            update.device,
            {
                "deployment": update.deployment_id,
                "manifest_version": update.manifest_version,
                "slot": update.slot,
                "state": step,
                **extra,
            },
        )


def telemetry(device, label: str, latencies, **extra_fields):
    from devices import services

    now = time.time()
    services.ingest_telemetry(
        device,
        [
            {
                "seq": i + 1,
                "boot_id": "b1",
                "ts": now - 0.01 * (len(latencies) - i),
                "model_version": label,
                "latency_ms": value,
                **extra_fields,
            }
            for i, value in enumerate(latencies)
        ],
    )
