"""Query groups: `hardware=rpi4 and tag=line-3 and status!=offline`.

Terms joined by `and`; each `field=value` or `field!=value`. Fields: hardware,
tag, group, status, model (installed model version), agent, arch, uid.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.db.models import Q
from django.utils.translation import gettext as _

FIELDS = {
    "hardware": "hardware_profile__slug",
    "tag": "tags__name",
    "group": "group__name",
    "status": "status",
    "model": "model_version",
    "agent": "agent_version",
    "arch": "inventory__arch",
    "uid": "uid",
}
TERM = re.compile(r"^\s*([a-z_]+)\s*(!=|=)\s*(.+?)\s*$")


def parse(query: str) -> list[tuple[str, bool, str]]:
    terms = []
    for part in re.split(r"\s+and\s+", query.strip(), flags=re.IGNORECASE):
        match = TERM.match(part)
        if not match or match.group(1) not in FIELDS:
            raise ValidationError(
                _("Cannot read %(term)r: use field=value joined by 'and'; fields: %(fields)s")
                % {"term": part, "fields": ", ".join(FIELDS)}, code="bad_query")
        terms.append((match.group(1), match.group(2) == "!=", match.group(3).strip("'\"")))
    return terms


def validate_query(query: str) -> None:
    parse(query)


def filter_devices(queryset, query: str):
    for field, negate, value in parse(query):
        lookup = Q(**{FIELDS[field]: value})
        queryset = queryset.exclude(lookup) if negate else queryset.filter(lookup)
    return queryset.distinct() if any(f == "tag" for f, _n, _v in parse(query)) else queryset
