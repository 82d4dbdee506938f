"""The update protocol against a real HTTP peer: U1–U6, U8, U9 at the agent level."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.agent import manifest as mf
from devices.agent.updater import Updater

OK = None  # a health check that passes


def make_updater(state, client, health=lambda paths: OK):
    return Updater(state, client, health_check=health)


def install(peer, state, client, data, *, version=1, name="fp32"):
    peer.add_artifact(data)
    peer.offer(peer.manifest([(name, data)], version=version))
    return make_updater(state, client).check_in()


def active_bytes(state, slot="classifier") -> bytes | None:
    pointer = state.pointer(slot)
    if not pointer:
        return None
    variant = pointer["variants"][pointer["active"]]
    return (state.model_dir(slot) / variant["path"]).read_bytes()


def states(peer) -> list[str]:
    return [s["state"] for s in peer.statuses]


def test_install_happy_path(peer, state, client, good_model):
    result = install(peer, state, client, good_model)
    assert result.outcome == "succeeded"
    assert active_bytes(state) == good_model
    assert states(peer) == ["downloading", "downloaded", "installing", "succeeded"]
    assert peer.statuses[0]["deployment"] == 11 and peer.statuses[0]["manifest_version"] == 1
    assert all(r["headers"]["authorization"] == "Bearer edf_device_token_1" for r in peer.requests)
    assert state.slot("classifier")["trusted_version"] == 1
    assert not list((state.root / "downloads").iterdir())


def test_etag_gives_304_and_nothing_happens(peer, state, client, good_model):
    install(peer, state, client, good_model)
    again = make_updater(state, client).check_in()
    assert again.outcome == "not_modified"
    assert peer.seen("GET", "/api/v1/device/update")[-1]["headers"]["if-none-match"]
    assert len(peer.seen("GET", "/api/v1/device/artifacts")) == 1


def test_204_means_nothing_to_do(peer, state, client):
    assert make_updater(state, client).check_in().outcome == "no_update"
    assert state.pointer("classifier") is None


def test_previous_version_kept_and_switch(peer, state, client, good_model):
    install(peer, state, client, good_model, version=1)
    second = good_model + b""  # same graph, new bytes below
    second = good_model.replace(b"relu", b"rel2")
    assert install(peer, state, client, second, version=2).outcome == "succeeded"
    pointer = state.pointer("classifier")
    assert active_bytes(state) == second
    assert pointer["previous"]["version"] == 1
    kept = {p.name for p in state.model_dir("classifier").glob("*.onnx")}
    assert len(kept) == 2


def _refused(peer, state, client, good_model, envelope, code):
    install(peer, state, client, good_model, version=3)
    peer.statuses.clear()
    peer.offer(envelope)
    assert make_updater(state, client).check_in().outcome == "refused"
    assert active_bytes(state) == good_model  # the installed model stays
    assert peer.statuses[-1]["state"] == "failed"
    assert peer.statuses[-1]["error_code"] == code
    return peer.statuses[-1]


def test_u1_bad_signature_refused(peer, state, client, good_model):
    envelope = peer.manifest([("fp32", b"other")], version=4)
    envelope["manifest"]["artifacts"][0]["size"] += 1  # tampered after signing
    _refused(peer, state, client, good_model, envelope, "bad_signature")


def test_u1_unknown_key_refused(peer, state, client, good_model):
    envelope = peer.manifest([("fp32", b"other")], version=4, key=Ed25519PrivateKey.generate())
    _refused(peer, state, client, good_model, envelope, "bad_signature")


def test_u2_older_version_refused_equal_is_noop(peer, state, client, good_model):
    _refused(
        peer, state, client, good_model, peer.manifest([("fp32", b"x")], version=2), "rollback"
    )
    peer.statuses.clear()
    peer.offer(peer.manifest([("fp32", good_model)], version=3))
    assert make_updater(state, client).check_in().outcome == "no_op"
    assert peer.statuses == []


def test_u3_expired_refused(peer, state, client, good_model):
    _refused(
        peer,
        state,
        client,
        good_model,
        peer.manifest([("fp32", b"x")], version=4, expires_in=-1),
        "expired",
    )


def test_u5_other_device_refused(peer, state, client, good_model):
    _refused(
        peer,
        state,
        client,
        good_model,
        peer.manifest([("fp32", b"x")], version=4, device="dev-other"),
        "wrong_device",
    )


@pytest.mark.parametrize(
    "fault,code", [("tamper", "hash_mismatch"), ("longer", "too_long"), ("endless", "too_long")]
)
def test_u4_artifact_faults_not_installed(peer, state, client, good_model, fault, code):
    install(peer, state, client, good_model, version=1)
    new = good_model.replace(b"relu", b"rel2")
    peer.add_artifact(new, fault)
    peer.offer(peer.manifest([("fp32", new)], version=2))
    assert make_updater(state, client).check_in().outcome == "failed"
    assert active_bytes(state) == good_model
    assert peer.statuses[-1]["error_code"] == code
    assert not list((state.root / "downloads").iterdir())
    assert len(list(state.model_dir("classifier").glob("*.onnx"))) == 1


def _partial(state, data: bytes, k: int):
    import hashlib

    part = state.download_path(hashlib.sha256(data).hexdigest())
    part.write_bytes(data[:k])


def test_u8_resume_asks_for_the_rest(peer, state, client, good_model):
    _partial(state, good_model, 40)
    assert install(peer, state, client, good_model).outcome == "succeeded"
    ranges = [r["headers"].get("range") for r in peer.seen("GET", "/api/v1/device/artifacts")]
    assert ranges == ["bytes=40-"]
    assert active_bytes(state) == good_model


@pytest.mark.parametrize("fault", ["bad_range", "bad_total"])
def test_u8_wrong_content_range_discarded(peer, state, client, good_model, fault):
    _partial(state, good_model, 40)
    peer.add_artifact(good_model, fault)
    peer.offer(peer.manifest([("fp32", good_model)]))
    assert make_updater(state, client).check_in().outcome == "succeeded"
    ranges = [r["headers"].get("range") for r in peer.seen("GET", "/api/v1/device/artifacts")]
    assert ranges == ["bytes=40-", None]  # discarded, restarted from zero
    assert active_bytes(state) == good_model


def test_u8_hash_checked_after_resume(peer, state, client, good_model):
    import hashlib

    part = state.download_path(hashlib.sha256(good_model).hexdigest())
    part.write_bytes(b"\0" * 40)  # bytes a power cut never wrote
    assert install(peer, state, client, good_model).outcome == "succeeded"
    ranges = [r["headers"].get("range") for r in peer.seen("GET", "/api/v1/device/artifacts")]
    assert ranges == ["bytes=40-", None]
    assert active_bytes(state) == good_model


def test_u9_failed_health_check_rolls_back(peer, state, client, good_model, nan_model):
    from devices.agent.health import run_health_check

    install(peer, state, client, good_model, version=1)
    peer.statuses.clear()
    peer.add_artifact(nan_model)
    peer.offer(peer.manifest([("fp32", nan_model)], version=2))
    result = Updater(state, client, health_check=run_health_check).check_in()
    assert result.outcome == "rolled_back"
    assert active_bytes(state) == good_model
    assert states(peer)[-1] == "rolled_back"
    assert "not finite" in peer.statuses[-1]["error"]
    assert peer.statuses[-1]["error_code"] == "health_check"
    assert len(list(state.model_dir("classifier").glob("*.onnx"))) == 1


def test_real_health_check_passes_good_model(tmp_path, good_model):
    from devices.agent.health import run_health_check

    path = tmp_path / "m.onnx"
    path.write_bytes(good_model)
    assert run_health_check([str(path)]) is None
    path.write_bytes(b"not a model")
    assert run_health_check([str(path)])


def test_u6_key_rotation(peer, state, client, good_model):
    new_key = Ed25519PrivateKey.generate()
    new_b64 = mf.b64(mf.raw_public_key(new_key.public_key()))
    # A key announced by a manifest signed with an unknown key is not pinned.
    rogue = peer.manifest(
        [("fp32", good_model)],
        version=1,
        key=Ed25519PrivateKey.generate(),
        next_key={"public_key": new_b64, "key_id": "x"},
    )
    peer.offer(rogue)
    make_updater(state, client).check_in()
    assert len(state.pinned_keys()) == 1
    # Announced by the current key: pinned; then manifests signed by it verify.
    peer.add_artifact(good_model)
    peer.offer(
        peer.manifest(
            [("fp32", good_model)], version=1, next_key={"public_key": new_b64, "key_id": "y"}
        )
    )
    assert make_updater(state, client).check_in().outcome == "succeeded"
    assert len(state.pinned_keys()) == 2
    second = good_model.replace(b"relu", b"rel2")
    peer.add_artifact(second)
    peer.offer(peer.manifest([("fp32", second)], version=2, key=new_key))
    assert make_updater(state, client).check_in().outcome == "succeeded"
    # The old key is retired once the new one is in use.
    assert [k["public_key"] for k in state.pinned_keys()] == [new_b64]
    peer.offer(peer.manifest([("fp32", second)], version=3))
    assert make_updater(state, client).check_in().outcome == "refused"


def test_throttled_check_in_raises_with_retry_after(peer, state, client):
    from devices.agent.updater import CheckInError

    peer.overload = [7]
    with pytest.raises(CheckInError) as err:
        make_updater(state, client).check_in()
    assert err.value.retry_after == 7


def test_presigned_redirect_does_not_leak_token(peer, state, client, good_model):
    """A 302 to storage is followed without the device token."""
    sha = peer.add_artifact(good_model)
    with type(peer)() as storage:
        storage.artifacts[sha] = good_model
        peer.offer(peer.manifest([("fp32", good_model)]))
        original = peer.update[1]["manifest"]["artifacts"][0]["url"]
        peer.redirects = {original: storage.url + "/presigned/" + sha}
        result = make_updater(state, client).check_in()
        assert result.outcome == "succeeded"
        seen = storage.seen("GET", "/presigned/")
        assert seen and "authorization" not in seen[0]["headers"]


def test_install_window_downloads_now_installs_later(peer, state, client, good_model):
    from datetime import UTC, datetime

    peer.add_artifact(good_model)
    peer.offer(
        peer.manifest([("fp32", good_model)], install_window={"start": "02:00", "end": "03:00"})
    )
    clock = {"now": datetime(2026, 11, 28, 12, 0, tzinfo=UTC)}
    updater = Updater(state, client, health_check=lambda p: OK, now=lambda: clock["now"])
    assert updater.check_in().outcome == "waiting_window"
    assert state.pointer("classifier") is None
    assert states(peer) == ["downloading", "downloaded"]
    assert updater.check_in().outcome == "waiting_window"  # 304; resumes, no new reports
    assert states(peer) == ["downloading", "downloaded"]
    assert len(peer.seen("GET", "/api/v1/device/artifacts")) == 1
    clock["now"] = datetime(2026, 11, 28, 2, 30, tzinfo=UTC)
    assert updater.check_in().outcome == "succeeded"
    assert states(peer) == ["downloading", "downloaded", "installing", "succeeded"]
    assert active_bytes(state) == good_model


def test_pending_manifest_withdrawn_by_the_server(peer, state, client, good_model):
    """A download cut short, then the server assigns nothing (aborted): drop it."""
    import hashlib

    peer.add_artifact(good_model)
    envelope = peer.manifest([("fp32", good_model)], version=1)
    state.update_slot("classifier", trusted_version=1, pending=envelope["manifest"])
    part = state.download_path(hashlib.sha256(good_model).hexdigest())
    part.write_bytes(good_model[:30])
    peer.offer(None)
    assert make_updater(state, client).check_in().outcome == "no_update"
    assert not part.exists() and state.pointer("classifier") is None
    assert state.slot("classifier")["result"] == "withdrawn"
    assert not peer.seen("GET", "/api/v1/device/artifacts")


def test_pending_manifest_finishes_offline_when_downloaded(peer, state, client, good_model):
    import hashlib

    from devices.agent.updater import CheckInError

    envelope = peer.manifest([("fp32", good_model)], version=1)
    state.update_slot("classifier", trusted_version=1, pending=envelope["manifest"])
    state.download_path(hashlib.sha256(good_model).hexdigest()).write_bytes(good_model)
    peer.down = True
    with pytest.raises(CheckInError):
        make_updater(state, client).check_in()
    assert active_bytes(state) == good_model
