from django.db import migrations, models


class Migration(migrations.Migration):
    """ServerKey moves here from the devices app; its table (devices_serverkey) stays."""

    dependencies = [
        ("ota", "0002_deployment_ungated_count"),
        ("devices", "0006_drop_reports"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ServerKey",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                                   serialize=False, verbose_name="ID")),
                        ("private_key_pem", models.TextField()),
                        ("public_key_b64", models.CharField(max_length=64)),
                        ("fingerprint", models.CharField(max_length=64, unique=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("active", models.BooleanField(default=True)),
                    ],
                    options={
                        "db_table": "devices_serverkey",
                        "ordering": ["-created_at"],
                        "constraints": [models.UniqueConstraint(
                            condition=models.Q(("active", True)), fields=("active",),
                            name="one_active_server_key")],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
