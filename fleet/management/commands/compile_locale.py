"""Compile locale/*/LC_MESSAGES/*.po into .mo (a build step: .mo is not committed)."""

from django.core.management.base import BaseCommand

from fleet.translations import compile_catalogs


class Command(BaseCommand):
    help = "Compile the translation catalogs (.po → .mo) that are out of date."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Recompile every catalog.")

    def handle(self, *args, force=False, **options):
        for path in compile_catalogs(force=force):
            self.stdout.write(f"compiled {path}")
