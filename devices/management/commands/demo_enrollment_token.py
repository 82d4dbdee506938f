"""Print the enrollment token of the demo fleet, creating it once (used by `make run`).

The plaintext of an enrollment token is shown once and stored only hashed, so
to hand the same token to the simulator on every `make run` it is kept in
`VAR_DIR/demo-enrollment-token` (mode 0600), next to the embedded secret key.
If that file is missing, or its token was revoked, expired or deleted, a new
token is created for the "demo" group.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from devices import services, tokens
from devices.models import DeviceGroup, EnrollmentToken

DEMO_GROUP = "demo"
TOKEN_NAME = "demo fleet (make run)"


def token_file():
    return settings.VAR_DIR / "demo-enrollment-token"


def demo_enrollment_token() -> str:
    """The plaintext of a usable demo enrollment token (idempotent)."""
    group, _ = DeviceGroup.objects.get_or_create(
        name=DEMO_GROUP, defaults={"description": "Simulated devices started by `make run`."}
    )
    path = token_file()
    if path.exists():
        value = path.read_text().strip()
        row = tokens.find(EnrollmentToken.objects.filter(name=TOKEN_NAME), value)
        if row is not None and row.is_usable:
            return value
    _row, value = services.create_enrollment_token(name=TOKEN_NAME, group=group)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


class Command(BaseCommand):
    help = "Create (once) an enrollment token for the 'demo' device group and print only its value."

    def handle(self, *args, **options):
        self.stdout.write(demo_enrollment_token())
