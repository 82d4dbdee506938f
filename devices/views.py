"""Fleet pages: overview, device list, device detail (charts, logs), admin actions."""

from __future__ import annotations

from django.apps import apps
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Sum
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from devices import metrics, overview, services
from devices.choices import AlertState, DeviceStatus
from devices.forms import (
    LOG_LEVELS,
    DeviceEditForm,
    DeviceFilterForm,
    EnrollmentTokenForm,
    GroupForm,
    split_tags,
)
from devices.models import Alert, Device, DeviceGroup, EnrollmentToken, LogLine
from devices.query import filter_by_params
from fleet import audit
from fleet.roles import Role, role_required

WINDOWS = [
    (15, gettext_lazy("15 min")),
    (60, gettext_lazy("1 hour")),
    (360, gettext_lazy("6 hours")),
    (1440, gettext_lazy("24 hours")),
    (10080, gettext_lazy("7 days")),
]


def _counts(field: str, limit: int = 12) -> list[dict]:
    return list(Device.objects.values(field).annotate(n=Count("pk")).order_by("-n")[:limit])


def overview_context() -> dict:
    by_status = {row["status"]: row["n"] for row in _counts("status")}
    return {
        "total": sum(by_status.values()),
        "by_status": [(s, by_status.get(s.value, 0)) for s in DeviceStatus],
        "online": by_status.get(DeviceStatus.ONLINE, 0),
        "by_group": _counts("group__name"),
        "by_hardware": _counts("hardware_profile__name"),
        "by_model": _counts("model_version"),
        "alerts": Alert.objects.filter(state=AlertState.OPEN).select_related("device")[:10],
        "open_alerts": Alert.objects.filter(state=AlertState.OPEN).count(),
    }


@login_required
def index(request):
    return render(request, "devices/index.html", overview_context())


@login_required
def widget(request):
    return render(request, "devices/widget.html", overview_context())


@login_required
def charts_widget(request):
    """Home page card: fleet health over time, devices by installed version and profile."""
    return render(request, "devices/charts_widget.html", {"charts": overview.charts()})


@login_required
def device_list(request):
    form = DeviceFilterForm(request.GET or None)
    devices = filter_by_params(
        Device.objects.select_related("group", "hardware_profile").order_by("uid"),
        form.params() if request.GET else {},
    )
    page = Paginator(devices, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request, "devices/list.html", {"form": form, "page": page, "query": query.urlencode()}
    )


def _update_history(device: Device):
    """The device's update rows when the rollout app is installed (it depends on this one,
    not the other way round), else None."""
    if not apps.is_installed("ota"):
        return None
    from ota.models import DeviceUpdate

    return (
        DeviceUpdate.objects.filter(device=device)
        .select_related("deployment__release")
        .order_by("-pk")[:50]
    )


def _live_context(device: Device) -> dict:
    """What the device page's live partial shows, read in one request so its parts agree."""
    return {
        "device": device,
        "tags": device.tags.all(),
        "alerts": device.alerts.order_by("-opened_at")[:10],
        "dropped": device.drop_reports.values("kind").annotate(total=Sum("count")),
        "models": (device.inventory or {}).get("models") or {},
        "updates": _update_history(device),
        "signals": metrics.field_signals(device),
    }


def _device(uid: str) -> Device:
    return get_object_or_404(
        Device.objects.select_related("group", "hardware_profile", "enrolled_with"), uid=uid
    )


@login_required
def device_detail(request, uid: str):
    device = _device(uid)
    edit_form = DeviceEditForm(
        initial={"group": device.group, "tags": " ".join(t.name for t in device.tags.all())}
    )
    return render(
        request,
        "devices/detail.html",
        {
            **_live_context(device),
            "edit_form": edit_form,
            "windows": WINDOWS,
            "levels": LOG_LEVELS,
            "chart_labels": {
                "p50": _("p50 latency (ms)"),
                "p95": _("p95 latency (ms)"),
                "throughput": _("throughput"),
                "memory": _("max memory (MB)"),
                "cpu": _("CPU %"),
                "temperature": _("max temperature (°C)"),
                "battery": _("min battery %"),
            },
        },
    )


@login_required
def device_live(request, uid: str):
    """htmx: the live partial of the device page, polled while the device is enrolled."""
    return render(request, "devices/_device_live.html", _live_context(_device(uid)))


@login_required
def device_chart(request, uid: str):
    device = get_object_or_404(Device, uid=uid)
    try:
        minutes = max(1, min(int(request.GET.get("minutes", 60)), 10080))
    except ValueError:
        minutes = 60
    return JsonResponse(metrics.series(device, minutes))


@login_required
def device_logs(request, uid: str):
    device = get_object_or_404(Device, uid=uid)
    lines = LogLine.objects.filter(device=device).order_by("-ts", "-seq")
    level = request.GET.get("level")
    if level:
        lines = lines.filter(level=level)
    return render(request, "devices/_device_logs.html", {"lines": lines[:200]})


@require_POST
@role_required(Role.ADMIN)
def device_edit(request, uid: str):
    device = get_object_or_404(Device, uid=uid)
    form = DeviceEditForm(request.POST)
    if form.is_valid():
        changes = {
            "tags": split_tags(form.cleaned_data["tags"] or ""),
            "group": form.cleaned_data["group"],
        }
        try:
            services.update_device(device, changes)
        except services.DeviceError as exc:
            messages.error(request, exc.message)
            return redirect("devices:device-detail", uid=uid)
        audit.note(request, "device.update", device)
        messages.success(request, _("Device updated."))
    else:
        messages.error(request, _("Could not update the device."))
    return redirect("devices:device-detail", uid=uid)


@require_POST
@role_required(Role.ADMIN)
def device_revoke(request, uid: str):
    device = get_object_or_404(Device, uid=uid)
    services.revoke_device(device)
    audit.note(request, "device.revoke", device)
    messages.success(
        request, _("Device %(uid)s revoked: its token no longer works.") % {"uid": device.uid}
    )
    return redirect("devices:device-detail", uid=uid)


@role_required(Role.ADMIN)
def enrollment(request):
    form = EnrollmentTokenForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            token, value = services.create_enrollment_token(
                actor=request.user, **form.service_kwargs()
            )
        except services.DeviceError as exc:
            form.add_error("tags", exc.message)
        else:
            audit.note(request, "enrollment_token.create", token)
            created = {"token": token, "value": value}
            form = EnrollmentTokenForm()
    tokens = EnrollmentToken.objects.select_related("group", "created_by").prefetch_related("tags")[
        :100
    ]
    return render(
        request,
        "devices/enrollment.html",
        {
            "form": form,
            "tokens": tokens,
            "created": created,
            "group_form": GroupForm(),
            "groups": DeviceGroup.objects.annotate(n=Count("devices")),
            "now": timezone.now(),
        },
    )


@require_POST
@role_required(Role.ADMIN)
def enrollment_revoke(request, pk: int):
    token = get_object_or_404(EnrollmentToken, pk=pk)
    token.revoke()
    audit.note(request, "enrollment_token.revoke", token)
    messages.success(request, _("Enrollment token revoked."))
    return redirect("devices:enrollment")


@require_POST
@role_required(Role.ADMIN)
def group_create(request):
    form = GroupForm(request.POST)
    if form.is_valid():
        audit.note(request, "group.create", form.save())
        messages.success(request, _("Group created."))
    else:
        messages.error(
            request,
            _("Could not create the group: %(e)s")
            % {"e": "; ".join(e for errs in form.errors.values() for e in errs)},
        )
    return redirect("devices:enrollment")
