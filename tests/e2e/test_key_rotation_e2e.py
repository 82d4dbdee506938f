"""Key rotation with real agents: idle devices that only ever get 204/304 learn the
next key from the check-in's signed timestamp, and everything signed after the
switch verifies on them; the signing key is never in a database row in clear."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from devices.agent import manifest as mf
from tests.conftest import tiny_model_bytes
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


def test_idle_devices_follow_a_rotation(
    live_server,
    enrollment_token,  # noqa: F811
    admin_user,
    tmp_path,
):
    from ota.models import ServerKey

    idle, busy = enroll_agents(live_server, enrollment_token, tmp_path, 2)
    run_all([idle, busy])  # nothing assigned: 204
    old_kid = idle.pinned_keys()[0]["key_id"]
    first = stored_version("digits", tiny_model_bytes(31), p95=1000.0)
    call_command("rotate_server_key", "prepare")
    nxt = ServerKey.objects.get(active=False)
    earlier = deploy(first, [busy.uid], admin_user)  # signed by the current key
    run_all([idle, busy])  # idle: still only a 204, but a signed one announcing the next key
    assert updates(earlier)[busy.uid] == ("succeeded", "")
    assert [k["key_id"] for k in idle.pinned_keys()] == [
        old_kid,
        mf.key_id(mf.base64.b64decode(nxt.public_key_b64)),
    ]
    with pytest.raises(Exception, match="overlap"):
        call_command("rotate_server_key", "activate")
    call_command("rotate_server_key", "activate", "--force")
    assert not any(
        "PRIVATE KEY" in k.private_key_pem and "ENCRYPTED" not in k.private_key_pem
        for k in ServerKey.objects.all()
    )
    second = stored_version("digits", tiny_model_bytes(32), p95=1000.0)
    new = deploy(second, [idle.uid], admin_user)
    run_all([idle, busy])
    assert updates(new)[idle.uid] == ("succeeded", "")  # signed by the new key only
    assert active_sha(idle) == second.sha256 and active_sha(busy) == first.sha256
    assert [k["key_id"] for k in idle.pinned_keys()] == [
        mf.key_id(mf.base64.b64decode(nxt.public_key_b64))
    ]  # the old key retired
