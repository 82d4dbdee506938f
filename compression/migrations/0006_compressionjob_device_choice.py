from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("compression", "0005_compressionjob_evaluation_optional"),
    ]

    operations = [
        migrations.AddField(
            model_name="compressionjob",
            name="device_choice",
            field=models.CharField(
                blank=True,
                choices=[
                    ("", "not asked"),
                    ("requested", "benchmark requested"),
                    ("waiting", "waiting for device results"),
                    ("measured", "chosen by device results"),
                    ("estimate", "estimate kept"),
                ],
                default="",
                max_length=10,
                verbose_name="device choice",
            ),
        ),
        migrations.AddField(
            model_name="compressionjob",
            name="device_deadline",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
