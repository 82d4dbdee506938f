"""Create the first admin account (once) for `make run`.

Respects Django's DJANGO_SUPERUSER_USERNAME / _PASSWORD / _EMAIL; otherwise
generates a password and prints it once — it is not stored anywhere else.
"""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from fleet.roles import Role


class Command(BaseCommand):
    help = "Create the first admin account if there is none; print its credentials once."

    def handle(self, *args, **options):
        User = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write(f"Admin account exists (e.g. {username!r}); password unchanged.")
            return
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or secrets.token_urlsafe(12)
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "admin@example.com")
        user = User.objects.create_superuser(username=username, email=email, password=password)
        user.groups.add(Group.objects.get_or_create(name=Role.ADMIN.value)[0])
        shown = password if "DJANGO_SUPERUSER_PASSWORD" not in os.environ else "(from env)"
        self.stdout.write(
            self.style.SUCCESS(f"Created admin account  username: {username}  password: {shown}")
        )
