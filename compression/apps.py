from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CompressionConfig(AppConfig):
    name = "compression"
    verbose_name = _("Models and compression")
