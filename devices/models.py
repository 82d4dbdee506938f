"""The fleet. For now: hardware profiles, shared with compression jobs."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from devices.choices import Arch, ExecutionProvider


class HardwareProfile(models.Model):
    """A class of device: what compression jobs measure for and releases target.

    Server-side benchmarks run with `intra_op_threads` and `execution_provider`
    of the profile on the server's CPU, so they are *estimates* for the device.
    """

    slug = models.SlugField(unique=True)
    name = models.CharField(_("name"), max_length=120)
    description = models.TextField(_("description"), blank=True)
    arch = models.CharField(_("architecture"), max_length=20, choices=Arch.choices,
                            default=Arch.AARCH64)
    intra_op_threads = models.PositiveSmallIntegerField(_("intra-op threads"), default=1)
    execution_provider = models.CharField(
        _("execution provider"), max_length=40, choices=ExecutionProvider.choices,
        default=ExecutionProvider.CPU,
    )
    ram_mb = models.PositiveIntegerField(_("RAM (MB)"), default=1024)

    class Meta:
        ordering = ["name"]
        verbose_name = _("hardware profile")
        verbose_name_plural = _("hardware profiles")

    def __str__(self) -> str:
        return self.name
