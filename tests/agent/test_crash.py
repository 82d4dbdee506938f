"""U7/U8: SIGKILL the agent process at each stage, restart it, check the end state."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devices.agent import manifest as mf
from devices.agent.state import State

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def agent(state: State, *, pause: str | None = None, marker: Path | None = None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("EDGEFLEET_AGENT_TEST_PAUSE", None)
    if pause:
        env["EDGEFLEET_AGENT_TEST_PAUSE"] = pause
        env["EDGEFLEET_AGENT_TEST_MARKER"] = str(marker)
    return subprocess.Popen(
        [sys.executable, "-m", "devices.agent", "run", "--once", "--state-dir", str(state.root)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


class AgentExited(AssertionError):
    pass


def run_until_paused(state: State, pause: str, marker: Path) -> None:
    proc = agent(state, pause=pause, marker=marker)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None:
            raise AgentExited(f"agent exited before {pause}: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, f"agent never reached {pause}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def run_to_end(state: State) -> None:
    proc = agent(state)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()


def assert_consistent(state: State, slot: str = "classifier") -> bytes | None:
    """The active model (if any) is a whole file whose hash is its name; no stray files."""
    model_dir = state.model_dir(slot)
    for path in model_dir.glob("*.onnx"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
    assert not [p for p in model_dir.glob(".*") if p.is_file()]
    pointer = state.pointer(slot)
    if not pointer:
        return None
    return (model_dir / pointer["variants"][pointer["active"]]["path"]).read_bytes()


def big_model(good_model: bytes) -> bytes:
    """The tiny model padded with a doc string so the download takes many chunks."""
    import onnx

    model = onnx.load_from_string(good_model)
    model.doc_string = "x" * 400_000
    return model.SerializeToString()


@pytest.fixture
def installed_v1(peer, state, client, good_model):
    from devices.agent.updater import Updater

    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    assert Updater(state, client, health_check=lambda p: None).check_in().outcome == "succeeded"
    peer.requests.clear()
    peer.statuses.clear()
    return good_model


def test_kill_during_download_resumes_with_range(peer, state, installed_v1, tmp_path):
    new = big_model(installed_v1)
    peer.add_artifact(new, "slow")
    peer.offer(peer.manifest([("fp32", new)], version=2))
    run_until_paused(state, "download:65536", tmp_path / "marker")
    assert assert_consistent(state) == installed_v1  # old model still active
    part = state.download_path(hashlib.sha256(new).hexdigest())
    k = part.stat().st_size
    assert 0 < k < len(new)
    peer.faults[hashlib.sha256(new).hexdigest()] = "good"
    run_to_end(state)
    assert assert_consistent(state) == new
    ranges = [r["headers"].get("range") for r in peer.seen("GET", "/api/v1/device/artifacts")]
    assert ranges[-1] == f"bytes={k}-"
    assert [s["state"] for s in peer.statuses][-1] == "succeeded"
    assert state.pointer("classifier")["previous"]["version"] == 1


@pytest.mark.parametrize("stage", ["verify", "install", "switch", "health"])
def test_kill_during_install_converges(peer, state, installed_v1, tmp_path, stage):
    new = installed_v1.replace(b"relu", b"rel2")
    peer.add_artifact(new)
    peer.offer(peer.manifest([("fp32", new)], version=2))
    run_until_paused(state, stage, tmp_path / "marker")
    active = assert_consistent(state)
    assert active in (installed_v1, new)
    run_to_end(state)
    assert assert_consistent(state) == new
    assert state.slot("classifier")["result"] == "succeeded"
    assert state.pointer("classifier")["previous"]["version"] == 1
    # Rerunning once more changes nothing.
    run_to_end(state)
    assert assert_consistent(state) == new
    assert len(peer.seen("GET", "/api/v1/device/artifacts")) == 1


def test_kill_during_health_check_of_a_bad_model_rolls_back(
    peer, state, installed_v1, nan_model, tmp_path
):
    peer.add_artifact(nan_model)
    peer.offer(peer.manifest([("fp32", nan_model)], version=2))
    run_until_paused(state, "health", tmp_path / "marker")
    # Fail-safe: the pointer names only verified models; the check is not done yet.
    assert assert_consistent(state) == installed_v1
    run_to_end(state)
    assert assert_consistent(state) == installed_v1
    assert peer.statuses[-1]["state"] == "rolled_back"


def test_restart_never_reports_a_state_the_server_has_passed(peer, state, installed_v1, tmp_path):
    new = installed_v1.replace(b"relu", b"rel2")
    peer.add_artifact(new)
    peer.offer(peer.manifest([("fp32", new)], version=2))
    run_until_paused(state, "health", tmp_path / "marker")
    run_to_end(state)
    # A server state machine refuses downloading after installing (409): never sent.
    assert [s["state"] for s in peer.statuses] == [
        "downloading",
        "downloaded",
        "installing",
        "succeeded",
    ]


def test_kill_during_health_check_then_expiry_never_leaves_the_unverified_model(
    peer, state, installed_v1, nan_model, tmp_path
):
    """Crash during the health check, manifest expires, restart: the verified model runs,
    the server hears `failed: expired`, and nothing unverified is active at any point."""
    peer.add_artifact(nan_model)
    # The manifest must still be valid when the agent reaches the health check and expire
    # soon after; a loaded machine can take longer than a short expiry just to start the
    # agent, so the expiry doubles (with a new version) until the pause is reached in time.
    for attempt, expires_in in enumerate((4, 8, 16, 32, 64)):
        peer.offer(peer.manifest([("fp32", nan_model)], version=2 + attempt, expires_in=expires_in))
        marker = tmp_path / f"marker-{attempt}"
        try:
            run_until_paused(state, "health", marker)
            break
        except AgentExited as exc:
            if "expired" not in str(exc) or expires_in == 64:
                raise
    assert assert_consistent(state) == installed_v1
    expires = state.slot("classifier")["pending"]["expires_at"]
    while mf.format_time(datetime.now(UTC)) <= expires:
        time.sleep(0.2)
    time.sleep(1.1)
    run_to_end(state)
    assert assert_consistent(state) == installed_v1
    assert (peer.statuses[-1]["state"], peer.statuses[-1]["error_code"]) == ("failed", "expired")
    assert state.pointer("classifier")["version"] == 1
