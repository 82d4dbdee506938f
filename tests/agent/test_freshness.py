"""Freshness against a real HTTP peer: what an unsigned answer may not change.

Unsigned 204s and empty bodies never cancel a pending manifest; only a signed
timestamp statement issued after it does. A replayed body never keeps the real
ETag; a device without fresh signed metadata says so.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.agent import manifest as mf
from devices.agent.freshness import Freshness
from devices.agent.updater import Updater
from tests.agent.peer import DEVICE_UID
from tests.agent.test_updater import active_bytes, make_updater, states


def pending_v2(peer, state, client, good_model):
    """v1 installed; v2 verified and pending, its download cut halfway."""
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    assert make_updater(state, client).check_in().outcome == "succeeded"
    new = good_model.replace(b"relu", b"rel2")
    sha = peer.add_artifact(new, "cut")
    peer.offer(peer.manifest([("fp32", new)], version=2))
    assert make_updater(state, client).check_in().outcome == "download_retry"
    assert state.slot("classifier")["pending"]["version"] == 2
    peer.statuses.clear()
    return new, sha


def test_unsigned_204_or_empty_list_does_not_cancel_a_pending_update(
    peer, state, client, good_model
):
    new, sha = pending_v2(peer, state, client, good_model)
    genuine = peer.update
    peer.timestamps = False  # the man in the middle cannot sign
    peer.offer(None)
    make_updater(state, client).check_in()
    peer.update = (200, {"manifests": []}, {})
    make_updater(state, client).check_in()
    slot = state.slot("classifier")
    assert slot["pending"]["version"] == 2 and slot.get("result") != "withdrawn"
    assert "withdrawn" not in states(peer)
    # The genuine server again: the pending manifest is installed.
    peer.timestamps = True
    peer.update = genuine
    peer.faults[sha] = "good"
    assert make_updater(state, client).check_in().outcome == "succeeded"
    assert active_bytes(state) == new
    assert states(peer)[-1] == "succeeded"


def test_genuine_statement_replayed_over_a_forged_body_withdraws_nothing(
    peer, state, client, good_model
):
    _new, _sha = pending_v2(peer, state, client, good_model)
    # A statement from the genuine server vouches for its own body, not for {"manifests": []}.
    genuine = peer.timestamp('"x"', b"{}", {})
    peer.timestamps = False
    peer.update = (200, {"manifests": []}, {"ETag": '"x"', mf.TIMESTAMP_HEADER: genuine})
    make_updater(state, client).check_in()
    assert state.slot("classifier")["pending"]["version"] == 2


def test_statement_older_than_the_manifest_withdraws_nothing(peer, state, client, good_model):
    pending_v2(peer, state, client, good_model)
    past = datetime.now(UTC) - timedelta(minutes=5)
    old = mf.sign_statement(
        {
            "schema": 1,
            "type": "timestamp",
            "device": DEVICE_UID,
            "etag": None,
            "body_sha256": None,
            "updates": {},
            "issued_at": mf.format_time(past),
            "expires_at": mf.format_time(past + timedelta(hours=1)),
            "next_key": None,
        },
        peer.key,
    )
    peer.timestamps = False
    peer.update = (204, None, {mf.TIMESTAMP_HEADER: old})
    make_updater(state, client).check_in()
    assert state.slot("classifier")["pending"]["version"] == 2


def test_signed_statement_without_the_slot_withdraws(peer, state, client, good_model):
    _new, sha = pending_v2(peer, state, client, good_model)
    peer.offer(None)  # the real server: 204 with a fresh statement naming no update
    assert make_updater(state, client).check_in().outcome == "no_update"
    assert state.slot("classifier")["result"] == "withdrawn"
    assert not state.download_path(sha).exists()
    assert active_bytes(state) == good_model


def test_forged_or_foreign_statements_are_ignored(peer, state, client, good_model):
    pending_v2(peer, state, client, good_model)
    peer.offer(None)
    peer.timestamp_key = Ed25519PrivateKey.generate()  # not the pinned key
    make_updater(state, client).check_in()
    assert state.slot("classifier")["pending"]["version"] == 2


def test_etag_is_kept_only_with_the_body_the_statement_vouches_for(peer, state, client, good_model):
    peer.add_artifact(good_model)
    first = peer.manifest([("fp32", good_model)], version=1)
    peer.offer(first)
    make_updater(state, client).check_in()
    second_model = good_model.replace(b"relu", b"rel2")
    peer.add_artifact(second_model)
    second = peer.manifest([("fp32", second_model)], version=2)
    # The man in the middle: the genuine ETag and statement of the new answer over the
    # old body.
    import json

    data = json.dumps(second).encode()
    etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
    header = peer.timestamp(etag, data, second)
    peer.timestamps = False
    peer.update_etag = False
    peer.update = (200, first, {"ETag": etag, mf.TIMESTAMP_HEADER: header})
    make_updater(state, client).check_in()
    assert Freshness(state).record.get("etag") != etag
    # The genuine server again: no If-None-Match with the poisoned ETag, v2 arrives.
    peer.timestamps = True
    peer.update_etag = True
    peer.offer(second)
    assert make_updater(state, client).check_in().outcome == "succeeded"
    assert active_bytes(state) == second_model


def test_stale_metadata_is_reported(peer, state, client, good_model, caplog):
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    peer.timestamp_ttl_s = 60
    make_updater(state, client).check_in()
    assert Freshness(state).stale_s(datetime.now(UTC)) is None
    # A replay of that very answer, forever: 304 with the old statement.
    later = datetime.now(UTC) + timedelta(minutes=5)
    caplog.set_level(logging.WARNING, "edgefleet.agent")
    Updater(state, client, health_check=lambda p: None, now=lambda: later).check_in()
    assert any("no fresh signed metadata" in r.getMessage() for r in caplog.records)
    assert Freshness(state).stale_s(later) >= 200


def test_statement_announces_the_next_key_to_an_idle_device(peer, state, client):
    nxt = Ed25519PrivateKey.generate()
    raw = mf.raw_public_key(nxt.public_key())
    peer.next_key = {"public_key": mf.b64(raw), "key_id": mf.key_id(raw)}
    peer.offer(None)  # idle: only 204s
    make_updater(state, client).check_in()
    assert mf.key_id(raw) in [k["key_id"] for k in state.pinned_keys()]
    # After the switch the server signs with the next key; the old one is retired.
    peer.timestamp_key = nxt
    peer.key = nxt
    make_updater(state, client).check_in()
    assert [k["key_id"] for k in state.pinned_keys()] == [mf.key_id(raw)]
