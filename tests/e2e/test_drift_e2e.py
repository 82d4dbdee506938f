"""Input drift end to end: the server signs the version's calibration statistics into
the manifest, two real agents run it on their own input folders over HTTP, the one
whose inputs moved reports a high score, the alert rule fires for it alone, and the
device page shows it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from tests.conftest import seed_hardware_profiles, tiny_model_bytes
from tests.e2e.test_agent_ota_e2e import agent_cli, deploy, enroll_agents, stored_version

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def calibration_dataset(model, samples):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from compression.choices import DatasetPurpose
    from compression.models import Dataset

    buffer = io.BytesIO()
    np.savez(buffer, x=samples)
    name = default_storage.save("datasets/calibration-drift.npz", ContentFile(buffer.getvalue()))
    return Dataset.objects.create(
        name="calibration",
        purpose=DatasetPurpose.CALIBRATION,
        model=model,
        artifact=name,
        sha256="c" * 64,
        size_bytes=len(buffer.getvalue()),
        sample_count=len(samples),
        arrays={"x": {"dtype": "float32", "shape": list(samples.shape)}},
    )


def input_folder(root, mean: float, seed: int):
    rng = np.random.default_rng(seed)
    root.mkdir()
    for i in range(8):
        np.save(root / f"{i}.npy", rng.normal(mean, 1.0, (64, 4)).astype("float32"))
    config = root.parent / f"{root.name}.json"
    config.write_text(json.dumps({"input_dir": str(root)}))
    return config


def test_shifted_inputs_raise_the_score_and_the_alert(live_server, admin_user, tmp_path, client):
    from devices import metrics, services
    from devices.choices import AlertKind
    from devices.models import Alert, Device, TelemetryPoint
    from ota.models import DeviceUpdate

    seed_hardware_profiles()  # a transactional test starts with none; agents name rpi4
    token = services.create_enrollment_token(name="drift")[1]
    calm, moved = enroll_agents(live_server, token, tmp_path, 2)
    version = stored_version("drifty", tiny_model_bytes(5), p95=1000.0)
    version.inputs = [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    version.save(update_fields=["inputs"])
    rng = np.random.default_rng(0)
    calibration_dataset(version.model, rng.normal(0.0, 1.0, (256, 4)).astype("float32"))
    deploy(version, [calm.uid, moved.uid], admin_user)

    signed = DeviceUpdate.objects.filter(device__uid=calm.uid).get().envelope
    stats = signed["manifest"]["artifacts"][0]["input_stats"]["x"]
    assert abs(stats["mean"]) < 0.2 and len(stats["counts"]) == 10

    for state, mean, seed in ((calm, 0.0, 1), (moved, 3.0, 2)):
        config = input_folder(tmp_path / f"inputs-{state.uid}", mean, seed)
        agent_cli("run", "--once", "--state-dir", str(state.root), "--config", str(config))

    scores = {}
    for uid in (calm.uid, moved.uid):
        point = (
            TelemetryPoint.objects.filter(device__uid=uid, extra__has_key="drift_score")
            .order_by("-ts")
            .first()
        )
        scores[uid] = point.extra["drift_score"]
    assert scores[calm.uid] < 0.25 < scores[moved.uid]

    assert metrics.check_drift() == 1
    alert = Alert.objects.get(kind=AlertKind.DRIFT)
    assert alert.device.uid == moved.uid and "input x" in alert.message
    assert metrics.check_drift() == 0  # one open alert per device and kind

    client.force_login(admin_user)
    page = client.get(f"/devices/d/{moved.uid}/").content.decode()
    assert "Input drift (PSI)" in page and f"{scores[moved.uid]:.3f} on input x" in page
    assert "no power sensor" in page or "mJ at" in page
    assert Device.objects.get(uid=calm.uid).alerts.count() == 0
