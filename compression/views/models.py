"""Server-rendered registry pages."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _

from compression import services, uploads
from compression.api.views.models import artifact_response
from compression.choices import VersionStatus
from compression.forms import DatasetUploadForm, ModelUploadForm, VersionUploadForm
from compression.models import Candidate, CompressionJob, Dataset, MLModel, ModelVersion
from fleet import audit
from fleet.roles import Role, role_required


@login_required
def model_list(request):
    models = MLModel.objects.annotate(n_versions=Count("versions")).order_by("name")
    page = Paginator(models, 50).get_page(request.GET.get("page"))
    return render(request, "compression/model_list.html", {"page": page})


@role_required(Role.OPERATOR)
def model_upload(request):
    form = ModelUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            # storage write first, outside any transaction; validation on a worker
            staged = uploads.stage_model_upload(
                data["file"].temporary_file_path(), data["file"].name
            )
        except services.UploadRejected as exc:
            form.add_error("file", exc.message)
            audit.note(request, "model.upload", None, refused=exc.code)
        else:
            try:
                with transaction.atomic():  # the model and its version row, nothing slow
                    model = services.create_model(
                        name=data["name"],
                        task=data["task"],
                        description=data["description"],
                        owner=request.user,
                    )
                    result = uploads.queue_version(
                        model, staged, original_filename=data["file"].name, actor=request.user
                    )
            finally:
                uploads.release_staged(staged)
            audit.note(request, "model.upload", result.version)
            messages.success(
                request, _("Model %(name)s uploaded; it is being validated.") % {"name": model.name}
            )
            return redirect("compression:model-detail", pk=model.pk)
    return render(
        request,
        "compression/model_upload.html",
        {"form": form},
        status=(400 if request.method == "POST" else 200),
    )


@login_required
def model_detail(request, pk: int):
    model = get_object_or_404(MLModel.objects.select_related("owner"), pk=pk)
    versions = list(model.versions.select_related("parent", "created_by").order_by("number"))
    children: dict[int | None, list[ModelVersion]] = {}
    for version in versions:
        children.setdefault(version.parent_id, []).append(version)
    tree = _flatten_tree(children, None, 0)
    candidates = {
        c.version_id: c
        for c in Candidate.objects.filter(version__in=versions)
        .exclude(recipe="fp32")
        .order_by("pk")
    }  # fp32 is the upload itself
    for version in versions:
        version.candidate = candidates.get(version.pk)
    selected = _best_version(versions)
    if (number := request.GET.get("v")) and number.isdigit():
        selected = next((v for v in versions if v.number == int(number)), selected)
    return render(
        request,
        "compression/model_detail.html",
        {
            "model": model,
            "versions": versions,
            "tree": tree,
            "selected": selected,
            "metrics": _flat_metrics(selected.metrics if selected else None),
            "version_form": VersionUploadForm(),
            "datasets": model.datasets.all()[:20],
            "dataset_form": DatasetUploadForm(),
            "jobs": CompressionJob.objects.filter(source__model=model).select_related("source")[
                :10
            ],
        },
    )


def _best_version(versions: list[ModelVersion]) -> ModelVersion | None:
    """What the page opens on: the newest ready upload or variant a job chose, else the
    newest ready variant that meets its KPIs -- never a failed or KPI-missing variant
    when something better exists."""
    ready = [v for v in versions if v.is_ready]
    for keep in (
        lambda v: v.candidate is None or v.candidate.chosen,
        lambda v: v.candidate.meets_kpis,
        lambda v: True,
    ):
        if found := [v for v in ready if keep(v)]:
            return found[-1]
    return versions[-1] if versions else None


def _flat_metrics(metrics, prefix: str = "") -> list[tuple[str, str]]:
    """{"latency_ms": {"p50": 1.23456}} -> [("latency_ms.p50", "1.235")]: a readable table."""
    rows: list[tuple[str, str]] = []
    for key, value in (metrics or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flat_metrics(value, f"{name}."))
        elif isinstance(value, list):
            if value and all(isinstance(x, dict) for x in value):
                continue  # per-epoch training history: the job page charts it
            rows.append((name, ", ".join(str(x) for x in value[:12])))
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        else:
            rows.append((name, str(value)))
    return rows


def _flatten_tree(children, parent_id, depth) -> list[tuple[int, ModelVersion]]:
    rows = []
    for version in children.get(parent_id, []):
        rows.append((depth, version))
        if version.pk != parent_id:
            rows.extend(_flatten_tree(children, version.pk, depth + 1))
    return rows


@role_required(Role.OPERATOR)
def version_upload(request, pk: int):
    model = get_object_or_404(MLModel, pk=pk)
    form = VersionUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            result = uploads.accept_upload(
                model,
                upload.temporary_file_path(),
                original_filename=upload.name,
                actor=request.user,
                parent=model.latest_version(),
                notes=form.cleaned_data["notes"],
            )
        except services.UploadRejected as exc:
            messages.error(request, exc.message)
            audit.note(request, "version.upload", model, refused=exc.code)
        else:
            audit.note(request, "version.upload", result.version)
            messages.success(
                request,
                _("Version %(n)s stored; it is being validated.") % {"n": result.version.number},
            )
    return redirect("compression:model-detail", pk=model.pk)


@role_required(Role.OPERATOR)
def dataset_upload(request, pk: int):
    model = get_object_or_404(MLModel, pk=pk)
    form = DatasetUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            dataset = services.register_dataset(
                data["file"].temporary_file_path(),
                name=data["name"],
                purpose=data["purpose"],
                original_filename=data["file"].name,
                model=model,
                actor=request.user,
            )
        except services.UploadRejected as exc:
            messages.error(request, exc.message)
        else:
            audit.note(request, "dataset.upload", dataset)
            messages.success(request, _("Dataset %(n)s stored.") % {"n": dataset.name})
    return redirect("compression:model-detail", pk=model.pk)


@login_required
def dataset_example(request, pk: int):
    """A small valid .npz for the latest version's inputs (the dataset format, by example)."""
    from compression.engine.datasets import example_npz

    model = get_object_or_404(MLModel, pk=pk)
    version = model.latest_version()
    if version is None:
        raise Http404(_("This model has no version yet."))
    response = HttpResponse(example_npz(version.inputs), content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{model.pk}-example.npz"'
    return response


@login_required
def version_download(request, pk: int, number: int):
    version = get_object_or_404(
        ModelVersion.objects.select_related("model"),
        model_id=pk,
        number=number,
        status=VersionStatus.READY,
    )
    return artifact_response(version.artifact, version.download_name, version.sha256)


@login_required
def dataset_download(request, pk: int):
    dataset = get_object_or_404(Dataset, pk=pk)
    return artifact_response(dataset.artifact, f"{dataset.name}.npz", dataset.sha256)


@login_required
def widget(request):
    """Home-page card: registry counts and the latest versions."""
    latest = ModelVersion.objects.select_related("model").order_by("-created_at")[:5]
    return render(
        request,
        "compression/widget.html",
        {
            "model_count": MLModel.objects.count(),
            "version_count": ModelVersion.objects.count(),
            "latest": latest,
            "recent_jobs": CompressionJob.objects.select_related("source__model")[:5],
        },
    )
