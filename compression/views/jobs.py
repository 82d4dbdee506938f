"""Server-rendered job pages: start a job, watch it live, read the results."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from compression import device_choice, jobs, services
from compression.forms import JobForm
from compression.models import CompressionJob, ModelVersion
from fleet import audit, health
from fleet.celery import Queue
from fleet.refusal import add_to_form
from fleet.roles import Role, role_required


def _job_queryset():
    return CompressionJob.objects.select_related(
        "source__model", "hardware_profile", "calibration", "evaluation", "created_by"
    )


@login_required
def job_list(request):
    page = Paginator(_job_queryset(), 50).get_page(request.GET.get("page"))
    depths = {q.value: health.queue_depth(q.value) for q in Queue}
    return render(request, "compression/job_list.html", {"page": page, "queue_depths": depths})


@role_required(Role.OPERATOR)
def job_create(request, version_pk: int):
    version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=version_pk)
    form = JobForm(request.POST or None, request.FILES or None, model=version.model)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            job = jobs.create_job_with_uploads(
                version,
                uploads=form.uploads(),
                mode=data["mode"],
                recipes=data["recipes"],
                kpis=form.kpis(),
                hardware_profile=data["hardware_profile"],
                calibration=data["calibration"],
                evaluation=data["evaluation"],
                time_budget_s=data["time_budget_s"],
                actor=request.user,
                options=form.options(),
            )
        except services.UploadRejected as exc:
            add_to_form(form, exc)
        except jobs.JobRejected as exc:
            add_to_form(form, exc)
            audit.note(request, "job.create", version, refused=exc.code)
        else:
            audit.note(request, "job.create", job)
            messages.success(request, _("Compression job %(id)s queued.") % {"id": job.pk})
            return redirect("compression:job-detail", pk=job.pk)
    status = 400 if request.method == "POST" else 200
    return render(
        request, "compression/job_form.html", {"form": form, "version": version}, status=status
    )


def _results(job: CompressionJob) -> list:
    return list(job.candidates.select_related("version__model").order_by("pk"))


@login_required
def job_detail(request, pk: int):
    job = get_object_or_404(_job_queryset(), pk=pk)
    candidates = _results(job)
    return render(
        request,
        "compression/job_detail.html",
        {
            "job": job,
            "candidates": candidates,
            "device_progress": device_choice.progress(job) if job.device_choice else None,
            # a curve needs epochs: a pass that trained nothing draws an empty chart
            "has_training": any(
                any(row.get("epoch", 0) > 0 for row in curve.get("history") or [])
                for c in candidates
                for curve in (c.metrics or {}).get("training") or []
            ),
        },
    )


@login_required
def job_live(request, pk: int):
    """The live part of the job page, polled by htmx while the job is queued or running."""
    job = get_object_or_404(_job_queryset(), pk=pk)
    response = render(request, "compression/_job_live.html", {"job": job})
    if not job.is_live and request.headers.get("HX-Request"):
        response["HX-Refresh"] = "true"  # over: reload once to show results and chart
    return response


@login_required
def job_chart(request, pk: int):
    """Points of the Pareto chart: latency vs accuracy (or fidelity), size as radius."""
    job = get_object_or_404(CompressionJob, pk=pk)
    candidates = _results(job)
    points = []
    for c in candidates:
        m = c.metrics or {}
        quality = m.get("accuracy") if m.get("accuracy") is not None else m.get("fidelity")
        if "p50_ms" not in m or quality is None:
            continue  # not evaluated: no place on the quality axis (it stays in the table)
        points.append(
            {
                "recipe": c.recipe,
                "p50_ms": m["p50_ms"],
                "quality": quality,
                "size_mb": m.get("size_mb"),
                "pareto": c.on_pareto,
                "chosen": c.chosen,
                "meets_kpis": c.meets_kpis,
            }
        )
    has_accuracy = any((c.metrics or {}).get("accuracy") is not None for c in candidates)
    training = [
        {"recipe": c.recipe, **curve}
        for c in candidates
        for curve in (c.metrics or {}).get("training", [])
    ]
    return JsonResponse(
        {
            "job": job.pk,
            "points": points,
            "training": training,
            "quality": "accuracy" if has_accuracy else "fidelity",
            "max_latency_ms": job.kpis.get("max_latency_ms"),
        }
    )


@require_POST
@role_required(Role.OPERATOR)
def job_cancel(request, pk: int):
    job = get_object_or_404(CompressionJob, pk=pk)
    accepted = jobs.cancel_job(job)
    audit.note(request, "job.cancel", job, accepted=accepted)
    if accepted:
        messages.success(request, _("Cancel requested."))
    else:
        messages.error(request, _("The job has already ended."))
    if request.headers.get("HX-Request"):
        return HttpResponse(headers={"HX-Refresh": "true"})
    return redirect("compression:job-detail", pk=job.pk)
