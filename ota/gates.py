"""Phase gates and phase math: pure functions, no ORM, so they are easy to test.

A gate looks at what the devices of one phase actually did (install results,
on-device latency, confidence) and answers pass, wait or fail with reasons.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum

# Marks the reason texts for translation without importing Django's machinery at call time:
# the pages render `GateDecision.codes` in the reader's language (ota/display.py).
from django.utils.translation import gettext_noop


@dataclass(frozen=True)
class Plural:
    """A reason whose noun follows a count (`count` names the param): English picks
    the form here, the pages ask `ngettext` (ota/display.py)."""

    singular: str
    plural: str
    count: str

    def __mod__(self, params: dict) -> str:
        return (self.singular if params.get(self.count) == 1 else self.plural) % params


def ngettext_noop(singular: str, plural: str, count: str) -> Plural:
    """Marks a plural reason for `makemessages` (keyword ngettext_noop:1,2)."""
    return Plural(singular, plural, count)


class Verdict(StrEnum):
    PASS = "pass"
    WAIT = "wait"
    FAIL = "fail"


class GateError(ValueError):
    """A gate setting of the wrong type or range; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# field -> (kind, may be None); bool is refused where a number is expected
_FIELD_TYPES = {
    "max_failure_rate": ("number", False),
    "min_successful": ("integer", False),
    "max_latency_ratio": ("number", True),
    "max_confidence_drop": ("number", True),
    "min_soak_s": ("integer", False),
    "min_latency_samples": ("integer", False),
    "min_shadow_agreement": ("number", True),
}


def _check_type(name: str, value, spec: tuple[str, bool]) -> None:
    kind, nullable = spec
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        ok = False
    elif kind == "integer":
        ok = isinstance(value, int) or float(value).is_integer()
    else:
        ok = math.isfinite(value)
    if not ok:
        article = "an integer" if kind == "integer" else "a finite number"
        raise GateError(
            name, f"{name} must be {article}{' or null' if nullable else ''}, not {value!r}"[:200]
        )


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of one phase. `None` switches a check off."""

    max_failure_rate: float = 0.2  # failed / (succeeded + failed)
    min_successful: int = 1  # devices that must have succeeded
    max_latency_ratio: float | None = 1.5  # on-device p95 ≤ k × benchmark estimate
    max_confidence_drop: float | None = None  # mean top-1 confidence vs previous version
    min_soak_s: int = 0  # time since the phase's first success
    min_latency_samples: int = 3  # telemetry points before latency is judged
    # lowest agreement of a device's shadow run (candidate beside the active model)
    min_shadow_agreement: float | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> GateConfig:
        """Validate types and ranges, so a typo is refused when the deployment is
        created instead of raising in the gate task on every tick."""
        if data is not None and not isinstance(data, dict):
            raise GateError("gates", "a gate configuration is an object")
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise GateError(
                sorted(unknown)[0], f"unknown gate settings: {', '.join(sorted(unknown))}"
            )
        for name, value in data.items():
            _check_type(name, value, _FIELD_TYPES[name])
            if _FIELD_TYPES[name][0] == "integer" and value is not None:
                data[name] = int(value)
        config = cls(**data)
        if not 0 <= config.max_failure_rate <= 1:
            raise GateError("max_failure_rate", "max_failure_rate must be between 0 and 1")
        for name in ("min_successful", "min_soak_s", "min_latency_samples"):
            if getattr(config, name) < 0:
                raise GateError(name, f"{name} must be ≥ 0")
        if config.max_latency_ratio is not None and config.max_latency_ratio <= 0:
            raise GateError("max_latency_ratio", "max_latency_ratio must be > 0")
        if config.min_shadow_agreement is not None and not 0 <= config.min_shadow_agreement <= 1:
            raise GateError("min_shadow_agreement", "min_shadow_agreement must be between 0 and 1")
        return config

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PhaseStats:
    targeted: int
    succeeded: int = 0
    failed: int = 0  # failed + rolled back (the device refused or reverted)
    in_progress: int = 0
    p95_latency_ms: float | None = None
    latency_samples: int = 0
    estimate_p95_ms: float | None = None
    confidence_mean: float | None = None
    baseline_confidence_mean: float | None = None
    soak_elapsed_s: float = 0.0
    shadow_reports: int = 0  # devices that reported a shadow evaluation
    shadow_min_agreement: float | None = None
    shadow_worst_device: str = ""


@dataclass
class GateDecision:
    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    # The same reasons as {"code", "params"}: what a page translates (`reasons` is English).
    codes: list[dict] = field(default_factory=list)


GATE_FAILED = gettext_noop("Phase %(p)s gate failed: %(r)s")  # stored in English, shown translated
REASONS = {
    "failure_rate": ngettext_noop(
        "install failure rate %(rate)s > %(limit)s (%(failed)s of %(finished)s device)",
        "install failure rate %(rate)s > %(limit)s (%(failed)s of %(finished)s devices)",
        "finished",
    ),
    "latency_waiting": gettext_noop("waiting for on-device latency telemetry"),
    "latency_ratio": gettext_noop(
        "on-device p95 latency %(p95)s ms is %(ratio)s× the estimate "
        "%(estimate)s ms (limit %(limit)s×)"
    ),
    "confidence_waiting": gettext_noop("waiting for confidence telemetry"),
    "confidence_drop": gettext_noop("mean confidence dropped by %(drop)s (limit %(limit)s)"),
    "shadow_agreement": ngettext_noop(
        "shadow agreement %(agreement)s < %(limit)s on device %(device)s (%(n)s device shadowed)",
        "shadow agreement %(agreement)s < %(limit)s on device %(device)s (%(n)s devices shadowed)",
        "n",
    ),
    "too_few_succeeded": ngettext_noop(
        "%(succeeded)s of %(needed)s device succeeded",
        "%(succeeded)s of %(needed)s devices succeeded",
        "needed",
    ),
    "still_updating": ngettext_noop(
        "%(n)s device still updating", "%(n)s devices still updating", "n"
    ),
    "soaking": gettext_noop("soaking %(elapsed)s/%(needed)s s"),
    "passed": gettext_noop("all gates passed"),
}


class _Reasons:
    """Collects reasons as codes with pre-formatted params, and their English text."""

    def __init__(self):
        self.codes: list[dict] = []

    def add(self, code: str, **params) -> None:
        self.codes.append({"code": code, "params": params})

    def __bool__(self) -> bool:
        return bool(self.codes)

    def decision(self, verdict: Verdict, values: dict) -> GateDecision:
        return GateDecision(
            verdict, [REASONS[c["code"]] % c["params"] for c in self.codes], values, self.codes
        )


def evaluate(config: GateConfig, stats: PhaseStats) -> GateDecision:
    """Fail fast on evidence of harm; pass only when every check has enough evidence."""
    values: dict = {}
    failures, waits = _Reasons(), _Reasons()
    finished = stats.succeeded + stats.failed
    rate = stats.failed / finished if finished else 0.0
    values["failure_rate"] = round(rate, 4)
    if finished and rate > config.max_failure_rate and stats.failed >= 1:
        failures.add(
            "failure_rate",
            rate=f"{rate:.0%}",
            limit=f"{config.max_failure_rate:.0%}",
            failed=stats.failed,
            finished=finished,
        )
    if config.max_latency_ratio is not None and stats.estimate_p95_ms:
        values["estimate_p95_ms"] = stats.estimate_p95_ms
        values["p95_latency_ms"] = stats.p95_latency_ms
        if stats.latency_samples < config.min_latency_samples or stats.p95_latency_ms is None:
            waits.add("latency_waiting")
        else:
            ratio = stats.p95_latency_ms / stats.estimate_p95_ms
            values["latency_ratio"] = round(ratio, 3)
            if ratio > config.max_latency_ratio:
                failures.add(
                    "latency_ratio",
                    p95=f"{stats.p95_latency_ms:.1f}",
                    ratio=f"{ratio:.1f}",
                    estimate=f"{stats.estimate_p95_ms:.1f}",
                    limit=config.max_latency_ratio,
                )
    if config.max_confidence_drop is not None and stats.baseline_confidence_mean is not None:
        if stats.confidence_mean is None:
            waits.add("confidence_waiting")
        else:
            drop = stats.baseline_confidence_mean - stats.confidence_mean
            values["confidence_drop"] = round(drop, 4)
            if drop > config.max_confidence_drop:
                failures.add(
                    "confidence_drop", drop=f"{drop:.3f}", limit=config.max_confidence_drop
                )
    if config.min_shadow_agreement is not None and stats.shadow_min_agreement is not None:
        values["shadow_min_agreement"] = stats.shadow_min_agreement
        if stats.shadow_min_agreement < config.min_shadow_agreement:
            failures.add(
                "shadow_agreement",
                agreement=f"{stats.shadow_min_agreement:.3f}",
                limit=config.min_shadow_agreement,
                device=stats.shadow_worst_device,
                n=stats.shadow_reports,
            )
    if failures:
        return failures.decision(Verdict.FAIL, values)
    needed = min(config.min_successful, stats.targeted)
    if stats.succeeded < needed:
        waits.add("too_few_succeeded", succeeded=stats.succeeded, needed=needed)
    if stats.in_progress:
        waits.add("still_updating", n=stats.in_progress)
    if stats.soak_elapsed_s < config.min_soak_s:
        waits.add("soaking", elapsed=f"{stats.soak_elapsed_s:.0f}", needed=config.min_soak_s)
    if waits:
        return waits.decision(Verdict.WAIT, values)
    passed = _Reasons()
    passed.add("passed")
    return passed.decision(Verdict.PASS, values)


def phase_targets(total: int, percents: list[float]) -> list[int]:
    """Cumulative device counts per phase: 1 % of 250 devices is 3, never 0 for a non-empty fleet.

    Percentages must increase and the last must be 100, so every targeted device
    is in some phase.
    """
    if not percents or percents[-1] != 100:
        raise ValueError(gettext_noop("the last phase must be 100: the whole target"))
    if any(b <= a for a, b in itertools.pairwise(percents)):
        raise ValueError(gettext_noop("phase percentages must increase"))
    if any(p <= 0 for p in percents):
        raise ValueError(gettext_noop("phase percentages must be > 0"))
    counts = []
    for percent in percents:
        count = math.ceil(total * percent / 100)
        counts.append(max(count, 1) if total else 0)
    return counts


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile (what dashboards show)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(0.95 * len(ordered)) - 1, 0)
    return ordered[rank]
