"""How a deployment reads on the pages: target names, state labels and gate
reasons in the reader's language (the stored report keeps codes and params)."""

from __future__ import annotations

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from devices.models import DeviceGroup, HardwareProfile, QueryGroup
from ota.choices import UpdateState
from ota.gates import GATE_FAILED, REASONS, Plural
from ota.models import Deployment

VERDICTS = {
    "pass": gettext_lazy("pass"),
    "wait": gettext_lazy("wait"),
    "fail": gettext_lazy("fail"),
    "error": gettext_lazy("error"),
}


def target_rows(target: dict) -> list[tuple[str, list[str]]]:
    """(label, names) per target entry: groups and profiles by name, not by id."""

    def names(model, key: str, values) -> list[str]:
        ids = [v for v in values if str(v).isdigit()]
        found = dict(model.objects.filter(**{f"{key}__in": ids}).values_list(key, "name"))
        return [found.get(int(v) if key == "pk" else v, str(v)) for v in values]

    rows = []
    for key, label, lookup in (
        ("groups", _("groups"), lambda v: names(DeviceGroup, "pk", v)),
        ("query_groups", _("saved queries"), lambda v: names(QueryGroup, "pk", v)),
        (
            "hardware_profiles",
            _("hardware profiles"),
            lambda v: [
                dict(HardwareProfile.objects.filter(slug__in=v).values_list("slug", "name")).get(
                    s, s
                )
                for s in v
            ],
        ),
        ("tags", _("tags"), list),
        ("devices", _("devices"), list),
    ):
        if target.get(key):
            rows.append((label, lookup(target[key])))
    return rows


def state_counts(counts: dict[str, int]) -> list[tuple[str, str, int]]:
    """(state, translated label, n) for the states that have devices."""
    return [(s.value, s.label, counts[s.value]) for s in UpdateState if counts.get(s.value)]


def reason_text(code: dict) -> str:
    template, params = REASONS.get(code.get("code")), code.get("params", {})
    if isinstance(template, Plural):
        count = params.get(template.count)
        n = count if isinstance(count, int) else 2
        return ngettext(template.singular, template.plural, n) % params
    return _(template) % params if template else str(code)


def gate_reasons(report: dict) -> list[str]:
    """The last gate report's reasons, translated when it carries codes (older reports:
    as stored)."""
    codes = report.get("reason_codes")
    if codes is not None:
        return [reason_text(c) for c in codes]
    return list(report.get("reasons") or [])


def pause_text(deployment: Deployment) -> str:
    """Why it is paused: a failed gate speaks the reader's language; a person's
    reason is shown as typed."""
    report = deployment.gate_report or {}
    if report.get("verdict") == "fail" and report.get("reason_codes") is not None:
        params = {"p": report.get("phase", 0) + 1}
        if deployment.pause_reason == GATE_FAILED % {**params, "r": "; ".join(report["reasons"])}:
            return _(GATE_FAILED) % {**params, "r": "; ".join(gate_reasons(report))}
    return deployment.pause_reason
