"""Device update API: check-in (ETag/304/204/200), artifacts (Range), status reports; A1–A3."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from devices.agent import manifest as mf
from tests.conftest import bearer
from tests.devices.conftest import log_lines, points
from tests.ota.conftest import enroll, report

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployed(fleet, release):
    """All ten devices in one phase (more than 20 % of the fleet unphased: an admin)."""
    from ota import services

    return services.start_deployment(
        release, {"devices": [d.uid for d, _ in fleet]}, actor=_admin(), phases=[100]
    )


def _admin():
    from django.contrib.auth.models import Group, User

    user, _ = User.objects.get_or_create(username="root-admin")
    user.groups.add(Group.objects.get_or_create(name="admin")[0])
    return User.objects.get(pk=user.pk)


def update_of(device):
    from ota.models import DeviceUpdate

    return DeviceUpdate.objects.filter(device=device).order_by("-pk").first()


def test_checkin_200_then_304_and_verifies_with_agent_code(
    fleet, deployed, django_assert_max_num_queries
):
    from ota import keys

    device, token = fleet[0]
    client = bearer(token)
    response = client.get("/api/v1/device/update")
    assert response.status_code == 200
    envelope = response.json()
    key = keys.active_key()
    pinned = {
        mf.key_id(base64.b64decode(key.public_key_b64)): mf.load_public_key(key.public_key_b64)
    }
    verified = mf.verify(
        envelope, trusted_keys=pinned, device_uid=device.uid, last_version=0, now=datetime.now(UTC)
    )
    payload = verified.payload
    assert payload["deployment"] == deployed.pk and payload["slot"] == "default"
    assert payload["artifacts"][0]["sha256"] == deployed.release.variants.get().model_version.sha256
    assert int(response["X-Poll-Interval"]) > 0
    etag = response["ETag"]
    # Cached: only the credential lookup touches the database, and nothing is written.
    with django_assert_max_num_queries(1) as ctx:
        again = client.get("/api/v1/device/update", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again["ETag"] == etag
    assert not any(
        q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
        for q in ctx.captured_queries
    )
    # Another device's envelope is for another device (U5 server side).
    other = bearer(fleet[1][1]).get("/api/v1/device/update").json()
    assert other["manifest"]["device"] == fleet[1][0].uid
    assert other["manifest"]["version"] != payload["version"]


def test_checkin_204_when_nothing_assigned(enrollment):
    _device, token = enroll(enrollment, "lonely")
    response = bearer(token).get("/api/v1/device/update")
    assert response.status_code == 204
    assert (
        bearer(token).get("/api/v1/device/update", HTTP_IF_NONE_MATCH=response["ETag"]).status_code
        == 304
    )


def test_checkin_etag_changes_when_update_finishes(fleet, deployed):
    device, token = fleet[0]
    client = bearer(token)
    first = client.get("/api/v1/device/update")
    update = update_of(device)
    for state in ("downloading", "downloaded", "installing", "succeeded"):
        assert report(client, update, state).status_code == 200
    after = client.get("/api/v1/device/update", HTTP_IF_NONE_MATCH=first["ETag"])
    assert after.status_code == 204


def test_device_endpoints_refuse_sessions_operator_tokens_and_anonymous(
    fleet, deployed, operator_api, anon_api, client, operator_user
):
    sha = deployed.release.variants.get().model_version.sha256
    client.force_login(operator_user)
    for caller in (operator_api, anon_api, client):
        assert caller.get("/api/v1/device/update").status_code in (401, 403)
        assert caller.get(f"/api/v1/device/artifacts/{sha}").status_code in (401, 403)
        assert caller.post("/api/v1/device/update/status", {}, format="json").status_code in (
            401,
            403,
        )


def test_revoked_device_gets_401_everywhere(fleet, deployed):
    from devices import services

    device, token = fleet[0]
    client = bearer(token)
    sha = deployed.release.variants.get().model_version.sha256
    assert client.get("/api/v1/device/update").status_code == 200
    services.revoke_device(device)
    assert client.get("/api/v1/device/update").status_code == 401
    assert client.get(f"/api/v1/device/artifacts/{sha}").status_code == 401
    assert report(client, update_of(device), "downloading").status_code == 401


def test_artifact_full_range_and_416(fleet, deployed, settings):
    from tests.conftest import tiny_model_bytes

    if settings.AWS_STORAGE_BUCKET_NAME:
        pytest.skip("on S3 the artifact is a presigned redirect; S3 serves the ranges")

    data = tiny_model_bytes(2)
    sha = deployed.release.variants.get().model_version.sha256
    client = bearer(fleet[0][1])
    full = client.get(f"/api/v1/device/artifacts/{sha}")
    assert full.status_code == 200 and b"".join(full.streaming_content) == data
    part = client.get(f"/api/v1/device/artifacts/{sha}", HTTP_RANGE="bytes=10-")
    assert part.status_code == 206
    assert part["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    assert b"".join(part.streaming_content) == data[10:]
    middle = client.get(f"/api/v1/device/artifacts/{sha}", HTTP_RANGE="bytes=5-9")
    assert b"".join(middle.streaming_content) == data[5:10]
    tail = client.get(f"/api/v1/device/artifacts/{sha}", HTTP_RANGE="bytes=-4")
    assert b"".join(tail.streaming_content) == data[-4:]
    beyond = client.get(f"/api/v1/device/artifacts/{sha}", HTTP_RANGE=f"bytes={len(data)}-")
    assert beyond.status_code == 416 and beyond["Content-Range"] == f"bytes */{len(data)}"


def test_artifact_404_for_device_without_that_update(fleet, deployed, enrollment, v1):
    sha = deployed.release.variants.get().model_version.sha256
    _outsider, token = enroll(enrollment, "outsider")
    outsider = bearer(token)
    assert outsider.get(f"/api/v1/device/artifacts/{sha}").status_code == 404
    # v1 exists in storage but no update of this fleet names it
    assert bearer(fleet[0][1]).get(f"/api/v1/device/artifacts/{v1.sha256}").status_code == 404
    assert bearer(fleet[0][1]).get("/api/v1/device/artifacts/not-a-sha").status_code == 404


def test_artifact_redirects_to_presigned_url_on_s3(fleet, deployed, monkeypatch, settings):
    from django.core.files.storage import default_storage

    sha = deployed.release.variants.get().model_version.sha256
    if not settings.AWS_STORAGE_BUCKET_NAME:  # local run: stand in for the S3 backend
        default_storage._setup()
        storage = default_storage._wrapped

        class Bucket:
            name = "b"

        monkeypatch.setattr(storage, "bucket", Bucket(), raising=False)
        monkeypatch.setattr(
            storage,
            "url",
            lambda name: f"https://s3.example/{name}?X-Amz-Expires=300",
            raising=False,
        )
    response = bearer(fleet[0][1]).get(f"/api/v1/device/artifacts/{sha}")
    assert response.status_code == 302
    assert "models/" in response["Location"] and "Expires" in response["Location"]


def test_status_report_transitions_and_errors(fleet, deployed):
    device, token = fleet[0]
    client = bearer(token)
    update = update_of(device)
    assert report(client, update, "downloading").json()["attempts"] == 1
    assert report(client, update, "installing").status_code == 200
    bad = report(client, update, "downloading")
    assert bad.status_code == 409 and "installing" in bad.json()["detail"]
    failed = report(client, update, "failed", error="health check failed", error_code="health")
    assert failed.status_code == 200
    again = report(client, update, "failed", error="health check failed", error_code="health")
    assert again.status_code == 200  # a resent final report
    assert report(client, update, "succeeded").status_code == 409
    update.refresh_from_db()
    assert update.error_code == "health" and update.finished_at is not None


def test_status_report_malformed(fleet, deployed):
    client = bearer(fleet[0][1])
    update = update_of(fleet[0][0])
    assert report(client, update, "exploded").status_code == 400
    assert client.post("/api/v1/device/update/status", ["x"], format="json").status_code == 400
    assert (
        client.post(
            "/api/v1/device/update/status",
            {"state": "downloading", "manifest_version": "7"},
            format="json",
        ).status_code
        == 400
    )
    for field, value in (("deployment", "abc"), ("slot", ["x"])):
        bad = report(client, update, "downloading", **{field: value})
        assert bad.status_code == 400, bad.content


def test_device_cannot_touch_another_devices_update(fleet, deployed):
    a_client = bearer(fleet[0][1])
    b_update = update_of(fleet[1][0])
    assert report(a_client, b_update, "downloading").status_code == 404
    b_update.refresh_from_db()
    assert b_update.state == "pending"


def test_checkin_throttled_with_retry_after(fleet, deployed, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
            "device": "2/min",
        },
    }
    client = bearer(fleet[0][1])
    codes = [client.get("/api/v1/device/update").status_code for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429
    assert int(client.get("/api/v1/device/update")["Retry-After"]) > 0
    assert bearer(fleet[1][1]).get("/api/v1/device/update").status_code == 200  # per device


def test_checkin_database_down_is_503_with_retry_after(fleet, deployed, monkeypatch):
    from django.db import OperationalError

    def down(value):
        raise OperationalError("server closed the connection unexpectedly")

    from devices import auth

    monkeypatch.setattr(auth, "device_for_token", down)  # the credential lookup, any cache
    response = bearer(fleet[0][1]).get("/api/v1/device/update")
    assert response.status_code == 503 and int(response["Retry-After"]) > 0


def test_checkin_serves_every_slot(fleet, release, v1):
    from ota import services

    other = services.create_release(
        name="classifier", slot="classifier", variants=[{"name": "default", "model_version": v1.pk}]
    )
    admin = _admin()
    services.start_deployment(release, {"devices": [fleet[0][0].uid]}, actor=admin, phases=[100])
    services.start_deployment(other, {"devices": [fleet[0][0].uid]}, actor=admin, phases=[100])
    body = bearer(fleet[0][1]).get("/api/v1/device/update").json()
    assert sorted(e["manifest"]["slot"] for e in body["manifests"]) == ["classifier", "default"]


def test_upload_answers_carry_the_checkin_etag(fleet, release, settings):
    """The telemetry/logs answer names what `GET /update` would answer now: the same
    ETag while nothing changes, the new one as soon as an update is assigned, and
    only this device's."""
    from ota import services

    (device, token), (_other, other_token) = fleet[0], fleet[1]
    client = bearer(token)
    checkin = client.get("/api/v1/device/update")
    assert checkin.status_code == 204
    assert checkin["X-Upload-Interval"] == str(settings.DEVICE_UPLOAD_INTERVAL_S)
    sent = client.post("/api/v1/device/telemetry", {"batch": points(1, 3)}, format="json")
    assert sent.status_code == 200 and sent["X-Update-ETag"] == checkin["ETag"]
    services.start_deployment(release, {"devices": [device.uid]}, actor=_admin(), phases=[100])
    logs = client.post("/api/v1/device/logs", {"batch": log_lines(1, 2)}, format="json")
    assert logs.status_code == 200 and logs["X-Update-ETag"] != checkin["ETag"]
    assigned = client.get("/api/v1/device/update")
    assert assigned.status_code == 200 and assigned["ETag"] == logs["X-Update-ETag"]
    again = client.post("/api/v1/device/telemetry", {"batch": points(4, 4)}, format="json")
    assert again["X-Update-ETag"] == assigned["ETag"]
    untouched = bearer(other_token).post(
        "/api/v1/device/telemetry", {"batch": points(1, 1)}, format="json"
    )
    assert untouched["X-Update-ETag"] == checkin["ETag"]  # nothing assigned to it


def test_an_older_agent_sees_the_answers_it_knows(fleet, deployed):
    """An agent that knows nothing of upload intervals or upload ETags: its request
    shapes (a bare list, the batch object; If-None-Match) get the answers they got."""
    _device, token = fleet[0]
    client = bearer(token)
    first = client.get("/api/v1/device/update")
    assert first.status_code == 200 and first.json()["manifest"]
    assert int(first["X-Poll-Interval"]) > 0 and first[mf.TIMESTAMP_HEADER]
    again = client.get("/api/v1/device/update", HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304
    bare = client.post("/api/v1/device/telemetry", points(1, 2), format="json")
    boxed = client.post(
        "/api/v1/device/telemetry",
        {"boot_id": "boot-1", "batch": points(3, 4), "dropped": 0},
        format="json",
    )
    for answer, seqs in ((bare, [1, 2]), (boxed, [3, 4])):
        assert answer.status_code == 200
        assert answer.json()["accepted"] == {"boot-1": seqs}
        assert answer.json()["count"] == 2 and answer["X-EdgeFleet-New"] == "2"
