import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("compression", "0004_compressionjob_options"),
    ]

    operations = [
        migrations.AlterField(
            model_name="compressionjob",
            name="evaluation",
            field=models.ForeignKey(
                blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                related_name="+", to="compression.dataset", verbose_name="evaluation data"),
        ),
    ]
