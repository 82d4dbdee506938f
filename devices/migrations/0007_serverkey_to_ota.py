from django.db import migrations


class Migration(migrations.Migration):
    """ServerKey (the OTA signing key) now belongs to the ota app; the table stays."""

    dependencies = [
        ("devices", "0006_drop_reports"),
        ("ota", "0003_serverkey"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ServerKey")],
            database_operations=[],
        ),
    ]
