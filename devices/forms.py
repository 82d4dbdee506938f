from __future__ import annotations

from datetime import timedelta

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from devices.choices import DeviceStatus, LogLevel
from devices.models import Device, DeviceGroup, HardwareProfile


def split_tags(raw: str) -> list[str]:
    return [t for t in (part.strip() for part in raw.replace(",", " ").split()) if t]


class EnrollmentTokenForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=120)
    group = forms.ModelChoiceField(DeviceGroup.objects.all(), label=_("Group"), required=False)
    tags = forms.CharField(label=_("Tags"), required=False, help_text=_("Space or comma separated"))
    max_uses = forms.IntegerField(label=_("Max uses"), min_value=1, required=False)
    expires_in_days = forms.IntegerField(
        label=_("Expires in (days)"), min_value=1, max_value=3650, required=False, initial=30
    )

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        days = data.get("expires_in_days")
        return {
            "name": data["name"],
            "group": data.get("group"),
            "tags": split_tags(data.get("tags") or ""),
            "max_uses": data.get("max_uses"),
            "expires_at": timezone.now() + timedelta(days=days) if days else None,
        }


class DeviceEditForm(forms.Form):
    group = forms.ModelChoiceField(DeviceGroup.objects.all(), label=_("Group"), required=False)
    tags = forms.CharField(label=_("Tags"), required=False, help_text=_("Space or comma separated"))


class GroupForm(forms.ModelForm):
    class Meta:
        model = DeviceGroup
        fields = ["name", "description", "offline_after_s"]


class DeviceFilterForm(forms.Form):
    q = forms.CharField(label=_("Search"), required=False)
    status = forms.ChoiceField(
        label=_("Status"), required=False, choices=[("", _("any status")), *DeviceStatus.choices]
    )
    group = forms.ModelChoiceField(
        DeviceGroup.objects.all(), label=_("Group"), required=False, empty_label=_("any group")
    )
    hardware = forms.ModelChoiceField(
        HardwareProfile.objects.all(),
        label=_("Hardware"),
        required=False,
        to_field_name="slug",
        empty_label=_("any hardware"),
    )
    tag = forms.CharField(label=_("Tag"), required=False)
    model_version = forms.CharField(
        label=_("Model version"),
        required=False,
        widget=forms.TextInput(attrs={"list": "running-versions", "placeholder": "digits:3"}),
    )

    @staticmethod
    def running_versions() -> list[str]:
        """What the fleet reports running: suggestions for "devices running version X"."""
        return list(
            Device.objects.exclude(model_version__isnull=True)
            .exclude(model_version="")
            .order_by("model_version")
            .values_list("model_version", flat=True)
            .distinct()[:200]
        )

    def params(self) -> dict:
        if not self.is_valid():
            return {}
        data = dict(self.cleaned_data)
        data["group"] = data["group"].pk if data.get("group") else None
        data["hardware"] = data["hardware"].slug if data.get("hardware") else None
        return {k: v for k, v in data.items() if v}


LOG_LEVELS = [("", _("all levels")), *LogLevel.choices]
