"""The operator's overview: fleet health over time and what runs where, as chart data."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone
from django.utils.translation import gettext as _

from devices.choices import AlertState, DeviceStatus
from devices.models import Alert, Device, FleetSample

TOP = 8  # bars per chart; the rest is summed as "other"
LOCK_KEY = 0x45465331  # pg_advisory_xact_lock key: "EFS1", the fleet sample


def _now_sample(now) -> FleetSample:
    devices = Device.objects.exclude(status=DeviceStatus.REVOKED)
    return FleetSample(
        at=now,
        total=devices.count(),
        online=devices.filter(status=DeviceStatus.ONLINE).count(),
        open_alerts=Alert.objects.filter(state=AlertState.OPEN).count(),
    )


def sample_fleet(now=None) -> FleetSample | None:
    """Note online devices and open alerts now; drop samples past the rollup retention.

    Once per tick however many workers run it (two beats by mistake, a redelivery):
    under a transaction-level advisory lock on PostgreSQL, a sample taken less than
    half a period ago stands for this one (None). SQLite serves one worker."""
    now = now or timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        period_s = settings.CELERY_BEAT_SCHEDULE["devices-sample"]["schedule"]
        recent = now - timedelta(seconds=period_s / 2)
        if FleetSample.objects.filter(at__gt=recent, at__lte=now).exists():
            return None
        sample = _now_sample(now)
        sample.save()
    FleetSample.objects.filter(at__lt=now - timedelta(days=settings.ROLLUP_RETENTION_DAYS)).delete()
    return sample


def health_series(hours: int = 24) -> dict:
    since = timezone.now() - timedelta(hours=hours)
    rows = list(
        FleetSample.objects.filter(at__gte=since).values_list(
            "at", "online", "total", "open_alerts"
        )[:2000]
    )
    # The chart ends at the live state: a fresh install draws a point before the first
    # sample is due.
    live = _now_sample(timezone.now())
    rows.append((live.at, live.online, live.total, live.open_alerts))
    return {
        "labels": [at.isoformat() for at, *_rest in rows],
        "online": [r[1] for r in rows],
        "total": [r[2] for r in rows],
        "alerts": [r[3] for r in rows],
    }


def _top(field: str, empty: str) -> dict:
    rows = list(
        Device.objects.exclude(status=DeviceStatus.REVOKED)
        .values(field)
        .annotate(n=Count("pk"))
        .order_by("-n")
    )
    labels = [r[field] or empty for r in rows[:TOP]]
    counts = [r["n"] for r in rows[:TOP]]
    if len(rows) > TOP:
        labels.append(_("other"))
        counts.append(sum(r["n"] for r in rows[TOP:]))
    return {"labels": labels, "counts": counts}


def charts() -> dict:
    """Everything the overview charts draw, in one payload."""
    return {
        "health": health_series(),
        "by_version": _top("model_version", _("(none)")),
        "by_profile": _top("hardware_profile__name", _("(unknown)")),
        "names": {
            "online": _("online"),
            "total": _("enrolled"),
            "alerts": _("open alerts"),
            "devices": _("devices"),
        },
    }
