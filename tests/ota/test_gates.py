"""Gate evaluation and phase math (pure)."""

from __future__ import annotations

import pytest

from ota.gates import GateConfig, PhaseStats, Verdict, evaluate, p95, phase_targets


def test_phase_targets():
    assert phase_targets(250, [1, 10, 50, 100]) == [3, 25, 125, 250]
    assert phase_targets(3, [1, 100]) == [1, 3]
    assert phase_targets(0, [10, 100]) == [0, 0]


@pytest.mark.parametrize("percents", [[], [10, 50], [50, 10, 100], [0, 100]])
def test_bad_phases(percents):
    with pytest.raises(ValueError):
        phase_targets(10, percents)


def test_pass_when_all_succeeded_and_latency_in_bounds():
    stats = PhaseStats(
        targeted=3, succeeded=3, p95_latency_ms=12, latency_samples=30, estimate_p95_ms=10
    )
    decision = evaluate(GateConfig(), stats)
    assert decision.verdict == Verdict.PASS
    assert decision.values["latency_ratio"] == 1.2


def test_failure_rate_fails():
    stats = PhaseStats(targeted=4, succeeded=2, failed=2)
    decision = evaluate(GateConfig(max_failure_rate=0.25, max_latency_ratio=None), stats)
    assert decision.verdict == Verdict.FAIL
    assert "failure rate 50%" in decision.reasons[0]


def test_latency_regression_fails_with_reason():
    stats = PhaseStats(
        targeted=3, succeeded=3, p95_latency_ms=31, latency_samples=50, estimate_p95_ms=10
    )
    decision = evaluate(GateConfig(max_latency_ratio=1.5), stats)
    assert decision.verdict == Verdict.FAIL
    assert "3.1×" in decision.reasons[0]


def test_waits_for_evidence_and_soak():
    stats = PhaseStats(
        targeted=3, succeeded=3, latency_samples=1, estimate_p95_ms=10, p95_latency_ms=9
    )
    assert evaluate(GateConfig(), stats).verdict == Verdict.WAIT
    stats = PhaseStats(targeted=3, succeeded=3, soak_elapsed_s=10)
    decision = evaluate(GateConfig(min_soak_s=60, max_latency_ratio=None), stats)
    assert decision.verdict == Verdict.WAIT and "soaking" in decision.reasons[0]


def test_confidence_drop():
    stats = PhaseStats(targeted=1, succeeded=1, confidence_mean=0.7, baseline_confidence_mean=0.9)
    decision = evaluate(GateConfig(max_confidence_drop=0.05, max_latency_ratio=None), stats)
    assert decision.verdict == Verdict.FAIL


def test_config_validation():
    with pytest.raises(ValueError, match="unknown"):
        GateConfig.from_dict({"max_fail": 1})
    with pytest.raises(ValueError):
        GateConfig.from_dict({"max_failure_rate": 2})
    assert GateConfig.from_dict(None) == GateConfig()


def test_p95():
    assert p95([]) is None
    assert p95(list(range(1, 101))) == 95


@pytest.mark.parametrize(
    ("in_progress", "english", "chinese"),
    [
        (1, "1 device still updating", "1 台设备仍在更新"),
        (3, "3 devices still updating", "3 台设备仍在更新"),
    ],
)
def test_a_count_reason_agrees_with_its_number_in_each_language(in_progress, english, chinese):
    from django.utils import translation

    from ota.display import reason_text

    stats = PhaseStats(targeted=4, succeeded=1, in_progress=in_progress)
    decision = evaluate(GateConfig(min_successful=1, max_latency_ratio=None), stats)
    assert decision.verdict == Verdict.WAIT and decision.reasons == [english]
    with translation.override("en"):
        assert reason_text(decision.codes[0]) == english
    with translation.override("zh-hans"):
        assert reason_text(decision.codes[0]) == chinese
