"""`manage.py rotate_server_key status|prepare|activate [--force]|encrypt` (ota.rotation).

`encrypt` encrypts every signing key still stored in clear (rows written before
keys were encrypted at rest; the first use of such a key does it too)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ota import keys, rotation
from ota.models import ServerKey


class Command(BaseCommand):
    help = (
        "Rotate the server's signing key: `prepare` announces a next key, `activate` "
        "switches to it after the overlap period (OTA_KEY_OVERLAP_H)."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["status", "prepare", "activate", "encrypt"])
        parser.add_argument(
            "--force", action="store_true", help="activate before the overlap period is over"
        )

    def handle(self, *args, action: str, force: bool = False, **options):
        if action == "prepare":
            key = rotation.prepare_next_key()
            self.stdout.write(
                f"next key {key} announced; activate it after {settings.OTA_KEY_OVERLAP_H} h"
            )
        elif action == "activate":
            try:
                key = rotation.activate_next_key(force=force)
            except rotation.RotationError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"signing with {key}; pending manifests re-signed")
        elif action == "encrypt":
            done = sum(keys.encrypt_stored(key) for key in ServerKey.objects.all())
            self.stdout.write(f"{done} key(s) encrypted")
        active = keys.active_key()
        nxt = rotation.next_key()
        for key in ServerKey.objects.order_by("created_at"):
            role = (
                "active"
                if key.pk == active.pk
                else "next"
                if nxt and key.pk == nxt.pk
                else "retired"
            )
            stored = (
                "encrypted"
                if keys.is_encrypted(key.private_key_pem)
                else "erased"
                if not key.private_key_pem
                else "PLAINTEXT"
            )
            self.stdout.write(
                f"{key}  {role:8}  created {key.created_at:%Y-%m-%d %H:%M} UTC"
                f"  private key {stored}"
            )
