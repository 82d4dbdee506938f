"""Compression job workflows: validate and create, enqueue, cancel, requeue.

Functions are named by what they do; each states what it checks and its
precondition in its docstring (docs/architecture.md, naming). The heavy work
itself lives in `runner.py`.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from compression.choices import JOB_KPIS, DatasetPurpose, JobMode, JobStatus
from compression.engine.datasets import check_contract
from compression.engine.errors import DatasetError, EngineError
from compression.engine.recipes import needs_calibration, resolve
from compression.engine.search import SEARCH_RECIPES
from compression.models import CompressionJob, Dataset, ModelVersion
from fleet.celery import Queue
from fleet.refusal import Refusal, gather

log = logging.getLogger(__name__)

MIN_BUDGET_S, MAX_BUDGET_S = 10, 6 * 3600


class JobRejected(Refusal):
    """Job input we refuse (`fleet.refusal`), always a 400 about one `field`."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(code, message, field=field)


def default_search_recipes() -> list[str]:
    """What auto searches when no recipe is ticked: never a training recipe (those need the
    training queue and are added by the "training" option)."""
    from compression.engine.training import TRAINING_PASSES

    return [r for r in SEARCH_RECIPES if r not in TRAINING_PASSES]


def _check_recipes(mode: str, recipes: list[str] | None) -> list[str]:
    recipes = [str(r).strip() for r in (recipes or []) if str(r).strip()]
    if mode == JobMode.RECIPES and not recipes:
        raise JobRejected("no_recipes", _("Pick at least one recipe."), "recipes")
    for recipe in recipes:
        try:
            resolve(recipe)
        except EngineError:
            raise JobRejected(
                "unknown_recipe", _("Unknown recipe %(r)r.") % {"r": recipe}, "recipes"
            ) from None
    if len(set(recipes)) != len(recipes):
        raise JobRejected("duplicate_recipe", _("A recipe is listed twice."), "recipes")
    if "fp32" in recipes:
        raise JobRejected(
            "unknown_recipe", _("fp32 is the original; it is always measured."), "recipes"
        )
    return recipes


def _check_kpis(kpis: dict | None) -> dict:
    if kpis is None:
        return {}
    if not isinstance(kpis, dict):
        raise JobRejected("bad_kpi", _("KPIs must be an object of name: number."), "kpis")
    clean = {}
    for name, value in kpis.items():
        if value is None or value == "":
            continue
        if name not in JOB_KPIS:
            raise JobRejected(
                "bad_kpi",
                _("Unknown KPI %(k)r; known: %(known)s.")
                % {"k": name, "known": ", ".join(JOB_KPIS)},
                "kpis",
            )
        label, low, high = JOB_KPIS[name]
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if (
            isinstance(value, bool)
            or not math.isfinite(number)
            or number <= low
            or (high is not None and number > high)
        ):
            raise JobRejected(
                "bad_kpi",
                _("%(label)s: %(v)r is out of range.") % {"label": label, "v": value},
                "kpis",
            )
        clean[name] = number
    return clean


def _check_dataset(dataset: Dataset | None, source: ModelVersion, field: str) -> None:
    """The engine's dataset contract, the one the upload check applies too."""
    if dataset is None:
        return
    try:
        check_contract(dataset.arrays, source.inputs, name=dataset.name)
    except DatasetError as exc:
        raise JobRejected(
            "dataset_mismatch",
            _("Dataset %(d)s does not fit the model: %(e)s") % {"d": dataset.name, "e": exc},
            field,
        ) from None


def _int_option(options: dict, key: str, low: int, high: int) -> None:
    value = options.get(key)
    if value is None or value == "":
        options.pop(key, None)
        return
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = low - 1
    if isinstance(value, bool) or not low <= number <= high or str(number) != str(value).strip():
        raise JobRejected(
            "bad_option",
            _("%(k)s must be a whole number from %(a)s to %(b)s.")
            % {"k": key, "a": low, "b": high},
            key,
        )
    options[key] = number


def _check_options(options: dict | None, source: ModelVersion) -> dict:
    """Training settings: epochs, fine-tune epochs, the distillation student; the
    benchmark on devices."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise JobRejected("bad_option", _("Options must be an object."), "options")
    known = {"training", "epochs", "finetune_epochs", "distill", "device_benchmark"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise JobRejected(
            "bad_option", _("Unknown option(s): %(o)s.") % {"o": ", ".join(unknown)}, "options"
        )
    clean = dict(options)
    clean["training"] = bool(clean.get("training", False))
    _int_option(clean, "epochs", 1, 200)
    _int_option(clean, "finetune_epochs", 0, 200)
    distill = clean.get("distill") or {}
    if not isinstance(distill, dict) or set(distill) - {"ratio", "student_version"}:
        raise JobRejected("bad_option", _("distill takes ratio and student_version."), "distill")
    distill = {k: v for k, v in distill.items() if v not in (None, "")}
    if "ratio" in distill:
        try:
            ratio = float(distill["ratio"])
        except (TypeError, ValueError):
            ratio = math.nan
        if isinstance(distill["ratio"], bool) or not 0 < ratio < 1:
            raise JobRejected(
                "bad_option", _("The student ratio must be between 0 and 1."), "distill_ratio"
            )
        distill["ratio"] = ratio
    if "student_version" in distill:
        student = ModelVersion.objects.filter(
            pk=distill["student_version"] if str(distill["student_version"]).isdigit() else -1,
            model=source.model,
        ).first()
        if student is None or student.pk == source.pk:
            raise JobRejected(
                "bad_option",
                _("The student must be another version of this model."),
                "distill_student",
            )
        distill["student_version"] = student.pk
    clean["distill"] = distill
    benchmark = _check_device_benchmark(clean.pop("device_benchmark", None))
    if benchmark:
        clean["device_benchmark"] = benchmark
    return clean


def _check_mode(mode: str) -> str:
    if mode not in JobMode.values:
        raise JobRejected("bad_mode", _("Unknown mode %(m)r.") % {"m": mode}, "mode")
    return mode


def _check_budget(time_budget_s) -> int:
    try:
        budget = int(time_budget_s)
    except (TypeError, ValueError):
        budget = -1
    if not MIN_BUDGET_S <= budget <= MAX_BUDGET_S:
        raise JobRejected(
            "bad_budget",
            _("The time budget must be between %(a)s and %(b)s s.")
            % {"a": MIN_BUDGET_S, "b": MAX_BUDGET_S},
            "time_budget_s",
        )
    return budget


def _check_evaluation(evaluation: Dataset | None, source: ModelVersion, kpis: dict) -> None:
    if evaluation is None and ({"min_fidelity", "max_accuracy_drop"} & set(kpis)):
        raise JobRejected(
            "no_evaluation",
            _(
                "Fidelity and accuracy KPIs need an evaluation "
                "dataset; without one the job is latency-only."
            ),
            "evaluation",
        )
    _check_dataset(evaluation, source, "evaluation")
    if "max_accuracy_drop" in kpis and not evaluation.has_labels:  # evaluation is set here
        raise JobRejected(
            "no_labels", _("An accuracy KPI needs an evaluation dataset with labels."), "kpis"
        )


def _check_calibration(calibration: Dataset | None, source: ModelVersion) -> None:
    _check_dataset(calibration, source, "calibration")
    if calibration is not None and calibration.purpose != DatasetPurpose.CALIBRATION:
        raise JobRejected(
            "dataset_mismatch",
            _("%(d)s is not a calibration dataset.") % {"d": calibration.name},
            "calibration",
        )


def _check_device_benchmark(value) -> dict | None:
    """The last step on devices (`compression.device_choice`)."""
    from compression import device_choice

    def reject(code: str, message: str):
        raise JobRejected(code, message, "device_benchmark")

    return device_choice.clean_option(value, reject)


def needs_training(recipes: list[str]) -> bool:
    """True when a recipe trains (distill, qat): the job goes to the training queue."""
    from compression.engine.training import TRAINING_PASSES

    return any(name in TRAINING_PASSES for r in recipes for name in resolve(r))


def create_job(
    source: ModelVersion,
    *,
    mode: str = JobMode.AUTO,
    recipes: list[str] | None = None,
    kpis: dict | None = None,
    hardware_profile=None,
    calibration: Dataset | None = None,
    evaluation: Dataset | None = None,
    time_budget_s: int = 600,
    actor=None,
    enqueue: bool = True,
    options: dict | None = None,
) -> CompressionJob:
    """Validate a job request, store it queued and enqueue it once the row is committed.

    `enqueue=False` is for callers that run the job themselves (`seed_demo`).
    """
    if not source.is_ready:
        raise JobRejected(
            "source_not_ready",
            _("Version %(v)s is %(s)s; only validated versions can be compressed.")
            % {"v": source, "s": source.get_status_display()},
            "source",
        )
    # independent inputs: every mistake is reported at once (fleet.refusal.gather); the
    # datasets are judged against the KPIs as asked (their names), valid or not
    asked_kpis = (
        {k: v for k, v in kpis.items() if v not in (None, "")} if isinstance(kpis, dict) else {}
    )
    _mode, recipes, kpis, options, budget, _evaluation, _calibration = gather(
        lambda: _check_mode(mode),
        lambda: _check_recipes(mode, recipes),
        lambda: _check_kpis(kpis),
        lambda: _check_options(options, source),
        lambda: _check_budget(time_budget_s),
        lambda: _check_evaluation(evaluation, source, asked_kpis),
        lambda: _check_calibration(calibration, source),
    )
    if mode == JobMode.AUTO and options.get("training"):
        # auto with the training extra: the default search plus the training recipes
        base = [r for r in (recipes or default_search_recipes()) if r != "qat"]
        recipes = [*base, "qat"]
    effective = recipes or default_search_recipes()
    if calibration is None and any(needs_calibration(r) for r in effective):
        if mode == JobMode.RECIPES:
            raise JobRejected(
                "no_calibration", _("These recipes need a calibration dataset."), "calibration"
            )
        # auto without calibration data: leave out what would need it
        recipes = [r for r in effective if not needs_calibration(r)]
    with transaction.atomic():
        job = CompressionJob.objects.create(
            source=source,
            mode=mode,
            recipes=recipes,
            kpis=kpis,
            hardware_profile=hardware_profile,
            calibration=calibration,
            evaluation=evaluation,
            time_budget_s=budget,
            created_by=actor,
            options=options,
        )
        if enqueue:
            transaction.on_commit(lambda: enqueue_job(job.pk))
    return job


def create_job_with_uploads(source: ModelVersion, *, uploads: dict, actor=None, **request):
    """`create_job` with datasets uploaded in the same request (`uploads`: "calibration"
    or "evaluation" → uploaded file, taking the place of a chosen dataset).

    They are registered first, because the job's checks read them, and removed again
    when an upload or the job is refused: a refused request leaves no dataset behind.
    """
    from compression import services

    registered = []
    try:
        for field, upload in uploads.items():
            dataset = services.register_dataset(
                upload.temporary_file_path(),
                name=upload.name.rsplit(".", 1)[0],
                purpose=DatasetPurpose(field),
                original_filename=upload.name,
                model=source.model,
                actor=actor,
            )
            registered.append(dataset)
            request[field] = dataset
        return create_job(source, actor=actor, **request)
    except Exception:
        for dataset in registered:
            services.discard_dataset(dataset)
        raise


def enqueue_job(job_id: int) -> bool:
    """Send the job's message. Precondition: the job row is committed.

    A broker that is down does not lose the job: the row stays queued with no
    `enqueued_at`, and `requeue_stale_jobs` sends it again later (docs/reliability.md C5).
    """
    from compression.tasks import run_compression_job

    job = CompressionJob.objects.filter(pk=job_id).only("recipes").first()
    queue = Queue.TRAINING if job is not None and needs_training(job.recipes) else Queue.COMPRESSION
    try:
        run_compression_job.apply_async((job_id,), queue=queue)
    except Exception as exc:  # kombu/redis raise many types; none may lose the row
        log.warning(
            "job %s not enqueued (%s: %s); the sweeper retries", job_id, type(exc).__name__, exc
        )
        return False
    CompressionJob.objects.filter(pk=job_id).update(enqueued_at=timezone.now())
    return True


def cancel_job(job: CompressionJob) -> bool:
    """Cancel a queued job or ask a running one to stop. False when it is already over."""
    return job.request_cancel()


def requeue_stale_jobs(*, now=None) -> list[int]:
    """Re-send jobs whose message was lost: never enqueued, or owned by a silent worker."""
    now = now or timezone.now()
    never_sent = CompressionJob.objects.filter(
        status=JobStatus.QUEUED,
        enqueued_at__isnull=True,
        created_at__lt=now - timedelta(seconds=30),
    )
    silent = CompressionJob.objects.filter(
        status=JobStatus.RUNNING,
        heartbeat_at__lt=now - timedelta(seconds=settings.EDGEFLEET_JOB_STALE_S),
    )
    ids = sorted(
        set(never_sent.values_list("pk", flat=True)) | set(silent.values_list("pk", flat=True))
    )
    return [pk for pk in ids if enqueue_job(pk)]
