"""Daily partitions of raw telemetry and logs on PostgreSQL (devices/partitions.py):
created ahead, rows in the right partition, nothing lost at midnight, retention
by dropping whole days. On SQLite the plain tables stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from devices import metrics, partitions, services
from devices.models import LogLine, TelemetryPoint

pytestmark = pytest.mark.django_db
TELEMETRY = partitions.TABLES["telemetry"]
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="partitioning is PostgreSQL only"
)


def point(seq: int, moment: datetime) -> dict:
    return {"seq": seq, "boot_id": "boot-1", "ts": moment.timestamp(), "latency_ms": 5.0}


def where(table: str) -> dict[int, str]:
    """{seq: the partition holding that row}"""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT seq, tableoid::regclass::text FROM {table}")
        return dict(cursor.fetchall())


def test_sqlite_keeps_the_plain_tables():
    if connection.vendor == "postgresql":
        assert partitions.is_partitioned(TELEMETRY)
        assert partitions.is_partitioned(partitions.TABLES["logs"])
    else:
        assert not partitions.enabled() and partitions.ensure_partitions() == []


@on_postgresql
def test_partitions_are_created_ahead_and_idempotently(settings):
    settings.TELEMETRY_PARTITIONS_AHEAD_DAYS = 3
    today = datetime.now(UTC).date()
    later = datetime.now(UTC) + timedelta(days=10)
    created = partitions.ensure_partitions(later)
    days = partitions.daily_partitions(TELEMETRY)
    for offset in range(4):
        assert today + timedelta(days=10 + offset) in days  # the task's day and 3 ahead
    assert partitions.name_for(TELEMETRY, today + timedelta(days=13)) in created
    assert partitions.ensure_partitions(later) == []  # the next tick: nothing to do
    # the migration made today's and the next days' partitions already
    assert {today + timedelta(days=d) for d in range(4)} <= set(days)


@on_postgresql
def test_rows_land_in_their_day_and_nothing_is_lost_at_midnight(device_a):
    device, _token = device_a
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    batch = [
        point(1, midnight - timedelta(microseconds=1)),
        point(2, midnight),
        point(3, midnight + timedelta(microseconds=1)),
        point(4, midnight - timedelta(days=1)),
    ]
    result = services.ingest_telemetry(device, batch)
    assert result.new == 4
    again = services.ingest_telemetry(device, batch)  # a resend across the boundary
    assert (again.new, again.duplicates) == (0, 4)
    today = partitions.name_for(TELEMETRY, midnight.date())
    yesterday = partitions.name_for(TELEMETRY, (midnight - timedelta(days=1)).date())
    assert where(TELEMETRY) == {1: yesterday, 2: today, 3: today, 4: yesterday}
    assert TelemetryPoint.objects.filter(device=device).count() == 4


@on_postgresql
def test_a_row_without_its_day_waits_in_default_then_moves(device_a):
    device, _token = device_a
    long_ago = datetime.now(UTC) - timedelta(days=60)
    services.ingest_telemetry(device, [point(1, long_ago)])
    assert where(TELEMETRY) == {1: partitions.default_name(TELEMETRY)}
    created = partitions.ensure_partitions(long_ago, ahead=0)
    name = partitions.name_for(TELEMETRY, long_ago.date())
    assert name in created
    assert where(TELEMETRY) == {1: name}  # moved, not copied
    assert TelemetryPoint.objects.filter(device=device).count() == 1


@on_postgresql
def test_retention_drops_whole_days(device_a, settings):
    settings.TELEMETRY_RETENTION_DAYS = 7
    settings.LOG_RETENTION_DAYS = 7
    device, _token = device_a
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=7)
    partitions.ensure_partitions(now, back=9, ahead=0)
    old_day = (cutoff - timedelta(days=1)).date()
    services.ingest_telemetry(
        device,
        [
            point(1, cutoff - timedelta(days=1)),  # a day wholly before the cutoff
            # before the cutoff, but its day ends after it: kept until the day is over
            point(2, cutoff.replace(hour=0, minute=0, second=0, microsecond=0)),
            point(3, now),
        ],
    )
    services.ingest_logs(
        device,
        [
            {
                "seq": 1,
                "boot_id": "b",
                "ts": (cutoff - timedelta(days=1)).timestamp(),
                "message": "old",
            }
        ],
    )
    result = metrics.apply_retention(now)
    assert result["telemetry"] == 1 and result["logs"] == 1
    assert old_day not in partitions.daily_partitions(TELEMETRY)  # dropped, not emptied
    assert cutoff.date() in partitions.daily_partitions(TELEMETRY)
    assert sorted(TelemetryPoint.objects.values_list("seq", flat=True)) == [2, 3]
    assert LogLine.objects.count() == 0
