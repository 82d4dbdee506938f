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


class DeviceStatus(models.TextChoices):
    ONLINE = "online", _("Online")
    OFFLINE = "offline", _("Offline")
    REVOKED = "revoked", _("Revoked")


class LogLevel(models.TextChoices):
    DEBUG = "debug", _("Debug")
    INFO = "info", _("Info")
    WARNING = "warning", _("Warning")
    ERROR = "error", _("Error")
    CRITICAL = "critical", _("Critical")


class AlertKind(models.TextChoices):
    OFFLINE = "offline", _("Device offline")
    LATENCY = "latency", _("Latency above estimate")
    DRIFT = "drift", _("Input drift")


class AlertState(models.TextChoices):
    OPEN = "open", _("Open")
    RESOLVED = "resolved", _("Resolved")
