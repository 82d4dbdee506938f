"""Issue an API token, e.g. for a CI pipeline: `manage.py api_token ci-bot --role ci`.

The account is created when missing (no password: it cannot sign in to the
web UI) and put in the role's group; `--rotate` replaces its token. The token
is printed once and is stored only by the API's token table.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework.authtoken.models import Token

from fleet.roles import Role


class Command(BaseCommand):
    help = "Create (or rotate) the API token of an account; create the account if needed."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--role",
            choices=[r.value for r in Role],
            help="Put the account in this role's group (required for a new one).",
        )
        parser.add_argument(
            "--rotate",
            action="store_true",
            help="Replace an existing token (the old one stops working).",
        )

    def handle(self, *args, username, role, rotate, **options):
        User = get_user_model()
        with transaction.atomic():
            user = User.objects.filter(username=username).first()
            if user is None:
                if not role:
                    raise CommandError("A new account needs --role.")
                user = User(username=username)
                user.set_unusable_password()
                user.save()
            if role:
                user.groups.add(Group.objects.get_or_create(name=role)[0])
            if rotate:
                Token.objects.filter(user=user).delete()
            token, _created = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
