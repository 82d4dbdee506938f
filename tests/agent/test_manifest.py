"""Manifest signing and verification (docs/reliability.md U1, U2, U3, U5) and switching policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.agent import manifest as mf

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SHA = "ab" * 32


def payload(**overrides) -> dict:
    base = {
        "schema": 1,
        "device": "dev-a",
        "deployment": 7,
        "slot": "classifier",
        "version": 5,
        "issued_at": mf.format_time(NOW),
        "expires_at": mf.format_time(NOW + timedelta(hours=1)),
        "artifacts": [
            {"name": "fp32", "model_version": 1, "sha256": SHA, "size": 10, "url": "/a/1"},
            {"name": "int8", "model_version": 2, "sha256": "cd" * 32, "size": 5, "url": "/a/2"},
        ],
        "default": "fp32",
        "policy": {
            "rules": [{"when": {"battery_pct": {"lt": 20}}, "use": "int8"}],
            "default": "fp32",
        },
        "poll_interval_s": 30,
        "install_window": None,
        "next_key": None,
    }
    base.update(overrides)
    return base


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def trusted(key):
    raw = mf.raw_public_key(key.public_key())
    return {mf.key_id(raw): key.public_key()}


def verify(envelope, key, *, device="dev-a", last=4, now=NOW):
    return mf.verify(
        envelope, trusted_keys=trusted(key), device_uid=device, last_version=last, now=now
    )


def test_round_trip(key):
    result = verify(mf.sign(payload(), key), key)
    assert result.payload["version"] == 5 and not result.no_op


def test_signature_from_another_key_refused(key):
    other = Ed25519PrivateKey.generate()
    envelope = mf.sign(payload(), other)
    envelope["key_id"] = next(iter(trusted(key)))
    with pytest.raises(mf.ManifestError) as err:
        verify(envelope, key)
    assert err.value.code == "bad_signature"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 99),
        ("device", "dev-b"),
        ("expires_at", "2099-01-01T00:00:00Z"),
    ],
)
def test_tampered_field_refused(key, field, value):
    envelope = mf.sign(payload(), key)
    envelope["manifest"][field] = value
    with pytest.raises(mf.ManifestError, match="signature"):
        verify(envelope, key)


def test_tampered_artifact_hash_refused(key):
    envelope = mf.sign(payload(), key)
    envelope["manifest"]["artifacts"][0]["sha256"] = "00" * 32
    with pytest.raises(mf.ManifestError):
        verify(envelope, key)


def test_rollback_refused_and_equal_is_noop(key):
    with pytest.raises(mf.ManifestError) as err:
        verify(mf.sign(payload(version=3), key), key, last=4)
    assert err.value.code == "rollback"
    assert verify(mf.sign(payload(version=4), key), key, last=4).no_op


def test_expired_refused(key):
    envelope = mf.sign(payload(expires_at=mf.format_time(NOW - timedelta(seconds=1))), key)
    with pytest.raises(mf.ManifestError) as err:
        verify(envelope, key)
    assert err.value.code == "expired"


def test_other_device_refused(key):
    with pytest.raises(mf.ManifestError) as err:
        verify(mf.sign(payload(), key), key, device="dev-b")
    assert err.value.code == "wrong_device"


def test_garbage_envelopes(key):
    for envelope in (None, {}, {"manifest": "x"}, {"manifest": {}, "signature": "!!"}):
        with pytest.raises(mf.ManifestError):
            verify(envelope, key)


def test_policy_choice():
    p = payload()
    assert mf.choose_variant(p, {"battery_pct": 10}) == "int8"
    assert mf.choose_variant(p, {"battery_pct": 80}) == "fp32"
    assert mf.choose_variant(p, {}) == "fp32"  # unreadable signal: rule does not match


@pytest.mark.parametrize(
    "policy",
    [
        {"rules": [{"when": {"moon_phase": {"lt": 1}}, "use": "int8"}]},
        {"rules": [{"when": {"battery_pct": {"approx": 1}}, "use": "int8"}]},
        {"rules": [{"when": {"battery_pct": {"lt": 1}}, "use": "int4"}]},
        {"rules": [{"when": {}, "use": "int8"}]},
        {"rules": "all"},
    ],
)
def test_bad_policies(policy):
    with pytest.raises(mf.ManifestError) as err:
        mf.check_policy(policy, {"fp32", "int8"})
    assert err.value.code == "bad_policy"
