from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = _("Devices")

    def ready(self) -> None:
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_delete, post_save

        from devices import authcache, ingest
        from devices.models import Device, DeviceCredential

        # Whatever path revokes or deletes a credential (admin, shell, cascade),
        # the cached copy dies with it.
        post_save.connect(
            authcache.on_credential_saved,
            sender=DeviceCredential,
            dispatch_uid="devauth-credential-saved",
        )
        post_delete.connect(
            authcache.on_credential_deleted,
            sender=DeviceCredential,
            dispatch_uid="devauth-credential-deleted",
        )
        post_save.connect(
            authcache.on_device_saved, sender=Device, dispatch_uid="devauth-device-saved"
        )
        connection_created.connect(ingest.forget_prepared, dispatch_uid="ingest-prepared")
