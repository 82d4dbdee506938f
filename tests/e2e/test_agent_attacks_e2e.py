"""Attacks on the wire between the real server and a real agent (U1–U5).

The agent talks to the live server through `tests.e2e.proxy.Proxy`, which
rewrites what the server sent: a signed manifest field, an artifact byte, an
artifact longer than signed, another device's manifest, an older manifest
replayed. Each is refused, the model installed before stays active, and the
reason reaches the server (status report or the agent's log lines). Expiry
cannot be produced by a correct server in a test's time; the agent's refusal
of an expired manifest is proven against the test peer (tests/agent).
"""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.conftest import tiny_model_bytes
from tests.e2e.proxy import Proxy
from tests.e2e.test_agent_ota_e2e import (
    _server,  # noqa: F401 - autouse fixture: hardware profiles, fast polling
    active_sha,
    deploy,
    enroll_agents,
    enrollment_token,  # noqa: F401 - fixture
    run_all,
    stored_version,
    updates,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
CHECKIN = "/api/v1/device/update"


@pytest.fixture
def proxy(live_server):
    middle = Proxy(live_server.url)
    yield middle
    middle.close()


def is_manifest(path: str, status: int) -> bool:
    return urllib.parse.urlsplit(path).path == CHECKIN and status == 200


def installed_base(proxy, token, admin_user, tmp_path, count=1):
    """Agents enrolled through the proxy, running a first version installed untouched."""
    states = enroll_agents(proxy, token, tmp_path, count)
    base = stored_version("digits", tiny_model_bytes(11), p95=1000.0)
    first = deploy(base, [s.uid for s in states], admin_user)
    run_all(states)
    assert set(updates(first).values()) == {("succeeded", "")}
    return states, base


def bump_size(envelope: dict) -> None:
    envelope["manifest"]["artifacts"][0]["size"] += 1


def other_url(envelope: dict) -> None:
    envelope["manifest"]["artifacts"][0]["url"] += "?evil=1"


@pytest.mark.parametrize("change", [bump_size, other_url], ids=["size", "url"])
def test_tampered_manifest_field_is_refused(
    proxy,
    enrollment_token,  # noqa: F811
    admin_user,
    tmp_path,
    change,
):
    (state,), base = installed_base(proxy, enrollment_token, admin_user, tmp_path)

    def tamper(path, token, status, headers, body):
        if is_manifest(path, status):
            envelope = json.loads(body)
            change(envelope)
            body = json.dumps(envelope).encode()
        return status, headers, body

    proxy.tamper = tamper
    new = deploy(
        stored_version("digits", tiny_model_bytes(12), p95=1000.0), [state.uid], admin_user
    )
    run_all([state])
    assert updates(new)[state.uid] == ("failed", "bad_signature")
    assert active_sha(state) == base.sha256


def flip_byte(body: bytes) -> bytes:
    data = bytearray(body)
    data[len(data) // 2] ^= 0x01
    return bytes(data)


def longer(body: bytes) -> bytes:
    return body + b"\0" * 4096


@pytest.mark.parametrize(
    "change,code", [(flip_byte, "hash_mismatch"), (longer, "too_long")], ids=["byte", "longer"]
)
def test_tampered_artifact_stream_is_refused(
    proxy,
    enrollment_token,  # noqa: F811
    admin_user,
    tmp_path,
    change,
    code,
):
    (state,), base = installed_base(proxy, enrollment_token, admin_user, tmp_path)
    proxy.tamper = lambda path, token, status, headers, body: (
        status,
        headers,
        change(body) if "/artifacts/" in path and status < 300 else body,
    )
    new = deploy(
        stored_version("digits", tiny_model_bytes(13), p95=1000.0), [state.uid], admin_user
    )
    run_all([state])
    assert updates(new)[state.uid] == ("failed", code)
    assert active_sha(state) == base.sha256
    assert len(list(state.model_dir("default").glob("*.onnx"))) == 1  # nothing half-installed


def log_messages(state) -> list[str]:
    from devices.models import LogLine

    return list(LogLine.objects.filter(device__uid=state.uid).values_list("message", flat=True))


def test_manifest_of_another_device_is_refused(
    proxy,
    enrollment_token,  # noqa: F811
    admin_user,
    tmp_path,
):
    (a, b), base = installed_base(proxy, enrollment_token, admin_user, tmp_path, count=2)
    manifests: dict[str, bytes] = {}

    def tamper(path, token, status, headers, body):
        if is_manifest(path, status):
            manifests.setdefault(token, body)
            if token == b.token:
                body = manifests[a.token]  # B is handed A's validly signed manifest
        return status, headers, body

    proxy.tamper = tamper
    new = deploy(
        stored_version("digits", tiny_model_bytes(14), p95=1000.0), [a.uid, b.uid], admin_user
    )
    run_all([a, b])
    outcome = updates(new)
    assert outcome[a.uid] == ("succeeded", "") and outcome[b.uid][0] != "succeeded"
    assert active_sha(b) == base.sha256
    # B's refusal names A's update, which B has no right to touch: the reason reaches
    # the server as B's log line.
    assert any("manifest refused (wrong_device)" in m for m in log_messages(b))


def test_replayed_older_manifest_is_refused(
    proxy,
    enrollment_token,  # noqa: F811
    admin_user,
    tmp_path,
):
    captured: list[bytes] = []

    def record(path, token, status, headers, body):
        if is_manifest(path, status):
            captured.append(body)
        return status, headers, body

    proxy.tamper = record
    (state,), _base = installed_base(proxy, enrollment_token, admin_user, tmp_path)
    second = stored_version("digits", tiny_model_bytes(15), p95=1000.0)
    deploy(second, [state.uid], admin_user)
    run_all([state])
    assert active_sha(state) == second.sha256
    old = captured[0]
    proxy.tamper = lambda path, token, status, headers, body: (
        (200, {"Content-Type": "application/json", "ETag": '"replay"'}, old)
        if urllib.parse.urlsplit(path).path == CHECKIN
        else (status, headers, body)
    )
    third = deploy(
        stored_version("digits", tiny_model_bytes(16), p95=1000.0), [state.uid], admin_user
    )
    run_all([state])
    assert active_sha(state) == second.sha256  # neither the replayed base nor anything new
    assert updates(third)[state.uid][0] != "succeeded"
    assert any("manifest refused (rollback)" in m for m in log_messages(state))
