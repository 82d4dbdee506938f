"""Per-minute rollups, the series charts read, offline and latency alerts, retention.

Rollups are computed in SQL on PostgreSQL (percentile_cont over the minute) and
in Python elsewhere (SQLite has no percentile aggregate; it is the one-machine
default with small fleets). Charts read rollups, plus the last few minutes
computed live from raw points so a point is visible before the next rollup run.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import FloatField, Max
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.utils import timezone

from devices import authcache, partitions
from devices.choices import AlertKind, AlertState, DeviceStatus
from devices.models import (
    Alert,
    Device,
    DeviceGroup,
    LatencyBaseline,
    LogLine,
    TelemetryPoint,
    TelemetryRollup,
)

# Minutes recomputed by each rollup run: late points (buffered offline) land here.
ROLLUP_LOOKBACK_MIN = 10
LIVE_TAIL_MIN = 3
SERIES = (
    "latency_p50",
    "latency_p95",
    "throughput_mean",
    "mem_max",
    "cpu_mean",
    "temp_max",
    "battery_min",
    "power_mean",
    "inferences_sum",
    "errors_sum",
)
DELETE_CHUNK = 50_000


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    # Same definition as PostgreSQL percentile_cont (linear interpolation).
    values = sorted(values)
    pos = (len(values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def _aggregate(points) -> dict:
    def present(name):
        return [getattr(p, name) for p in points if getattr(p, name) is not None]

    def mean(name):
        values = present(name)
        return statistics.fmean(values) if values else None

    def pick(fn, name):
        values = present(name)
        return fn(values) if values else None

    latency = present("latency_ms")
    return {
        "n": len(points),
        "model_version": points[-1].model_version,
        "latency_p50": _percentile(latency, 0.5),
        "latency_p95": _percentile(latency, 0.95),
        "throughput_mean": mean("throughput"),
        "mem_max": pick(max, "mem_mb"),
        "cpu_mean": mean("cpu_pct"),
        "temp_max": pick(max, "temp_c"),
        "battery_min": pick(min, "battery_pct"),
        "power_mean": mean("power_w"),
        "inferences_sum": pick(sum, "inferences"),
        "errors_sum": pick(sum, "errors"),
    }


def _python_rollups(queryset) -> dict[tuple[int, datetime], dict]:
    buckets: dict[tuple[int, datetime], list] = defaultdict(list)
    for point in queryset.order_by("ts").iterator(chunk_size=5000):
        buckets[(point.device_id, floor_minute(point.ts))].append(point)
    return {key: _aggregate(points) for key, points in buckets.items()}


PG_ROLLUP = f"""
INSERT INTO {TelemetryRollup._meta.db_table} (device_id, minute, n, model_version,
    latency_p50, latency_p95, throughput_mean, mem_max, cpu_mean, temp_max, battery_min,
    power_mean, inferences_sum, errors_sum)
SELECT device_id, date_trunc('minute', ts) AS minute, count(*),
    (array_agg(model_version ORDER BY ts DESC))[1],
    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
    percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
    avg(throughput), max(mem_mb), avg(cpu_pct), max(temp_c), min(battery_pct), avg(power_w),
    sum(inferences), sum(errors)
FROM {TelemetryPoint._meta.db_table}
WHERE ts >= %s AND ts < %s
GROUP BY device_id, date_trunc('minute', ts)
ON CONFLICT (device_id, minute) DO UPDATE SET n = EXCLUDED.n,
    model_version = EXCLUDED.model_version, latency_p50 = EXCLUDED.latency_p50,
    latency_p95 = EXCLUDED.latency_p95, throughput_mean = EXCLUDED.throughput_mean,
    mem_max = EXCLUDED.mem_max, cpu_mean = EXCLUDED.cpu_mean, temp_max = EXCLUDED.temp_max,
    battery_min = EXCLUDED.battery_min, power_mean = EXCLUDED.power_mean,
    inferences_sum = EXCLUDED.inferences_sum, errors_sum = EXCLUDED.errors_sum
"""


def rollup(start: datetime | None = None, end: datetime | None = None) -> int:
    """(Re)compute rollups of the complete minutes in [start, end); idempotent."""
    end = floor_minute(end or timezone.now())
    start = floor_minute(start or end - timedelta(minutes=ROLLUP_LOOKBACK_MIN))
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(PG_ROLLUP, [start, end])
            return cursor.rowcount
    rows = _python_rollups(TelemetryPoint.objects.filter(ts__gte=start, ts__lt=end))
    with transaction.atomic():
        for (device_id, minute), values in rows.items():
            TelemetryRollup.objects.update_or_create(
                device_id=device_id, minute=minute, defaults=values
            )
    return len(rows)


def series(device: Device, minutes: int) -> dict:
    """Chart data for the last `minutes`: rollups, then the live tail from raw points."""
    now = timezone.now()
    start = floor_minute(now - timedelta(minutes=minutes))
    live_from = floor_minute(now - timedelta(minutes=LIVE_TAIL_MIN))
    by_minute = {
        r["minute"]: r
        for r in TelemetryRollup.objects.filter(
            device=device, minute__gte=start, minute__lt=live_from
        ).values("minute", *SERIES)
    }
    tail = _python_rollups(TelemetryPoint.objects.filter(device=device, ts__gte=live_from))
    for (_device, minute), values in tail.items():
        by_minute[minute] = {"minute": minute, **{k: values[k] for k in SERIES}}
    ordered = [by_minute[m] for m in sorted(by_minute)]
    return {
        "labels": [row["minute"].isoformat() for row in ordered],
        **{name: [row[name] for row in ordered] for name in SERIES},
    }


def field_signals(device: Device) -> dict | None:
    """What the device's latest telemetry point says of energy and input drift."""
    point = (
        TelemetryPoint.objects.filter(device=device)
        .order_by("-ts")
        .values("ts", "power_w", "extra")
        .first()
    )
    if point is None:
        return None
    extra = point["extra"] if isinstance(point["extra"], dict) else {}
    return {
        "ts": point["ts"],
        "energy_mj": extra.get("energy_mj"),
        "power_w": point["power_w"] if extra.get("energy_mj") is not None else None,
        "power_sensor": extra.get("power_sensor"),
        "drift_score": extra.get("drift_score"),
        "drift_input": extra.get("drift_input"),
        "drift_alert": extra.get("drift_score") is not None
        and extra["drift_score"] > settings.DRIFT_ALERT_PSI,
    }


# --- alerts -------------------------------------------------------------------------------
def _open_alert(device_id: int, kind: str, message: str, **detail) -> bool:
    """Open the device's alert of this kind unless one is open: two runs of a sweep
    at once (two workers, two beats) open it once (constraint one_open_alert_per_kind)."""
    if Alert.objects.filter(device_id=device_id, kind=kind, state=AlertState.OPEN).exists():
        return False
    try:
        with transaction.atomic():
            Alert.objects.create(device_id=device_id, kind=kind, message=message, detail=detail)
    except IntegrityError:  # the other run opened it meanwhile
        return False
    return True


def detect_offline(now: datetime | None = None) -> int:
    """Mark online devices silent past their group's threshold offline; open alerts."""
    authcache.flush_presence()  # check-ins noted in Redis count as contact
    now = now or timezone.now()
    thresholds = {g.pk: g.offline_threshold_s for g in DeviceGroup.objects.all()}
    thresholds[None] = settings.DEVICE_OFFLINE_AFTER_S
    marked = 0
    for group_id, seconds in thresholds.items():
        cutoff = now - timedelta(seconds=seconds)
        stale = Device.objects.filter(
            status=DeviceStatus.ONLINE, group_id=group_id, last_seen__lt=cutoff
        )
        ids = list(stale.values_list("pk", flat=True)[:10_000])
        if not ids:
            continue
        # Conditional on the status and the time: a device that spoke meanwhile stays online.
        Device.objects.filter(pk__in=ids, status=DeviceStatus.ONLINE, last_seen__lt=cutoff).update(
            status=DeviceStatus.OFFLINE
        )
        for device_id in ids:
            _open_alert(
                device_id,
                AlertKind.OFFLINE,
                f"No contact for more than {seconds} s",
                threshold_s=seconds,
            )
        marked += len(ids)
    return marked


def check_latency(window_min: int = 15) -> int:
    """Open an alert where measured p95 exceeds the version × profile estimate × factor."""
    factor = settings.LATENCY_ALERT_FACTOR
    since = timezone.now() - timedelta(minutes=window_min)
    baselines = {
        (b.model_version, b.hardware_profile_id): b.p95_ms for b in LatencyBaseline.objects.all()
    }
    if not baselines:
        return 0
    measured = (
        TelemetryRollup.objects.filter(minute__gte=since, latency_p95__isnull=False)
        .values("device_id", "model_version", "device__hardware_profile_id")
        .annotate(p95=Max("latency_p95"))
    )
    opened = 0
    for row in measured:
        estimate = baselines.get((row["model_version"], row["device__hardware_profile_id"]))
        if (
            estimate
            and row["p95"] > estimate * factor
            and _open_alert(
                row["device_id"],
                AlertKind.LATENCY,
                f"p95 {row['p95']:.1f} ms > {factor:g} × estimate {estimate:.1f} ms",
                model_version=row["model_version"],
                p95_ms=row["p95"],
                estimate_ms=estimate,
            )
        ):
            opened += 1
    return opened


def check_drift(window_min: int = 15) -> int:
    """Open an alert where a device's input drift score passed the threshold lately;
    resolve open ones whose device has reported scores, all below it, since."""
    threshold = settings.DRIFT_ALERT_PSI
    since = timezone.now() - timedelta(minutes=window_min)
    recent = (
        TelemetryPoint.objects.filter(ts__gte=since, extra__has_key="drift_score")
        .values("device_id")
        .annotate(worst=Max(Cast(KeyTextTransform("drift_score", "extra"), FloatField())))
    )
    opened = 0
    for row in recent:
        device_id, worst = row["device_id"], row["worst"]
        if worst is not None and worst > threshold:
            point = (
                TelemetryPoint.objects.filter(
                    device_id=device_id, ts__gte=since, extra__has_key="drift_score"
                )
                .order_by("-ts")
                .values("model_version", "extra")
                .first()
            )
            name = (point["extra"] or {}).get("drift_input") or "?"
            if _open_alert(
                device_id,
                AlertKind.DRIFT,
                f"input drift {worst:.2f} > {threshold:g} on input {name}"[:300],
                score=worst,
                threshold=threshold,
                input=name,
                model_version=point["model_version"],
            ):
                opened += 1
        elif worst is not None:
            for alert in Alert.objects.filter(
                device_id=device_id, kind=AlertKind.DRIFT, state=AlertState.OPEN
            ):
                alert.resolve()
    return opened


# --- retention ------------------------------------------------------------------------------
def _delete_before(model, field: str, cutoff: datetime) -> int:
    """Delete in chunks so no single statement holds locks over millions of rows."""
    total = 0
    while True:
        ids = list(
            model.objects.filter(**{f"{field}__lt": cutoff}).values_list("pk", flat=True)[
                :DELETE_CHUNK
            ]
        )
        if not ids:
            return total
        total += model.objects.filter(pk__in=ids).delete()[0]


def _expire_raw(model, cutoff: datetime) -> int:
    """Partitioned (PostgreSQL): drop whole days; plain table (SQLite): delete."""
    table = model._meta.db_table
    if partitions.is_partitioned(table):
        return partitions.drop_before(table, cutoff)
    return _delete_before(model, "ts", cutoff)


def apply_retention(now: datetime | None = None) -> dict[str, int]:
    now = now or timezone.now()
    return {
        "telemetry": _expire_raw(
            TelemetryPoint, now - timedelta(days=settings.TELEMETRY_RETENTION_DAYS)
        ),
        "logs": _expire_raw(LogLine, now - timedelta(days=settings.LOG_RETENTION_DAYS)),
        "rollups": _delete_before(
            TelemetryRollup, "minute", now - timedelta(days=settings.ROLLUP_RETENTION_DAYS)
        ),
    }
