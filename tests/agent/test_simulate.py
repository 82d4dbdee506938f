"""The fleet simulator against the peer: enrolls, installs, reports, injects faults."""

from __future__ import annotations

import json
import random

import pytest

from devices.agent import simulate


def options(peer, tmp_path, *extra):
    return simulate.parser().parse_args(
        [
            "--server",
            peer.url,
            "--enrollment-token",
            "enroll-me",
            "--devices",
            "4",
            "--duration-s",
            "2.5",
            "--poll-interval-s",
            "0.5",
            "--telemetry-interval-s",
            "0.4",
            "--ramp-s",
            "0.2",
            "--state-file",
            str(tmp_path / "fleet.json"),
            *extra,
        ]
    )


def test_simulated_fleet_installs_and_reports(peer, tmp_path, good_model):
    peer.poll_interval_s = 0.5
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    summary = simulate.Fleet(options(peer, tmp_path)).run()
    # The peer gives every device the same uid, and the manifest names it: all install.
    assert summary["enrolled"] == 4 and summary["update_succeeded"] == 4
    states = [s["state"] for s in peer.statuses]
    assert states.count("succeeded") == 4
    points = [p for b in peer.telemetry for p in b["batch"]]
    assert points and all(p["latency_ms"] > 0 and p["extra"]["simulated"] for p in points)
    assert all(p["seq"] >= 1 and p["boot_id"] for p in points)
    saved = json.loads((tmp_path / "fleet.json").read_text())["devices"]
    assert len(saved) == 4
    # A second run reuses the saved credentials instead of enrolling again.
    enrollments = len(peer.enrollments)
    simulate.Fleet(options(peer, tmp_path, "--duration-s", "0.5")).run()
    assert len(peer.enrollments) == enrollments


def test_a_restart_reports_an_install_the_server_never_heard_of(peer, tmp_path, good_model):
    """Stopped after installing but before its report went out, a device that is offered
    the same manifest again says once that it succeeded, instead of staying silent forever."""
    peer.poll_interval_s = 0.5
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    simulate.Fleet(options(peer, tmp_path)).run()
    assert [s["state"] for s in peer.statuses].count("succeeded") == 4
    peer.statuses.clear()  # the reports are lost; the server still offers version 1
    simulate.Fleet(options(peer, tmp_path)).run()
    states = [(s["state"], s["manifest_version"]) for s in peer.statuses]
    assert states == [("succeeded", 1)] * 4  # once per device and run, nothing reinstalled


def test_faults(peer, tmp_path, good_model):
    peer.poll_interval_s = 0.5
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], version=1))
    summary = simulate.Fleet(options(peer, tmp_path, "--fault", "failed-health-check")).run()
    assert summary.get("update_succeeded", 0) == 0 and summary["update_failed"] == 4
    assert {s["error_code"] for s in peer.statuses if s["state"] == "failed"} == {"health_check"}


def test_bad_variant_is_three_times_slower(peer, tmp_path, good_model):
    opts = options(peer, tmp_path, "--fault", "bad-variant", "--bad-variant", "fp32")
    device = simulate.SimDevice(0, opts, simulate.Stats())
    slow = [device.latency_ms({"name": "fp32", "sha256": "a" * 64}) for _ in range(200)]
    fast = [device.latency_ms({"name": "int8-x", "sha256": "b" * 64}) for _ in range(200)]
    assert 2.5 < (sum(slow) / 200) / opts.base_latency_ms < 3.5
    assert (sum(fast) / 200) / opts.base_latency_ms < 0.6


def test_flapping_network_backs_off(peer, tmp_path):
    opts = options(
        peer, tmp_path, "--fault", "flapping-network", "--flap-period-s", "0.3", "--duration-s", "2"
    )
    summary = simulate.Fleet(opts).run()
    assert summary.get("checkin_unreachable", 0) + summary.get("enroll_unreachable", 0) > 0
    # Backoff: never faster than the advised interval (0.5 s) per device.
    gets = peer.seen("GET", "/api/v1/device/update")
    assert len(gets) <= 4 * (2 / 0.5 + 1)


def test_refuses_manifest_for_another_device(peer, tmp_path, good_model):
    peer.poll_interval_s = 0.5
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)], device="someone-else"))
    summary = simulate.Fleet(options(peer, tmp_path)).run()
    assert summary["manifest_refused_wrong_device"] >= 4
    assert not peer.seen("GET", "/api/v1/device/artifacts")


def test_telemetry_keeps_the_device_clock_and_counts_missed_ticks(peer, tmp_path):
    from tests.agent.peer import DEVICE_TOKEN, DEVICE_UID

    opts = options(
        peer,
        tmp_path,
        "--telemetry-interval-s",
        "10",
        "--poll-interval-s",
        "30",
        "--preinstalled",
        "factory:1",
    )
    stats = simulate.Stats()
    device = simulate.SimDevice(
        0, opts, stats, {"uid": DEVICE_UID, "token": DEVICE_TOKEN, "keys": [peer.public_b64]}
    )
    now = simulate.time.monotonic()
    device.next_poll = now + 100
    device.next_telemetry = now - 1.0  # due a second ago: the simulator ran it late
    device.step()
    # The next tick is on the device's clock (due + 10 s), not 10 s after the late step.
    assert device.next_telemetry == pytest.approx(now + 9.0)
    device.next_telemetry = now - 25.0  # more than two whole ticks behind
    device.step()
    assert stats.as_dict()["telemetry_ticks_missed"] == 2
    assert now < device.next_telemetry <= now + 10.0
    assert len([p for b in peer.telemetry for p in b["batch"]]) == 2


def test_summary_reports_how_late_steps_started(peer, tmp_path):
    summary = simulate.Fleet(options(peer, tmp_path, "--duration-s", "1")).run()
    lag = summary["schedule_lag"]
    assert lag["count"] >= 4 and 0 <= lag["p50_ms"] <= lag["max_ms"]


def _device(*extra):
    opts = simulate.parser().parse_args(
        [
            "--server",
            "http://127.0.0.1:9",
            "--enrollment-token",
            "t",
            "--preinstalled",
            "m:1",
            *extra,
        ]
    )
    return simulate.SimDevice(0, opts, simulate.Stats())


def test_latency_is_drawn_around_the_manifest_estimate():
    """A healthy variant's p95 sits at its estimate (gate ratio ≈ 1); a bad one ≈ 3×."""
    artifact = {"name": "default", "sha256": "a" * 64, "size": 1, "estimate_p95_ms": 0.5}
    healthy = sorted(_device().latency_ms(artifact) for _ in range(2000))
    assert 0.85 < healthy[int(0.95 * len(healthy))] / 0.5 < 1.15
    bad = _device("--fault", "bad-variant", "--bad-variant", "default")
    slow = sorted(bad.latency_ms(artifact) for _ in range(2000))
    assert slow[int(0.95 * len(slow))] / 0.5 > 2.5


def test_inventory_reports_preinstalled_version_profile_and_restored_slots():
    device = _device("--hardware-profile", "x86-gateway-1c")
    facts = device.facts()
    assert facts["models"]["default"]["model_version"] == "m:1"
    assert facts["hardware_profile"] == "x86-gateway-1c"
    # the board's facts agree with the profile it names (an x86 box with one core)
    assert (facts["arch"], facts["cpu_count"], facts["ram_mb"]) == ("x86_64", 1, 2048)
    assert _device("--hardware-profile", "rpi4").facts()["arch"] == "aarch64"
    installed = {
        "default": {
            "payload": {
                "version": 3,
                "default": "int8",
                "artifacts": [
                    {"name": "int8", "sha256": "b" * 64, "size": 1, "model_version": "m:5"}
                ],
            }
        }
    }
    restored = simulate.SimDevice(
        0,
        device.options,
        simulate.Stats(),
        {"uid": "u", "token": "tok", "keys": [], "installed": installed, "trusted": {"default": 3}},
    )
    assert restored.facts()["models"]["default"] == {"model_version": "m:5", "sha256": "b" * 64}
    assert restored.trusted == {"default": 3} and restored.inventory_due


def test_shards_split_the_fleet_by_index_and_keep_their_own_state(peer, tmp_path):
    """`--shard K/N` runs the devices whose index is K modulo N, with the same
    index (so the same uid and random stream) as in one process."""
    summaries = []
    for k in range(2):
        state = tmp_path / f"fleet-{k}.json"
        fleet = simulate.Fleet(
            options(
                peer, tmp_path, "--devices", "5", "--shard", f"{k}/2", "--state-file", str(state)
            )
        )
        assert [d.index for d in fleet.devices] == list(range(k, 5, 2))
        summaries.append(fleet.run())
        assert sorted(json.loads(state.read_text())["devices"]) == [str(i) for i in range(k, 5, 2)]
    merged = simulate.merge(summaries)
    assert merged["devices"] == merged["enrolled"] == 5
    for endpoint, row in merged["latency"].items():
        assert row["count"] == sum(s["latency"][endpoint]["count"] for s in summaries)
    assert merged["schedule_lag"]["count"] == sum(s["schedule_lag"]["count"] for s in summaries)


def test_merged_percentiles_come_from_the_summed_histograms():
    """Two shards' p99 are not averaged: the merge is exactly one fleet's summary."""
    whole, parts = simulate.Stats(), [simulate.Stats(), simulate.Stats()]
    rng = random.Random(7)
    for n in range(2_000):
        ms = rng.expovariate(1 / 20) if n % 2 else rng.uniform(1, 5)  # shard 1 is slow
        for stats in (whole, parts[n % 2]):
            with stats.lock:
                stats.latency["checkin"][round(ms * 10)] += 1
                stats.lag[round(ms * 10) // 3] += 1
            stats.add("checkin_304")
    summaries = [simulate.summarize(p.as_dict(), p.histograms()) for p in parts]
    merged = simulate.merge(summaries)
    expected = simulate.summarize(whole.as_dict(), whole.histograms())
    assert merged["latency"] == expected["latency"] and merged["checkin_304"] == 2_000
    assert merged["schedule_lag"] == expected["schedule_lag"]
    # What averaging the shards' p99 would have said instead is not the fleet's p99.
    averaged = sum(s["latency"]["checkin"]["p99_ms"] for s in summaries) / 2
    assert averaged != merged["latency"]["checkin"]["p99_ms"]


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "-1/2"])
def test_a_bad_shard_is_refused_by_the_parser(bad, capsys):
    with pytest.raises(SystemExit):
        simulate.parser().parse_args(["--server", "x", "--enrollment-token", "t", "--shard", bad])
    assert "--shard" in capsys.readouterr().err


def test_full_collections_are_counted_and_the_fleet_is_frozen_while_it_runs(peer, tmp_path):
    """The devices' objects are frozen for the run (a full collection does not walk
    them while every thread waits) and unfrozen after; full collections are counted."""
    import gc

    stats = simulate.Stats()
    gc.callbacks.append(stats.gc_callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(stats.gc_callback)
    assert stats.as_dict()["gc_full_collections"] == 1 and "gc_full_ms" in stats.as_dict()
    frozen = []
    fleet = simulate.Fleet(options(peer, tmp_path))  # 2.5 s: device 0 steps even when loaded
    step = fleet.devices[0].step
    fleet.devices[0].step = lambda: (frozen.append(gc.get_freeze_count()), step())[1]
    fleet.run()
    assert frozen and min(frozen) > 0 and gc.get_freeze_count() == 0


def test_a_device_samples_from_its_boot_not_from_when_the_fleet_was_built():
    """Devices boot spread over the ramp; one booting a minute in has missed no ticks."""
    device = _device("--telemetry-interval-s", "10")
    boot = simulate.time.monotonic() + 60
    device.boot(boot)
    assert boot <= device.next_telemetry <= boot + 10
