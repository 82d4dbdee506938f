"""`makemessages` that also collects the plural texts marked with `ngettext_noop`
(the gate reasons in ota/gates.py, formatted without Django at evaluation time)."""

from django.core.management.commands import makemessages


class Command(makemessages.Command):
    xgettext_options = [*makemessages.Command.xgettext_options, "--keyword=ngettext_noop:1,2"]
