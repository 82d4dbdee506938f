from django.db import models
from django.utils.translation import gettext_lazy as _


class ExecutionProvider(models.TextChoices):
    CPU = "CPUExecutionProvider", _("CPU")
    CUDA = "CUDAExecutionProvider", _("CUDA")
    TENSORRT = "TensorrtExecutionProvider", _("TensorRT")
    XNNPACK = "XnnpackExecutionProvider", _("XNNPACK")


class Arch(models.TextChoices):
    X86_64 = "x86_64", "x86-64"
    AARCH64 = "aarch64", "ARM64 (aarch64)"
    ARMV7 = "armv7l", "ARMv7"
