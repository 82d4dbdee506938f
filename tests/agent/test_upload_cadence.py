"""Fewer, fuller requests: points sampled every telemetry interval, uploaded every
upload interval (X-Upload-Interval), and an upload answer's X-Update-ETag standing
for a poll. Against the peer playing a current server and an older one."""

from __future__ import annotations

import time
from contextlib import closing

import pytest

from devices.agent import simulate
from devices.agent.agent import Agent, clamp_interval
from devices.agent.client import Response
from tests.agent.test_simulate import options

TELEMETRY = "/api/v1/device/telemetry"
BENCHMARKS = "/api/v1/device/benchmarks"
UPDATE = "/api/v1/device/update"


def sample(agent, n: int = 1) -> None:
    for _ in range(n):
        agent.outbox.add("telemetry", {"ts": time.time(), "inferences": 1})


def sample_and_step(agent, steps: int) -> None:
    """One sample and one short agent step, `steps` times."""
    for _ in range(steps):
        sample(agent)
        agent.step(window_s=0.01)


def test_an_older_server_gets_every_sample_as_before(peer, state):
    """No X-Upload-Interval, no X-Update-ETag: one upload per step, polls on schedule."""
    with closing(Agent(state)) as agent:
        sample_and_step(agent, 3)
        assert len(peer.seen("POST", TELEMETRY)) == 3
        assert len(peer.seen("GET", UPDATE)) == 1
        assert agent.upload_pacer.interval_s == 0


def test_advised_upload_interval_batches_the_samples(peer, state):
    peer.upload_interval_s = 60
    with closing(Agent(state)) as agent:
        sample_and_step(agent, 4)
        # The first step uploads at once; the next three samples wait for the interval.
        assert len(peer.seen("POST", TELEMETRY)) == 1
        assert agent.buffer.count("telemetry") == 3
        assert 60 <= agent.next_upload - time.monotonic() <= 60 * 1.2 + 1
        agent.next_upload = 0
        agent.step(window_s=0.01)
        batches = [b["batch"] for b in peer.telemetry]
        assert [len(b) for b in batches] == [1, 3]
        assert [p["seq"] for b in batches for p in b] == [1, 2, 3, 4]


def test_a_configured_upload_interval_is_a_floor(peer, state):
    peer.upload_interval_s = 20
    with closing(Agent(state, {"upload_interval_s": 90})) as agent:
        agent.check_in()
        assert agent.upload_pacer.interval_s == 90
        peer.upload_interval_s = 1e12  # absurd advice: bounded, the buffer must drain
        agent.check_in()
        assert agent.upload_pacer.interval_s == 3600
    assert clamp_interval("nan") is None and clamp_interval(None) is None
    assert clamp_interval(-5) is None and clamp_interval("30") == 30


def test_upload_answer_etag_defers_or_brings_forward_the_poll(peer, state):
    peer.empty_etag = peer.upload_etag = '"none"'
    with closing(Agent(state)) as agent:
        agent.check_in()
        assert agent.updater.freshness.record["etag"] == '"none"'
        agent.next_poll = time.monotonic() + 1  # the poll is due in a second
        sample(agent)
        agent.deliver()
        # The same ETag: the upload stands for that poll.
        assert agent.next_poll - time.monotonic() >= 29
        peer.upload_etag = '"changed"'  # an update was assigned meanwhile
        sample(agent)
        agent.deliver()
        assert agent.next_poll <= time.monotonic()
        gets = len(peer.seen("GET", UPDATE))
        agent.step(window_s=0.01)
        assert len(peer.seen("GET", UPDATE)) == gets + 1


@pytest.mark.parametrize("why", ["expiring", "failing"])
def test_the_unsigned_hint_never_holds_off_a_needed_poll(peer, state, why):
    """Metadata about to go stale, or check-ins failing: the upload answer is no poll."""
    peer.empty_etag = peer.upload_etag = '"none"'
    if why == "expiring":
        peer.timestamp_ttl_s = 60  # under three poll intervals left
    with closing(Agent(state)) as agent:
        agent.check_in()
        if why == "failing":
            peer.down = True
            agent.check_in()
            peer.down = False
        due = agent.next_poll = time.monotonic() + 1
        sample(agent)
        agent.deliver()
        assert agent.next_poll == due


def test_simulator_batches_uploads_as_advised(peer, tmp_path):
    peer.poll_interval_s = 0.5
    peer.upload_interval_s = 1
    peer.empty_etag = peer.upload_etag = '"none"'
    opts = options(peer, tmp_path, "--preinstalled", "factory:1", "--duration-s", "3")
    summary = simulate.Fleet(opts).run()
    posts = peer.seen("POST", TELEMETRY)
    points = [p for b in peer.telemetry for p in b["batch"]]
    assert summary["telemetry_sent"] == len(points) > len(posts) > 0
    # 4 devices, 3 s, one upload per second each (+ the first at once, jitter ≤ 20 %).
    assert len(posts) <= 4 * (3 / 1 + 2)
    assert max(len(b["batch"]) for b in peer.telemetry) >= 2


def test_simulator_upload_etag_stands_for_a_poll(peer, tmp_path):
    peer.empty_etag = peer.upload_etag = '"none"'
    opts = options(peer, tmp_path, "--preinstalled", "factory:1")
    device = simulate.SimDevice(0, opts, simulate.Stats())
    device.etag = '"none"'
    now = time.monotonic()
    device.next_poll = now + 0.1
    device.noted(upload_answer('"none"'))
    assert device.next_poll >= now + device.pacer.interval_s
    device.noted(upload_answer('"other"'))
    assert device.next_poll <= time.monotonic()
    device.next_poll = time.monotonic() + 30
    device.noted(upload_answer('"none"', benchmarks="1"))  # requests wait: poll now
    assert device.next_poll <= time.monotonic()


def upload_answer(etag: str, **headers) -> Response:
    return Response(200, {"x-update-etag": etag, **{f"x-{k}": v for k, v in headers.items()}})


def test_benchmark_requests_are_fetched_when_the_answer_says_they_wait(peer, state):
    """X-Benchmarks: 0 → no list fetched; 2 → fetched at that check-in; an older
    server that does not say → fetched on the timer (benchmark_poll_s)."""
    with closing(Agent(state)) as agent:
        agent.check_in()  # the peer plays an older server: no header
        assert len(peer.seen("GET", BENCHMARKS)) == 1
        agent.check_in()  # within benchmark_poll_s: not again
        assert len(peer.seen("GET", BENCHMARKS)) == 1
        peer.benchmarks_waiting = 0
        agent.next_benchmarks = 0
        agent.check_in()
        assert len(peer.seen("GET", BENCHMARKS)) == 1
        peer.benchmarks_waiting = 2
        agent.check_in()
        agent.check_in()
        assert len(peer.seen("GET", BENCHMARKS)) == 3


def test_the_simulator_fetches_benchmark_requests_only_when_told(peer, tmp_path):
    peer.benchmarks_waiting = 0
    opts = options(peer, tmp_path, "--preinstalled", "factory:1", "--devices", "1")
    device = simulate.SimDevice(0, opts, simulate.Stats())
    device.enroll()
    for _ in range(3):
        device.check_in()
    assert peer.seen("GET", BENCHMARKS) == []
    peer.benchmarks_waiting = 1
    device.check_in()
    assert len(peer.seen("GET", BENCHMARKS)) == 1


def test_a_restarted_simulated_device_reports_inventory_only_if_it_changed(peer, tmp_path):
    from tests.agent.peer import DEVICE_TOKEN, DEVICE_UID

    opts = options(peer, tmp_path, "--preinstalled", "factory:1")
    saved = {"uid": DEVICE_UID, "token": DEVICE_TOKEN, "keys": [peer.public_b64]}
    fresh = simulate.SimDevice(0, opts, simulate.Stats(), saved)
    assert fresh.inventory_due
    fresh.send_inventory()
    assert fresh.saved()["reported"] == fresh.facts_digest()
    again = simulate.SimDevice(0, opts, simulate.Stats(), fresh.saved())
    assert not again.inventory_due
    other = simulate.parser().parse_args([*sys_args(opts), "--hardware-profile", "rpi5"])
    assert simulate.SimDevice(0, other, simulate.Stats(), fresh.saved()).inventory_due


def sys_args(opts) -> list[str]:
    return ["--server", opts.server, "--enrollment-token", opts.enrollment_token]


def test_a_log_line_between_samples_does_not_split_their_upload(peer, tmp_path):
    opts = options(peer, tmp_path, "--preinstalled", "factory:1", "--devices", "1")
    device = simulate.SimDevice(0, opts, simulate.Stats())
    device.enroll()
    device.next_upload = time.monotonic() + 3600  # samples wait for the upload
    device.telemetry()
    device.log("info", "between")
    device.telemetry()
    device.flush()
    assert [len(b["batch"]) for b in peer.telemetry] == [2]
    assert [len(b["batch"]) for b in peer.logs] == [1]
    assert not device.outbox
