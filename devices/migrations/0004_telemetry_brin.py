"""BRIN indexes on telemetry/log time (PostgreSQL only).

Rows arrive roughly in time order, so a BRIN index is a few pages for tens of
millions of rows and serves retention deletes and fleet-wide time scans.
SQLite has no BRIN; there the (device, ts) b-tree is enough.
"""

from django.db import migrations

INDEXES = [
    ("telemetry_ts_brin", "devices_telemetrypoint"),
    ("log_ts_brin", "devices_logline"),
    ("rollup_minute_brin", "devices_telemetryrollup"),
]


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, table in INDEXES:
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING brin (ts)"
                              if "rollup" not in name else
                              f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING brin (minute)")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, _table in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("devices", "0003_fleet")]
    operations = [migrations.RunPython(create, drop)]
