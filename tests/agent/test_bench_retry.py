"""A benchmark artifact's download is tried again after a transient failure, through the
update's verified, resumable path (Range from the kept `.part`), a bounded number of
times with backoff; a refused artifact is not tried again."""

from __future__ import annotations

from devices.agent import bench
from devices.agent.bench import Benchmarks


def _artifact(peer, data: bytes, fault: str) -> dict:
    sha = peer.add_artifact(data, fault)
    return {"url": f"/api/v1/device/artifacts/{sha}", "size": len(data), "sha256": sha}


def _gets(peer, artifact) -> list[dict]:
    return peer.seen("GET", artifact["url"])


def test_a_cut_download_resumes_after_a_backoff(peer, state, client, good_model):
    artifact = _artifact(peer, good_model, "cut")
    sleeps = []

    def sleep(seconds):  # the backoff: the server recovers meanwhile
        sleeps.append(seconds)
        peer.faults[artifact["sha256"]] = "good"

    runner = Benchmarks(state, client, settings={}, sleep=sleep)
    result = runner._one(artifact, 5)
    assert result["state"] == "succeeded", result
    assert result["p50_ms"] > 0
    gets = _gets(peer, artifact)
    assert len(gets) == 2 and len(sleeps) == 1
    assert "range" not in gets[0]["headers"]
    assert gets[1]["headers"]["range"] == f"bytes={len(good_model) // 2}-"  # resumed
    assert not list((state.root / "benchmarks").glob("*.onnx"))


def test_retries_are_bounded_with_growing_backoff(peer, state, client, good_model):
    artifact = _artifact(peer, good_model, "good")
    peer.down = True  # 503 to everything: transient every time
    sleeps = []
    runner = Benchmarks(state, client, settings={}, sleep=sleeps.append, retry_base_s=1.0)
    result = runner._one(artifact, 5)
    assert result["state"] == "failed"
    assert len(_gets(peer, artifact)) == bench.DOWNLOAD_ATTEMPTS
    assert len(sleeps) == bench.DOWNLOAD_ATTEMPTS - 1
    # full jitter under a doubling ceiling: 2, 4, 8 s for base 1 s
    assert all(0 <= s <= 2 ** (i + 1) for i, s in enumerate(sleeps))
    assert all(s <= bench.RETRY_CAP_S for s in sleeps)


def test_a_refused_artifact_is_not_tried_again(peer, state, client, good_model):
    artifact = _artifact(peer, good_model, "tamper")
    sleeps = []
    result = Benchmarks(state, client, settings={}, sleep=sleeps.append)._one(artifact, 5)
    assert result["state"] == "failed" and result["error_code"] == "hash_mismatch"
    assert sleeps == []
