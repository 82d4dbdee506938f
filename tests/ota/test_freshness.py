"""Check-in freshness: a signed timestamp statement on 200, 204 and 304 (the agent's
own verification code reads it); old agents see the answers they always saw; a
refused manifest's report reaches the device's genuine update."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from devices.agent import manifest as mf
from tests.conftest import bearer
from tests.ota.test_device_api import deployed, update_of  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db
HEADER = "X-Signed-Timestamp"


def report(client, **body):
    return client.post("/api/v1/device/update/status", body, format="json")


def pinned():
    from ota import keys

    key = keys.active_key()
    return {mf.key_id(base64.b64decode(key.public_key_b64)): mf.load_public_key(key.public_key_b64)}


def statement(response, uid, now=None):
    payload, _kid = mf.verify_statement(
        response[HEADER], trusted_keys=pinned(), device_uid=uid, now=now or datetime.now(UTC)
    )
    return payload


def test_every_answer_carries_a_statement_bound_to_device_etag_and_body(fleet, settings):
    from ota import services
    from tests.ota.conftest import make_version

    settings.OTA_TIMESTAMP_TTL_S = 600
    device, token = fleet[0]
    client = bearer(token)
    idle = client.get("/api/v1/device/update")
    assert idle.status_code == 204
    signed = statement(idle, device.uid)
    assert signed["etag"] == idle["ETag"] and signed["updates"] == {}
    assert signed["body_sha256"] is None
    issued = mf.parse_time(signed["issued_at"])
    assert mf.parse_time(signed["expires_at"]) - issued == timedelta(seconds=600)
    with pytest.raises(mf.ManifestError):  # bound to this device
        statement(idle, fleet[1][0].uid)
    with pytest.raises(mf.ManifestError, match="expired"):
        statement(idle, device.uid, now=issued + timedelta(seconds=601))

    from tests.ota.test_device_api import _admin

    release = services.create_release(
        name="r",
        variants=[{"name": "default", "model_version": make_version(seed=3).pk}],
        actor=_admin(),
    )
    services.start_deployment(release, {"devices": [device.uid]}, actor=_admin())
    assigned = client.get("/api/v1/device/update")
    assert assigned.status_code == 200
    signed = statement(assigned, device.uid)
    assert signed["etag"] == assigned["ETag"]
    assert signed["body_sha256"] == hashlib.sha256(assigned.content).hexdigest()
    version = assigned.json()["manifest"]["version"]
    assert signed["updates"] == {"default": version}
    again = client.get("/api/v1/device/update", HTTP_IF_NONE_MATCH=assigned["ETag"])
    assert again.status_code == 304
    assert statement(again, device.uid)["body_sha256"] == signed["body_sha256"]


def test_old_agents_see_the_answers_they_always_saw(fleet, deployed):  # noqa: F811
    """An agent that ignores the header: 204 empty, 200 the bare envelope, 304 on its ETag."""
    device, token = fleet[0]
    client = bearer(token)
    first = client.get("/api/v1/device/update")
    assert first.status_code == 200 and set(first.json()) == {"manifest", "signature", "key_id"}
    mf.verify(
        first.json(),
        trusted_keys=pinned(),
        device_uid=device.uid,
        last_version=0,
        now=datetime.now(UTC),
    )
    assert client.get("/api/v1/device/update", HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304
    from ota import services

    services.abort(deployed)
    idle = client.get("/api/v1/device/update", HTTP_IF_NONE_MATCH=first["ETag"])
    assert idle.status_code == 204 and idle.content == b""


def test_statement_stays_valid_for_half_its_lifetime_while_cached(fleet, settings):
    settings.OTA_TIMESTAMP_TTL_S = 4
    device, token = fleet[0]
    client = bearer(token)
    first = statement(client.get("/api/v1/device/update"), device.uid)
    from ota import manifests

    assert manifests.cache_seconds() == 2
    import time

    time.sleep(2.2)
    later = client.get("/api/v1/device/update", HTTP_IF_NONE_MATCH='"none"')
    assert later.status_code == 304
    second = statement(later, device.uid)
    assert second["issued_at"] > first["issued_at"]


def test_refusal_of_a_forged_manifest_reaches_the_genuine_update(fleet, deployed):  # noqa: F811
    device, token = fleet[0]
    client = bearer(token)
    genuine = update_of(device)
    assert genuine.state == "pending"
    forged = {
        "deployment": 999_999,
        "manifest_version": 4242,
        "slot": "default",
        "state": "failed",
        "error": "signature does not verify",
        "error_code": "bad_signature",
        "refused_manifest": True,
    }
    answer = report(client, **forged)
    assert answer.status_code == 200, answer.content
    genuine.refresh_from_db()
    assert (genuine.state, genuine.error_code) == ("failed", "bad_signature")
    # Another device's genuine update is never touched, whatever the report names.
    other = update_of(fleet[1][0])
    assert report(bearer(fleet[1][1]), **{**forged, "deployment": deployed.pk}).status_code == 200
    other.refresh_from_db()
    genuine.refresh_from_db()
    assert other.device_id == fleet[1][0].pk and genuine.device_id == device.pk


def test_refusal_report_without_anything_to_attach_to_is_404(fleet):
    _device, token = fleet[0]
    answer = report(
        bearer(token),
        deployment=None,
        manifest_version=None,
        slot="default",
        state="failed",
        error_code="bad_signature",
        refused_manifest=True,
    )
    assert answer.status_code == 404
    bad = report(
        bearer(token), deployment=None, manifest_version="x", slot="default", state="failed"
    )
    assert bad.status_code == 400
