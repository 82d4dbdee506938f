"""Durations in the reader's language: `{{ seconds|duration }}`, `{{ when|ago }}`.

Django's `timesince` says "0 minutes" for anything under a minute; a live page
wants "12 s" there.
"""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.translation import gettext as _

register = template.Library()


@register.filter
def duration(value) -> str:
    """75 -> '1 min 15 s'; 3900 -> '1 h 5 min'; None -> '—'."""
    try:
        seconds = max(0, round(float(value)))
    except (TypeError, ValueError):
        return "—"
    if seconds < 60:
        return _("%(s)d s") % {"s": seconds}
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return (
            _("%(m)d min %(s)d s") % {"m": minutes, "s": seconds}
            if seconds and minutes < 10
            else _("%(m)d min") % {"m": minutes}
        )
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return (
            _("%(h)d h %(m)d min") % {"h": hours, "m": minutes}
            if minutes
            else _("%(h)d h") % {"h": hours}
        )
    return _("%(d)d days") % {"d": hours // 24}


@register.filter
def ago(value: datetime | None) -> str:
    """How long ago, e.g. '12 s ago'."""
    if not value:
        return "—"
    return _("%(d)s ago") % {"d": duration((timezone.now() - value).total_seconds())}
