from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = _("EdgeFleet")

    def ready(self) -> None:
        from fleet.roles import sync_role_permissions

        post_migrate.connect(sync_role_permissions, dispatch_uid="edgefleet-roles")
