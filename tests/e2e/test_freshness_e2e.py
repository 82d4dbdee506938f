"""Freshness attacks between the real server and a real agent (the hostile proxy).

Unsigned answers (204, an empty manifest list) must not cancel an update; a
frozen or replayed check-in must become visible; a replayed body must not keep
the real ETag; a forged manifest's refusal must reach the genuine update.
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.agent import manifest as mf
from tests.conftest import tiny_model_bytes
from tests.e2e.proxy import Proxy
from tests.e2e.test_agent_attacks_e2e import CHECKIN, installed_base, log_messages
from tests.e2e.test_agent_ota_e2e import (
    _server,  # noqa: F401 - autouse fixture: hardware profiles, fast polling
    active_sha,
    deploy,
    enrollment_token,  # noqa: F401 - fixture
    run_all,
    stored_version,
    updates,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def proxy(live_server):
    middle = Proxy(live_server.url)
    yield middle
    middle.close()


def is_checkin(path: str) -> bool:
    return urllib.parse.urlsplit(path).path == CHECKIN


def without_timestamp(headers: dict) -> dict:
    return {k: v for k, v in headers.items() if k.lower() != mf.TIMESTAMP_HEADER.lower()}


def test_unsigned_204_or_empty_list_does_not_cancel_the_update(
    proxy,
    enrollment_token,  # noqa: F811
    admin_user,
    tmp_path,
):
    (state,), _base = installed_base(proxy, enrollment_token, admin_user, tmp_path)
    attack = {"checkin": None}

    def tamper(path, token, status, headers, body):
        if "/artifacts/" in path:
            return 503, {"Retry-After": "1"}, b"{}"  # the download cannot finish yet
        if is_checkin(path) and attack["checkin"] == "204":
            return 204, without_timestamp(headers), b""
        if is_checkin(path) and attack["checkin"] == "empty":
            # The genuine statement kept: it vouches for another body.
            return 200, headers, b'{"manifests":[]}'
        return status, headers, body

    proxy.tamper = tamper
    second = stored_version("digits", tiny_model_bytes(21), p95=1000.0)
    new = deploy(second, [state.uid], admin_user)
    run_all([state])  # manifest verified, download interrupted
    assert updates(new)[state.uid][0] == "downloading"
    for forged in ("204", "empty"):
        attack["checkin"] = forged
        run_all([state])
        assert state.slot("default")["pending"]["version"] == new.updates.get().manifest_version
        assert not any("withdrawn" in m for m in log_messages(state))
    proxy.tamper = None  # the man in the middle leaves
    run_all([state])
    assert updates(new)[state.uid] == ("succeeded", "")
    assert active_sha(state) == second.sha256


def test_frozen_checkin_is_reported_as_stale_metadata(
    proxy,
    enrollment_token,  # noqa: F811
    admin_user,
    tmp_path,
    settings,
):
    from devices.models import TelemetryPoint

    settings.OTA_TIMESTAMP_TTL_S = 3
    frozen: dict = {}

    def record(path, token, status, headers, body):
        if is_checkin(path):
            if "answer" in frozen:
                return frozen["answer"]  # the same answer forever
            frozen["last"] = (status, headers, body)
        return status, headers, body

    proxy.tamper = record
    (state,), _base = installed_base(proxy, enrollment_token, admin_user, tmp_path)
    run_all([state])
    assert not any("no fresh signed metadata" in m for m in log_messages(state))
    frozen["answer"] = frozen["last"]
    expires = json.loads(mf.base64.b64decode(frozen["last"][1][mf.TIMESTAMP_HEADER]))
    deadline = mf.parse_time(expires["statement"]["expires_at"]).timestamp()
    while time.time() <= deadline + 1:
        time.sleep(0.2)
    run_all([state])
    assert any("no fresh signed metadata" in m for m in log_messages(state))
    stale = [
        p.extra.get("metadata_stale_s")
        for p in TelemetryPoint.objects.filter(device__uid=state.uid)
        if p.extra
    ]
    assert any(s and s > 0 for s in stale)


def test_replayed_body_does_not_poison_the_etag(
    proxy,
    enrollment_token,  # noqa: F811
    admin_user,
    tmp_path,
):
    captured: list[bytes] = []

    def record(path, token, status, headers, body):
        if is_checkin(path) and status == 200:
            captured.append(body)
        return status, headers, body

    proxy.tamper = record
    (state,), _base = installed_base(proxy, enrollment_token, admin_user, tmp_path)
    old = captured[0]
    second = stored_version("digits", tiny_model_bytes(22), p95=1000.0)
    new = deploy(second, [state.uid], admin_user)
    # The real ETag and statement of the new answer, over the old body.
    proxy.tamper = lambda path, token, status, headers, body: (
        (status, headers, old) if is_checkin(path) and status == 200 else (status, headers, body)
    )
    run_all([state])
    assert updates(new)[state.uid][0] == "pending"
    proxy.tamper = None
    run_all([state])  # the genuine server: a full answer, not a 304 on a poisoned ETag
    assert updates(new)[state.uid] == ("succeeded", "")
    assert active_sha(state) == second.sha256


def test_refusal_of_a_forged_manifest_is_attached_to_the_genuine_update(
    proxy,
    enrollment_token,  # noqa: F811
    admin_user,
    tmp_path,
):
    (state,), base = installed_base(proxy, enrollment_token, admin_user, tmp_path)
    attacker = Ed25519PrivateKey.generate()

    def forge(path, token, status, headers, body):
        if is_checkin(path) and status == 200:
            payload = {**json.loads(body)["manifest"], "deployment": 999_999, "version": 77}
            body = json.dumps(mf.sign(payload, attacker)).encode()
        return status, headers, body

    proxy.tamper = forge
    new = deploy(
        stored_version("digits", tiny_model_bytes(23), p95=1000.0), [state.uid], admin_user
    )
    run_all([state])
    assert updates(new)[state.uid] == ("failed", "bad_signature")
    assert active_sha(state) == base.sha256
