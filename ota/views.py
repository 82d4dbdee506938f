"""Rollout pages: releases, the deployment wizard, the live deployment page,
per-device update history (an htmx partial the device page can embed)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from devices.models import Device
from fleet import audit
from fleet.refusal import add_to_form
from fleet.roles import Role, role_required
from ota import display, services, stats
from ota.choices import DeploymentStatus
from ota.forms import DeploymentForm, ReleaseForm
from ota.models import Deployment, DeviceUpdate, Release

ACTIONS = {"pause", "resume", "approve", "abort", "rollback"}


@login_required
def index(request):
    deployments = Deployment.objects.select_related("release").order_by("-created_at")[:50]
    releases = Release.objects.prefetch_related("variants__model_version__model")[:50]
    return render(request, "ota/index.html", {"deployments": deployments, "releases": releases})


@login_required
def widget(request):
    live = Deployment.objects.filter(
        status__in=[DeploymentStatus.RUNNING, DeploymentStatus.PAUSED, DeploymentStatus.SCHEDULED]
    )
    shown = list(live.select_related("release")[:5])
    for deployment in shown:  # phase bars, as on the deployment page
        deployment.bars = services.phase_progress(deployment)
    paused = live.filter(status=DeploymentStatus.PAUSED).count()
    total = live.count()
    return render(
        request,
        "ota/widget.html",
        {
            "live": shown,
            "live_count": total,
            "paused_count": paused,
            "running_count": total - paused,
        },
    )


@role_required(Role.OPERATOR)
def release_create(request):
    initial = {}
    if request.GET.get("version", "").isdigit():
        initial["variant_0_version"] = request.GET["version"]
    if request.GET.get("allow_kpi_misses"):
        initial["allow_kpi_misses"] = True
    form = ReleaseForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            release = services.create_release(**form.service_kwargs(), actor=request.user)
        except services.OtaError as exc:
            add_to_form(form, exc, {"variants": "variant_0_version"})
        else:
            audit.note(request, "release.create", release)
            messages.success(request, _("Release created."))
            return redirect("ota:release-detail", release.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "ota/release_form.html", {"form": form}, status=status)


@login_required
def release_detail(request, pk: int):
    release = get_object_or_404(
        Release.objects.prefetch_related(
            "variants__model_version__model", "variants__hardware_profile"
        ),
        pk=pk,
    )
    return render(
        request,
        "ota/release_detail.html",
        {"release": release, "deployments": release.deployments.all()[:50]},
    )


@role_required(Role.OPERATOR)
def deployment_create(request):
    initial = {"release": request.GET.get("release")} if request.GET.get("release") else {}
    form = DeploymentForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            deployment = services.start_deployment(
                form.cleaned_data["release"],
                form.target(),
                actor=request.user,
                phases=form.cleaned_data["phases"],
                gates=form.gates(),
                scheduled_at=form.cleaned_data.get("scheduled_at"),
                install_window=form.window(),
            )
        except services.OtaError as exc:
            add_to_form(form, exc, {"target": "groups", "install_window": "window_start"})
        else:
            audit.note(request, "deployment.start", deployment, devices=deployment.target_count)
            return redirect("ota:deployment-detail", deployment.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "ota/deployment_form.html", {"form": form}, status=status)


@role_required(Role.VIEWER)
def deployment_preview(request):
    """htmx: devices per phase for the wizard's current target."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    form = DeploymentForm(request.POST)
    form.is_valid()
    preview, error = None, None
    if "phases" in form.cleaned_data:
        try:
            preview = services.preview(form.target(), form.cleaned_data["phases"])
            preview["rows"] = list(zip(preview["phases"], preview["cumulative"], strict=True))
        except services.OtaError as exc:
            error = exc.message
    else:
        error = "; ".join(form.errors.get("phases", [])) or _("Fill in the phases.")
    return render(request, "ota/_deployment_preview.html", {"preview": preview, "error": error})


def _live_context(request, deployment: Deployment) -> dict:
    """Everything the live partial shows, read together so its parts agree."""
    report = deployment.gate_report or {}
    updates = Paginator(deployment.updates.select_related("device").order_by("phase", "pk"), 50)
    return {
        "deployment": deployment,
        "progress": services.phase_progress(deployment),
        "counts": display.state_counts(services.state_counts(deployment)),
        "report": report,
        "verdict": display.VERDICTS.get(report.get("verdict"), ""),
        "gate_reasons": display.gate_reasons(report),
        "pause_reason": display.pause_text(deployment),
        "chart": stats.latency_series(deployment),
        "page": updates.get_page(request.GET.get("page")),
    }


@login_required
def deployment_detail(request, pk: int):
    deployment = get_object_or_404(
        Deployment.objects.select_related("release", "rollback_of"), pk=pk
    )
    return render(
        request,
        "ota/deployment_detail.html",
        {
            **_live_context(request, deployment),
            "target": display.target_rows(deployment.target),
            "rollbacks": deployment.rollbacks.all(),
        },
    )


@login_required
def deployment_live(request, pk: int):
    """htmx: the live partial of the deployment page, polled while it can change."""
    deployment = get_object_or_404(Deployment, pk=pk)
    return render(request, "ota/_deployment_live.html", _live_context(request, deployment))


@login_required
def deployment_chart(request, pk: int):
    deployment = get_object_or_404(Deployment, pk=pk)
    return JsonResponse(stats.latency_series(deployment))


@require_POST
@role_required(Role.OPERATOR)
def deployment_action(request, pk: int, name: str):
    deployment = get_object_or_404(Deployment, pk=pk)
    if name not in ACTIONS:
        return redirect("ota:deployment-detail", pk)
    audit.note(request, f"deployment.{name}", deployment)
    try:
        if name == "rollback":
            back = services.rollback(deployment, actor=request.user)
            messages.success(request, _("Rollback started."))
            return redirect("ota:deployment-detail", back.pk)
        done = {
            "pause": lambda: services.pause(
                deployment,
                request.POST.get("reason")
                or _("paused by %(u)s") % {"u": request.user.get_username()},
            ),
            "resume": lambda: services.resume(deployment),
            "approve": lambda: services.approve(deployment, actor=request.user),
            "abort": lambda: services.abort(deployment),
        }[name]()
    except services.OtaError as exc:
        messages.error(request, exc.message)
        return redirect("ota:deployment-detail", pk)
    if not done:
        messages.error(
            request,
            _("Nothing to do: the deployment is %(s)s.") % {"s": deployment.get_status_display()},
        )
    return redirect("ota:deployment-detail", pk)


@login_required
def device_updates(request, device_pk: int):
    """htmx partial: one device's update history (linked from the device page)."""
    device = get_object_or_404(Device, pk=device_pk)
    updates = (
        DeviceUpdate.objects.filter(device=device)
        .select_related("deployment__release")
        .order_by("-pk")[:50]
    )
    return render(request, "ota/_device_updates.html", {"device": device, "updates": updates})


@login_required
def job_benchmarks(request, job_id: int):
    """htmx partial of the job page: predicted vs measured on devices, per version ×
    hardware profile (`ota.benchmarks.comparison`)."""
    from compression.models import ModelVersion
    from ota import benchmarks

    versions = ModelVersion.objects.filter(candidates__job_id=job_id).distinct()
    return render(request, "ota/_job_benchmarks.html", {"rows": benchmarks.comparison(versions)})
