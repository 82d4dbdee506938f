"""Page forms: parse what people type into what the services take. No rules here."""

from __future__ import annotations

import json

from django import forms
from django.utils.translation import gettext_lazy as _

from compression.choices import VersionStatus
from compression.models import ModelVersion
from devices.models import DeviceGroup, HardwareProfile, QueryGroup
from ota.models import Release
from ota.services import kpi_missing_versions

VARIANT_ROWS = 4


class ReleaseForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=120)
    slot = forms.SlugField(label=_("Model slot"), initial="default", max_length=64)
    notes = forms.CharField(
        label=_("Notes"), required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    default_variant = forms.SlugField(label=_("Default variant"), initial="default", max_length=40)
    policy = forms.CharField(
        label=_("Switching policy (JSON, optional)"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "mono"}),
        help_text=_(
            'e.g. {"rules": [{"when": {"battery_pct": {"lt": 20}},'
            ' "use": "int8"}], "default": "fp32"}'
        ),
    )

    allow_kpi_misses = forms.BooleanField(
        label=_("Also offer variants that missed their job's KPIs"),
        required=False,
        help_text=_("An explicit override: such a variant failed the targets it was built for."),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A variant that missed its job's KPIs is offered only with the override ticked
        # (create_release refuses it otherwise; the model page says why).
        versions = ModelVersion.objects.filter(status=VersionStatus.READY)
        if not self["allow_kpi_misses"].value():
            versions = versions.exclude(pk__in=kpi_missing_versions())
        versions = versions.select_related("model").order_by("model__name", "-number")
        choices = [("", "—")] + [(v.pk, f"{v.model.name}:{v.number} {v.label}") for v in versions]
        profiles = [("", _("any hardware (generic)"))] + [
            (p.slug, p.name) for p in HardwareProfile.objects.all()
        ]
        for i in range(VARIANT_ROWS):
            self.fields[f"variant_{i}_name"] = forms.SlugField(
                label=_("Variant name"),
                required=False,
                max_length=40,
                initial="default" if i == 0 else "",
            )
            self.fields[f"variant_{i}_version"] = forms.ChoiceField(
                label=_("Model version"), choices=choices, required=i == 0
            )
            self.fields[f"variant_{i}_profile"] = forms.ChoiceField(
                label=_("Hardware profile"), choices=profiles, required=False
            )

    def variant_rows(self):
        return [
            (self[f"variant_{i}_name"], self[f"variant_{i}_version"], self[f"variant_{i}_profile"])
            for i in range(VARIANT_ROWS)
        ]

    def clean_policy(self):
        text = self.cleaned_data["policy"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(_("Not JSON: %(e)s") % {"e": exc}) from None
        if not isinstance(value, dict):
            raise forms.ValidationError(_("The policy is a JSON object."))
        return value

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        variants = [
            {
                "name": data[f"variant_{i}_name"] or data["default_variant"],
                "model_version": data[f"variant_{i}_version"],
                "hardware_profile": data[f"variant_{i}_profile"] or None,
            }
            for i in range(VARIANT_ROWS)
            if data.get(f"variant_{i}_version")
        ]
        return {
            "name": data["name"],
            "slot": data["slot"],
            "notes": data["notes"],
            "default_variant": data["default_variant"],
            "policy": data["policy"],
            "variants": variants,
            "allow_kpi_misses": data["allow_kpi_misses"],
        }


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


class DeploymentForm(forms.Form):
    release = forms.ModelChoiceField(label=_("Release"), queryset=Release.objects.all())
    groups = forms.ModelMultipleChoiceField(
        label=_("Device groups"), required=False, queryset=DeviceGroup.objects.all()
    )
    query_groups = forms.ModelMultipleChoiceField(
        label=_("Query groups"), required=False, queryset=QueryGroup.objects.all()
    )
    hardware_profiles = forms.ModelMultipleChoiceField(
        label=_("Hardware profiles"),
        required=False,
        queryset=HardwareProfile.objects.all(),
        to_field_name="slug",
    )
    tags = forms.CharField(label=_("Tags (comma separated)"), required=False)
    devices = forms.CharField(label=_("Device ids (comma separated)"), required=False)
    phases = forms.CharField(label=_("Phases (cumulative %)"), initial="1, 10, 50, 100")
    max_failure_rate = forms.FloatField(
        label=_("Max install failure rate"), initial=0.2, min_value=0, max_value=1
    )
    min_successful = forms.IntegerField(label=_("Min successful devices"), initial=1, min_value=0)
    max_latency_ratio = forms.FloatField(
        label=_("Max on-device p95 / estimate"), initial=1.5, required=False, min_value=0.01
    )
    min_latency_samples = forms.IntegerField(label=_("Min latency samples"), initial=3, min_value=0)
    max_confidence_drop = forms.FloatField(
        label=_("Max confidence drop"), required=False, min_value=0
    )
    min_soak_s = forms.IntegerField(label=_("Min soak (s)"), initial=0, min_value=0)
    scheduled_at = forms.DateTimeField(
        label=_("Scheduled start (UTC, optional)"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    window_start = forms.CharField(label=_("Install window start (HH:MM UTC)"), required=False)
    window_end = forms.CharField(label=_("Install window end (HH:MM UTC)"), required=False)

    def clean_phases(self):
        try:
            return [float(p) for p in _split(self.cleaned_data["phases"])]
        except ValueError:
            raise forms.ValidationError(_("Phases: numbers separated by commas.")) from None

    def target(self) -> dict:
        data = self.cleaned_data
        return {
            "groups": [g.pk for g in data.get("groups") or []],
            "query_groups": [q.pk for q in data.get("query_groups") or []],
            "hardware_profiles": [p.slug for p in data.get("hardware_profiles") or []],
            "tags": _split(data.get("tags") or ""),
            "devices": _split(data.get("devices") or ""),
        }

    def gates(self) -> dict:
        data = self.cleaned_data
        return {
            k: data[k]
            for k in (
                "max_failure_rate",
                "min_successful",
                "max_latency_ratio",
                "min_latency_samples",
                "max_confidence_drop",
                "min_soak_s",
            )
        }

    def window(self) -> dict | None:
        start, end = self.cleaned_data.get("window_start"), self.cleaned_data.get("window_end")
        return {"start": start, "end": end} if start or end else None
