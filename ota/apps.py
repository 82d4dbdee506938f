from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class OtaConfig(AppConfig):
    name = "ota"
    verbose_name = _("Over-the-air rollouts")
