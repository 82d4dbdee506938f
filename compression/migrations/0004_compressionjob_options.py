from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("compression", "0003_version_status")]

    operations = [
        migrations.AddField(
            model_name="compressionjob",
            name="options",
            field=models.JSONField(blank=True, default=dict, verbose_name="options"),
        ),
    ]
