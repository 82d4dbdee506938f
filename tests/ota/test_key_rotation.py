"""Key rotation (ota.rotation, `manage.py rotate_server_key`) and keys at rest."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command

from devices.agent import manifest as mf
from tests.conftest import bearer
from tests.ota.test_device_api import deployed, update_of  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


def trusted(key):
    return {mf.key_id(base64.b64decode(key.public_key_b64)): mf.load_public_key(key.public_key_b64)}


def test_private_key_is_stored_encrypted_and_loads_back(db):
    from ota import keys
    from ota.models import ServerKey

    active = keys.active_key()
    row = ServerKey.objects.get(pk=active.pk)
    assert keys.is_encrypted(row.private_key_pem)
    assert "BEGIN PRIVATE KEY" not in row.private_key_pem
    keys._loaded.clear()
    signature = keys.sign(b"x", row)
    mf.load_public_key(row.public_key_b64).verify(signature, b"x")
    with pytest.raises(ValueError):  # useless without the passphrase
        keys.load_pem(row.private_key_pem, b"another passphrase")


def test_rotation_announces_then_switches_and_re_signs(fleet, deployed, settings):  # noqa: F811
    from ota import keys
    from ota.models import ServerKey

    device, token = fleet[0]
    client = bearer(token)
    old = keys.active_key()
    client.get("/api/v1/device/update")  # an answer cached before the rotation
    with pytest.raises(CommandError, match="prepare"):
        call_command("rotate_server_key", "activate")
    call_command("rotate_server_key", "prepare")
    nxt = ServerKey.objects.get(active=False)
    answer = client.get("/api/v1/device/update")
    payload, _ = mf.verify_statement(
        answer["X-Signed-Timestamp"],
        trusted_keys=trusted(old),
        device_uid=device.uid,
        now=datetime.now(UTC),
    )
    assert payload["next_key"]["public_key"] == nxt.public_key_b64
    settings.OTA_KEY_OVERLAP_H = 1
    with pytest.raises(CommandError, match="overlap"):
        call_command("rotate_server_key", "activate")
    version = update_of(device).manifest_version
    call_command("rotate_server_key", "activate", "--force")
    assert ServerKey.objects.get(pk=old.pk).private_key_pem == ""  # retired: erased
    envelope = update_of(device).envelope
    verified = mf.verify(
        envelope,
        trusted_keys=trusted(nxt),
        device_uid=device.uid,
        last_version=0,
        now=datetime.now(UTC),
    )
    assert verified.payload["version"] == version and verified.payload["next_key"] is None
    answer = client.get("/api/v1/device/update")
    assert answer.json() == envelope  # the cached answer was dropped
    mf.verify_statement(
        answer["X-Signed-Timestamp"],
        trusted_keys=trusted(nxt),
        device_uid=device.uid,
        now=datetime.now(UTC),
    )


def legacy_key(active):
    """A ServerKey row as versions before encryption at rest wrote it: PEM in clear."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ota.models import ServerKey

    private = Ed25519PrivateKey.generate()
    raw = mf.raw_public_key(private.public_key())
    return ServerKey.objects.create(
        private_key_pem=private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        public_key_b64=mf.b64(raw),
        fingerprint=mf.key_id(raw) * 4,
        active=active,
    )


def test_the_data_migration_encrypts_keys_stored_in_clear(db):
    import importlib

    from django.apps import apps

    from ota import keys
    from ota.models import ServerKey

    rows = [legacy_key(True), legacy_key(False)]
    already = keys.new_key(active=False)
    already.save()
    importlib.import_module("ota.migrations.0005_encrypt_server_keys").encrypt_clear_keys(
        apps, None
    )
    for row in rows:
        stored = ServerKey.objects.get(pk=row.pk).private_key_pem
        assert keys.is_encrypted(stored) and "BEGIN PRIVATE KEY" not in stored
        public = mf.raw_public_key(keys.load_pem(stored).public_key())
        assert public == base64.b64decode(row.public_key_b64)  # the same key, now encrypted
    assert ServerKey.objects.get(pk=already.pk).private_key_pem == already.private_key_pem


def test_keys_stored_in_clear_before_are_encrypted(db):
    from ota import keys
    from ota.models import ServerKey

    legacy = legacy_key

    used, idle = legacy(True), legacy(False)
    keys._loaded.clear()
    keys.sign(b"x", keys.active_key())  # first use of a key in clear encrypts it
    assert keys.is_encrypted(ServerKey.objects.get(pk=used.pk).private_key_pem)
    call_command("rotate_server_key", "encrypt")
    stored = ServerKey.objects.get(pk=idle.pk).private_key_pem
    assert keys.is_encrypted(stored)
    assert mf.raw_public_key(keys.load_pem(stored).public_key()) == base64.b64decode(
        idle.public_key_b64
    )
