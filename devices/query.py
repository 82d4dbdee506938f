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
                % {"term": part, "fields": ", ".join(FIELDS)},
                code="bad_query",
            )
        terms.append((match.group(1), match.group(2) == "!=", match.group(3).strip("'\"")))
    return terms


def validate_query(query: str) -> None:
    parse(query)


def filter_by_query(queryset, query: str):
    for field, negate, value in parse(query):
        lookup = Q(**{FIELDS[field]: value})
        queryset = queryset.exclude(lookup) if negate else queryset.filter(lookup)
    return queryset.distinct() if any(f == "tag" for f, _n, _v in parse(query)) else queryset


def filter_by_params(queryset, params):
    """The device list filters (query-string names) shared by the API and the list page."""
    if params.get("group"):
        queryset = (
            queryset.filter(group_id=params["group"])
            if str(params["group"]).isdigit()
            else queryset.filter(group__name=params["group"])
        )
    if params.get("tag"):
        queryset = queryset.filter(tags__name=params["tag"])
    if params.get("status"):
        queryset = queryset.filter(status=params["status"])
    if params.get("hardware"):
        queryset = queryset.filter(hardware_profile__slug=params["hardware"])
    if params.get("model_version"):
        queryset = queryset.filter(model_version=params["model_version"])
    if params.get("q"):
        queryset = queryset.filter(Q(uid__icontains=params["q"]) | Q(name__icontains=params["q"]))
    expression = params.get("query")
    if params.get("query_group"):
        from devices.models import QueryGroup

        if not str(params["query_group"]).isdigit():
            raise ValidationError(
                _("query_group: the id of a query group."), code="bad_query_group"
            )
        group = QueryGroup.objects.filter(pk=params["query_group"]).first()
        if group is None:
            return queryset.none()
        expression = group.query
    if expression:
        queryset = filter_by_query(queryset, expression)
    return queryset
