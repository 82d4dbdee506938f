"""What the devices of one phase did: the numbers the gates judge.

On-device latency comes from `TelemetryPoint` rows of the phase's devices that
name the new model version and were measured after it was assigned; the
estimate is the server's benchmark of that version on the device's hardware
profile (`LatencyBaseline`, else the version's own benchmark metrics).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta

from django.db.models import Count, F, Min, OuterRef, Q, Subquery, Window
from django.db.models.functions import RowNumber

from devices.models import LatencyBaseline, TelemetryPoint
from ota.choices import ACTIVE_STATES, REPORTABLE, UpdateState
from ota.gates import PhaseStats, p95

REPORTABLE_STATES = tuple(REPORTABLE)
MAX_SAMPLES = 20000  # newest points per (version, profile) judged: bounded work per tick
# Device clocks drift: points stamped a little before the assignment still count
# (the label filter already says they were measured on the new version).
CLOCK_SKEW = timedelta(minutes=5)
CONFIDENCE_KEYS = ("confidence", "top1_confidence", "confidence_mean")


def estimate_p95(model_version, label: str, profile_id: int | None) -> float | None:
    """Benchmark p95 (ms) of a version on a profile, or None when never measured."""
    if profile_id is not None:
        baseline = LatencyBaseline.objects.filter(
            model_version=label, hardware_profile_id=profile_id
        ).first()
        if baseline is not None:
            return baseline.p95_ms
    return _benchmark_p95((model_version.metrics or {}) if model_version else {})


def _benchmark_p95(metrics: dict) -> float | None:
    """The p95 of a version's own benchmark metrics, or None."""
    latency = metrics.get("latency_ms") or {}
    # Registry benchmarks nest it (`latency_ms.p95`); compression candidates flatten it.
    value = latency.get("p95") if isinstance(latency, dict) else None
    value = metrics.get("p95_ms") if value is None else value
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def phase_stats(deployment, phase: int, now: datetime) -> PhaseStats:
    updates = deployment.updates.filter(phase=phase).exclude(
        state__in=[UpdateState.SUPERSEDED, UpdateState.CANCELLED]
    )
    counts = {r["state"]: r["n"] for r in updates.values("state").annotate(n=Count("pk"))}
    first = updates.filter(state=UpdateState.SUCCEEDED).aggregate(t=Min("finished_at"))["t"]
    stats = PhaseStats(
        targeted=sum(counts.values()),
        succeeded=counts.get(UpdateState.SUCCEEDED, 0),
        failed=counts.get(UpdateState.FAILED, 0) + counts.get(UpdateState.ROLLED_BACK, 0),
        in_progress=sum(counts.get(s, 0) for s in ACTIVE_STATES),
        soak_elapsed_s=(now - first).total_seconds() if first else 0.0,
    )
    _latency(stats, updates)
    _confidence(stats, updates)
    _shadow(stats, updates)
    return stats


def _shadow(stats: PhaseStats, updates) -> None:
    """The worst agreement the phase's devices reported from their shadow runs."""
    rows = updates.filter(shadow__isnull=False).values_list("device__uid", "shadow")
    worst = None
    for uid, report in rows:
        agreement = report.get("agreement") if isinstance(report, dict) else None
        if isinstance(agreement, int | float) and not isinstance(agreement, bool):
            stats.shadow_reports += 1
            if worst is None or agreement < worst[1]:
                worst = (uid, float(agreement))
    if worst:
        stats.shadow_worst_device, stats.shadow_min_agreement = worst


def _latency(stats: PhaseStats, updates) -> None:
    """Feed the worst (version, profile) group: the one furthest above its estimate.

    Two queries whatever the number of groups: the groups with their estimates, then
    the newest points of all groups at once (a window numbers them within each group).
    """
    done = updates.filter(state=UpdateState.SUCCEEDED)
    baseline = LatencyBaseline.objects.filter(
        model_version=OuterRef("model_label"),
        hardware_profile_id=OuterRef("device__hardware_profile"),
    ).values("p95_ms")[:1]
    groups = (
        done.values("model_label", "model_version__metrics", "device__hardware_profile")
        .annotate(first=Min("assigned_at"), baseline=Subquery(baseline))
        .order_by()
    )
    estimates, wanted = {}, Q(pk__in=[])
    for group in groups:
        label, profile = group["model_label"], group["device__hardware_profile"]
        estimate = group["baseline"]
        if estimate is None:
            estimate = _benchmark_p95(group["model_version__metrics"] or {})
        if not estimate:
            continue
        estimates[label, profile] = estimate
        wanted |= Q(
            device_id__in=done.filter(model_label=label).values("device_id"),
            device__hardware_profile=profile,
            model_version=label,
            ts__gte=group["first"] - CLOCK_SKEW,
        )
    if not estimates:
        return
    newest = Window(
        RowNumber(),
        partition_by=[F("model_version"), F("device__hardware_profile")],
        order_by=F("ts").desc(),
    )
    points = (
        TelemetryPoint.objects.filter(wanted, latency_ms__isnull=False)
        .annotate(n=newest)
        .filter(n__lte=MAX_SAMPLES)
        .values_list("model_version", "device__hardware_profile", "latency_ms")
    )
    samples: dict[tuple, list[float]] = {key: [] for key in estimates}
    for label, profile, latency in points:
        samples[label, profile].append(latency)
    worst = None
    for key, estimate in estimates.items():
        rows = samples[key]
        value = p95(rows)
        candidate = ((value / estimate) if value is not None else -1.0, len(rows), value, estimate)
        if worst is None or candidate[:2] > worst[:2]:
            worst = candidate
    _ratio, stats.latency_samples, stats.p95_latency_ms, stats.estimate_p95_ms = worst


def _confidence_of(extra) -> float | None:
    if not isinstance(extra, dict):
        return None
    return next(
        (float(extra[k]) for k in CONFIDENCE_KEYS if isinstance(extra.get(k), int | float)), None
    )


def _mean_confidence(points) -> float | None:
    values = [
        v
        for v in map(
            _confidence_of, points.order_by("-ts").values_list("extra", flat=True)[:MAX_SAMPLES]
        )
        if v is not None
    ]
    return sum(values) / len(values) if values else None


def _confidence(stats: PhaseStats, updates) -> None:
    """Accuracy proxy: mean top-1 confidence the devices report (telemetry `extra`)
    on the new version vs the same devices on their previous version before it."""
    done = updates.filter(state=UpdateState.SUCCEEDED).exclude(previous_label="")
    rows = list(done.values_list("device_id", "model_label", "previous_label", "assigned_at"))
    if not rows:
        return
    devices = [r[0] for r in rows]
    first = min(r[3] for r in rows)
    points = TelemetryPoint.objects.filter(device_id__in=devices, extra__isnull=False)
    stats.confidence_mean = _mean_confidence(
        points.filter(model_version__in={r[1] for r in rows}, ts__gte=first - CLOCK_SKEW)
    )
    stats.baseline_confidence_mean = _mean_confidence(
        points.filter(model_version__in={r[2] for r in rows}, ts__lt=first)
    )


def as_dict(stats: PhaseStats) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(stats).items()}


def latency_series(deployment, limit: int = 500) -> dict:
    """Chart data: per-minute p95 of the new version on the deployment's devices vs estimate."""
    updates = deployment.updates.filter(state=UpdateState.SUCCEEDED)
    labels = list(updates.values_list("model_label", flat=True).distinct()[:5])
    since = deployment.started_at
    points = TelemetryPoint.objects.filter(
        device_id__in=updates.values("device_id"),
        model_version__in=labels,
        latency_ms__isnull=False,
    ).order_by("-ts")
    if since:
        points = points.filter(ts__gte=since)
    rows = list(points.values_list("ts", "latency_ms")[: limit * 20])
    buckets: dict[str, list[float]] = {}
    for ts, value in rows:
        buckets.setdefault(ts.strftime("%Y-%m-%dT%H:%M:00Z"), []).append(value)
    minutes = sorted(buckets)[-limit:]
    report = deployment.gate_report or {}
    estimate = (report.get("stats") or {}).get("estimate_p95_ms")
    limit_ratio = (report.get("thresholds") or {}).get("max_latency_ratio")
    return {
        "labels": minutes,
        "p95": [p95(buckets[m]) for m in minutes],
        "estimate": estimate,
        "limit": round(estimate * limit_ratio, 3) if estimate and limit_ratio else None,
    }
