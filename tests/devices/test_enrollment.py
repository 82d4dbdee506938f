"""Enrollment, credentials (A1) and the server key."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device, DeviceCredential, EnrollmentToken
from ota.models import ServerKey
from tests.conftest import bearer

pytestmark = pytest.mark.django_db
ENROLL = "/api/v1/device/enroll"


def test_enroll_returns_token_once_and_stores_only_its_hash(anon_api, enrollment):
    facts = {
        "uid": "gw-1",
        "name": "Gateway 1",
        "hardware_profile": "x86-gateway-2c",
        "arch": "x86_64",
        "ram_mb": 8192,
        "onnxruntime": "1.20.1",
        "execution_providers": ["CPUExecutionProvider"],
        "agent_version": "0.1.0",
        "models": {"default": {"model_version": "digits:3"}},
    }
    response = anon_api.post(ENROLL, {"token": enrollment[1], "facts": facts}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["device_id"] == "gw-1"
    assert len(base64.b64decode(body["server_public_key"])) == 32
    key = ServerKey.objects.get(active=True)
    assert body["server_key_fingerprint"] == key.fingerprint
    device = Device.objects.get(uid="gw-1")
    assert device.group.name == "line-3"
    assert [t.name for t in device.tags.all()] == ["cam"]
    assert device.hardware_profile.slug == "x86-gateway-2c"
    assert device.model_version == "digits:3" and device.agent_version == "0.1.0"
    credential = DeviceCredential.objects.get(device=device)
    assert body["token"] not in (credential.token_hash, credential.prefix)
    assert len(credential.token_hash) == 64
    assert EnrollmentToken.objects.get().uses == 1
    # A second enrollment of the same device gets the same server key.
    again = anon_api.post(ENROLL, {"token": enrollment[1], "facts": {"uid": "gw-2"}}, format="json")
    assert again.json()["server_public_key"] == body["server_public_key"]


def test_enroll_without_uid_generates_one(anon_api, enrollment):
    response = anon_api.post(ENROLL, {"token": enrollment[1]}, format="json")
    assert response.status_code == 201
    assert response.json()["device_id"].startswith("dev-")


@pytest.mark.parametrize(
    "payload",
    [
        {"token": "efe_wrong-token-value-000000000000"},
        {"token": None},
        {},
        {"token": ["x"]},
    ],
)
def test_enroll_with_bad_token_is_403(anon_api, enrollment, payload):
    response = anon_api.post(ENROLL, payload, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "bad_enrollment_token"
    assert not Device.objects.exists()


def test_expired_revoked_and_used_up_tokens_refuse(anon_api, enrollment):
    token, value = enrollment
    token.expires_at = timezone.now() - timedelta(seconds=1)
    token.save()
    assert anon_api.post(ENROLL, {"token": value}, format="json").status_code == 403
    token.expires_at, token.max_uses = None, 1
    token.save()
    assert anon_api.post(ENROLL, {"token": value}, format="json").status_code == 201
    assert anon_api.post(ENROLL, {"token": value}, format="json").status_code == 403
    token.max_uses = None
    token.save()
    token.revoke()
    assert anon_api.post(ENROLL, {"token": value}, format="json").status_code == 403
    assert Device.objects.count() == 1


@pytest.mark.parametrize(
    "facts, code",
    [
        ({"uid": "bad uid with spaces"}, "bad_uid"),
        ({"hardware_profile": "toaster"}, "bad_hardware_profile"),
        ({"secret_sauce": 1}, "bad_inventory"),
        ({"models": ["x"]}, "bad_inventory"),
        ("not-an-object", "bad_facts"),
    ],
)
def test_enroll_with_bad_facts_is_400(anon_api, enrollment, facts, code):
    response = anon_api.post(ENROLL, {"token": enrollment[1], "facts": facts}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert EnrollmentToken.objects.get().uses == 0


def test_enroll_same_uid_twice_is_409(anon_api, enrollment, device_a):
    response = anon_api.post(
        ENROLL, {"token": enrollment[1], "facts": {"uid": "cam-a"}}, format="json"
    )
    assert response.status_code == 409
    assert DeviceCredential.objects.count() == 1


def test_revoked_device_gets_401_at_once(api_a, device_a, admin_api):
    assert (
        api_a.put("/api/v1/device/inventory", {"arch": "aarch64"}, format="json").status_code == 200
    )
    response = admin_api.post(f"/api/v1/devices/{device_a[0].uid}/revoke/")
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    for path in ("/api/v1/device/telemetry", "/api/v1/device/logs"):
        assert api_a.post(path, {"batch": []}, format="json").status_code == 401
    assert api_a.put("/api/v1/device/inventory", {}, format="json").status_code == 401


def test_unknown_and_malformed_bearer_tokens_are_401(device_a):
    for header in ("Bearer efd_not-a-real-token-at-all-000000", "Bearer", "Bearer a b"):
        client = bearer("x")
        client.credentials(HTTP_AUTHORIZATION=header)
        response = client.post("/api/v1/device/telemetry", {"batch": []}, format="json")
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_enrollment_is_throttled(anon_api, enrollment, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
            "enroll": "2/min",
        },
    }
    from rest_framework.settings import api_settings
    from rest_framework.throttling import SimpleRateThrottle

    SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    try:
        codes = [anon_api.post(ENROLL, {"token": "nope"}, format="json") for _ in range(3)]
        assert [r.status_code for r in codes] == [403, 403, 429]
        assert int(codes[-1]["Retry-After"]) > 0
    finally:
        SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES


def test_server_key_signs_and_verifies(db):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from ota import keys

    raw = base64.b64decode(keys.public_key_b64())
    signature = keys.sign(b"manifest")
    Ed25519PublicKey.from_public_bytes(raw).verify(signature, b"manifest")
    assert ServerKey.objects.count() == 1
