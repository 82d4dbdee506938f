from django.db import migrations

PROFILES = [
    ("rpi4", "Raspberry Pi 4 — 4× Cortex-A72", "aarch64", 4, 4096,
     "Broadcom BCM2711, 4× Cortex-A72 @ 1.5 GHz, NEON, no NPU."),
    ("rpi-zero2", "Raspberry Pi Zero 2 W — 4× Cortex-A53", "aarch64", 1, 512,
     "Very constrained: one busy core, 512 MB RAM."),
    ("jetson-nano-cpu", "Jetson Nano CPU — 4× Cortex-A57", "aarch64", 4, 4096,
     "CPU execution only (GPU/TensorRT profiles are separate)."),
    ("x86-gateway-2c", "x86 gateway, 2 cores", "x86_64", 2, 8192,
     "Industrial PC class gateway, AVX2."),
    ("x86-gateway-1c", "x86 camera box, 1 core", "x86_64", 1, 2048,
     "Single-core budget for an inference sidecar."),
]


def seed(apps, schema_editor):
    HardwareProfile = apps.get_model("devices", "HardwareProfile")
    for slug, name, arch, threads, ram, description in PROFILES:
        HardwareProfile.objects.get_or_create(slug=slug, defaults={
            "name": name, "arch": arch, "intra_op_threads": threads, "ram_mb": ram,
            "description": description, "execution_provider": "CPUExecutionProvider",
        })


class Migration(migrations.Migration):
    dependencies = [("devices", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
