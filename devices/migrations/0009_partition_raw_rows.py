"""Raw telemetry and logs partitioned by day (PostgreSQL only; devices/partitions.py).

On SQLite nothing changes: the plain tables stay. On PostgreSQL each table is
rebuilt as a partitioned one and its rows copied, under an exclusive lock: on a
large installation run this migration in a maintenance window (it takes about
as long as copying the table). The unique key of a record gains `ts` on every
database (a unique index on a partitioned table must hold the partition key).
"""

from django.conf import settings
from django.db import migrations, models

from devices import partitions


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    backs = {"telemetry": settings.TELEMETRY_RETENTION_DAYS, "logs": settings.LOG_RETENTION_DAYS}
    with schema_editor.connection.cursor() as cursor:
        for kind, table in partitions.TABLES.items():
            partitions.partition_table(cursor, table, back_days=backs[kind],
                                       ahead_days=settings.TELEMETRY_PARTITIONS_AHEAD_DAYS)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for table in partitions.TABLES.values():
            partitions.unpartition_table(cursor, table)


class Migration(migrations.Migration):
    dependencies = [("devices", "0008_alert_kind_drift")]
    operations = [
        migrations.RemoveConstraint(model_name="telemetrypoint", name="telemetry_device_boot_seq"),
        migrations.AddConstraint(model_name="telemetrypoint", constraint=models.UniqueConstraint(
            fields=["device", "boot_id", "seq", "ts"], name="telemetry_device_boot_seq")),
        migrations.RemoveConstraint(model_name="logline", name="log_device_boot_seq"),
        migrations.AddConstraint(model_name="logline", constraint=models.UniqueConstraint(
            fields=["device", "boot_id", "seq", "ts"], name="log_device_boot_seq")),
        migrations.RunPython(forward, backward),
    ]
