"""Run one compression job: the state machine's single owner.

Called by the Celery task with a job id. Everything slow (the engine search,
sandboxed validation of each variant) runs outside any transaction; results
are written idempotently so a redelivered message (`acks_late`, a SIGKILLed
worker child) finishes the job exactly once:

- the claim is a conditional UPDATE (`CompressionJob.mark_running`);
- the work directory is per job and wiped before each attempt and after;
- variants are stored content-addressed and registered once per
  (job, recipe): a second attempt finds the version the first one created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from datetime import timedelta
from pathlib import Path

import onnxruntime as ort
import psutil
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import DatabaseError, InterfaceError, OperationalError
from django.utils import timezone
from django.utils.translation import gettext as _

from compression import device_choice, services, training_relay
from compression.choices import JobStatus
from compression.engine import search
from compression.engine.benchmark import host_info
from compression.engine.errors import Cancelled, EngineError
from compression.engine.recipes import resolve
from compression.models import Candidate, CompressionJob, ModelVersion
from compression.progress import (
    ATTEMPT,
    CRASHED,
    HARD_TIMEOUT,
    MEASURING,
    REGISTERING,
    SOFT_TIMEOUT,
    ProgressReporter,
)
from devices import services as device_services

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (OperationalError, InterfaceError)
SEARCH_SHARE = 0.9  # progress bar: search 0–90 %, registering variants 90–100 %


def job_dir(job_id: int) -> Path:
    return Path(settings.EDGEFLEET_JOB_DIR) / f"job-{job_id}"


def run_job(job_id: int) -> str:
    """Claim and run a job; return what happened (for logs and tests)."""
    job = (
        CompressionJob.objects.filter(pk=job_id)
        .select_related(
            "source__model", "hardware_profile", "calibration", "evaluation", "created_by"
        )
        .first()
    )
    if job is None:
        return "gone"
    if _give_up_if_exhausted(job):
        return "gave-up"
    if not job.mark_running():
        log.info(
            "job %s not claimed (status %s, owner %s/%s)",
            job.pk,
            job.status,
            job.worker_host,
            job.worker_pid,
        )
        return "not-claimed"
    workdir = job_dir(job.pk)
    shutil.rmtree(workdir, ignore_errors=True)  # leftovers of a killed attempt
    workdir.mkdir(parents=True)
    reporter = ProgressReporter(job, scale=(0.0, SEARCH_SHARE))
    reporter.note(ATTEMPT % {"n": job.attempts, "h": job.worker_host})
    try:
        report = _search(job, workdir, reporter)
        reporter.scale = (SEARCH_SHARE, 1.0)
        _store_candidates(job, report, reporter)
        if job.mark_succeeded(_summary(job, report)):
            _ask_devices(job)
        return "succeeded"
    except Cancelled:
        job.mark_cancelled()
        return "cancelled"
    except SoftTimeLimitExceeded:
        _kill_sandboxes()
        job.mark_failed(SOFT_TIMEOUT % {"s": _soft_limit()})
        return "timeout"
    except TRANSIENT_ERRORS:
        _release(job)
        raise  # the task retries these with backoff
    except (EngineError, services.UploadRejected) as exc:
        job.mark_failed(f"{type(exc).__name__}: {exc}")
        return "failed"
    except Exception as exc:
        log.exception("job %s crashed", job.pk)
        job.mark_failed(f"internal error: {type(exc).__name__}: {exc}")
        return "failed"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _ask_devices(job: CompressionJob) -> None:
    """The last step, after success: nothing here may fail the job (the beat asks
    again while the job has not asked: `device_choice.sweep`)."""
    try:
        device_choice.request_benchmarks(job)
    except Exception:
        log.exception("job %s: the benchmark on devices was not requested", job.pk)


def _kill_sandboxes() -> None:
    """Stop the engine's isolated children a time limit interrupted mid-measurement.

    The soft limit fires inside the engine's wait on its sandbox, which then
    leaves that child (its own session) running to its own timeout; on a busy
    worker it would steal the CPU of the next job.
    """
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


def _soft_limit():
    from celery import current_task

    limits = getattr(getattr(current_task, "request", None), "timelimit", None) or (None, None)
    return limits[1] or settings.CELERY_TASK_SOFT_TIME_LIMIT


def _give_up_if_exhausted(job: CompressionJob) -> bool:
    """Fail, instead of running again, a job whose worker died under it too often (C3)
    or that already ran past the hard time limit (the pool killed it; C4)."""
    if job.status != JobStatus.RUNNING or not job._claimant_gone():
        return False
    hard_limit = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
    if job.started_at is not None and timezone.now() - job.started_at > hard_limit:
        error = HARD_TIMEOUT % {"s": settings.CELERY_TASK_TIME_LIMIT}
    elif job.attempts >= settings.EDGEFLEET_JOB_MAX_ATTEMPTS:
        error = CRASHED % {"n": job.attempts, "h": job.worker_host}
    else:
        return False
    if job.mark_failed(error):
        shutil.rmtree(job_dir(job.pk), ignore_errors=True)
    return True


def _release(job: CompressionJob) -> None:
    """Hand a job back to the queue before a transient-error retry (best effort)."""
    try:
        CompressionJob.objects.filter(
            pk=job.pk, status=JobStatus.RUNNING, worker_pid=os.getpid()
        ).update(status=JobStatus.QUEUED)
    except DatabaseError:
        log.warning("job %s could not be released; the stale-job sweeper will", job.pk)


def _fetch(name: str, dst: Path) -> Path:
    with default_storage.open(name, "rb") as src, open(dst, "wb") as out:
        shutil.copyfileobj(src, out, 1024 * 1024)
    return dst


def _target(job: CompressionJob) -> tuple[int, str]:
    """Threads and provider of the hardware profile, as far as this server can run them."""
    profile = job.hardware_profile
    threads = min(profile.intra_op_threads if profile else 1, os.cpu_count() or 1)
    provider = profile.execution_provider if profile else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        provider = "CPUExecutionProvider"
    return max(1, threads), provider


def _search(job: CompressionJob, workdir: Path, reporter: ProgressReporter) -> dict:
    source = _fetch(job.source.artifact, workdir / "source.onnx")
    evaluation = (
        _fetch(job.evaluation.artifact, workdir / "evaluation.npz") if job.evaluation else None
    )  # none: latency-only, generated inputs
    calibration = (
        _fetch(job.calibration.artifact, workdir / "calibration.npz") if job.calibration else None
    )
    threads, provider = _target(job)
    reporter.note(MEASURING % {"t": threads, "p": provider})
    kpis = {**job.kpis, "threads": threads, "provider": provider}
    overrides = _overrides(job, workdir)
    with training_relay.relay(job, workdir, reporter):
        return search.auto(
            source,
            calibration_path=calibration,
            evaluation_path=evaluation,
            kpis=kpis,
            threads=threads,
            budget_s=job.time_budget_s,
            out_dir=workdir / "out",
            progress=_with_test_hook(job, reporter),
            should_stop=reporter.should_stop,
            # nothing picked: the engine's default plan, quantizer grid included (as the CLI's auto)
            recipes=job.recipes or None,
            overrides=overrides,
        )


def _overrides(job: CompressionJob, workdir: Path) -> dict[str, dict]:
    """Per-recipe options of the training recipes, from the job's options."""
    options = job.options or {}
    out: dict[str, dict] = {}
    for recipe in job.recipes or []:
        names = resolve(recipe)
        opts: dict = {}
        if "distill" in names:
            distill = options.get("distill") or {}
            if distill.get("ratio"):
                opts["distill.ratio"] = distill["ratio"]
            if distill.get("student_version"):
                student = ModelVersion.objects.get(pk=distill["student_version"])
                opts["distill.student_path"] = str(
                    _fetch(student.artifact, workdir / "student.onnx")
                )
        for name in names:
            if name in ("distill", "qat") and options.get("epochs"):
                opts[f"{name}.epochs"] = options["epochs"]
            if name.startswith("prune-") and options.get("finetune_epochs") is not None:
                opts[f"{name}.finetune_epochs"] = options["finetune_epochs"]
        if opts:
            out[recipe] = opts
    return out


def _with_test_hook(job: CompressionJob, reporter: ProgressReporter):
    """Tests make the engine call crash or crawl through EDGEFLEET_JOB_TEST_HOOK.

    `crash[@job]` SIGKILLs this process mid-search (a segfault in native code),
    `slow:<s>[@job]` sleeps at every step, `fail[@job]` raises an engine error.
    """
    hook, _sep, only = (settings.EDGEFLEET_JOB_TEST_HOOK or "").partition("@")
    if not hook or (only and only != str(job.pk)):
        return reporter

    def progress(fraction: float, step: str) -> None:
        reporter(fraction, step)
        if hook == "crash" and fraction > 0:
            reporter.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        elif hook == "fail" and fraction > 0:
            raise EngineError("test hook: the engine failed")
        elif hook.startswith("slow:"):
            time.sleep(float(hook.split(":", 1)[1]))

    return progress


def _store_candidates(job: CompressionJob, report: dict, reporter: ProgressReporter) -> None:
    results = report["candidates"]
    for i, cand in enumerate(results):
        row, _created = Candidate.objects.update_or_create(
            job=job,
            recipe=cand["recipe"],
            defaults={
                "metrics": {
                    **(cand.get("metrics") or {}),
                    **training_relay.curves(cand.get("steps") or []),
                },
                "error": cand.get("error") or "",
                "violations": cand.get("violations") or [],
                "meets_kpis": bool(cand.get("meets_kpis")),
                "on_pareto": bool(cand.get("pareto")),
                "chosen": cand["recipe"] == report.get("chosen"),
            },
        )
        version = None
        if cand["recipe"] == "fp32":
            version = job.source
            Candidate.objects.filter(pk=row.pk).update(version=version)
        elif cand.get("path") and row.version_id is not None:  # an earlier attempt's
            version = row.version
        elif cand.get("path") and (job.recipes or cand.get("meets_kpis") or cand.get("pareto")):
            # the default search builds many grid points: only those worth keeping become
            # versions (asked for explicitly, meeting the KPIs, or on the Pareto front)
            reporter(i / max(1, len(results)), REGISTERING % {"r": cand["recipe"]})
            version = _register_variant(job, cand)
            Candidate.objects.filter(pk=row.pk).update(version=version)
        if version is not None:  # what latency alerts and rollout gates compare devices with
            p95 = (cand.get("metrics") or {}).get("p95_ms")
            device_services.record_latency_estimate(version.device_label, job.hardware_profile, p95)


def _register_variant(job: CompressionJob, cand: dict) -> ModelVersion:
    source = job.source
    existing = ModelVersion.objects.filter(
        model=source.model, recipe__job=job.pk, recipe__name=cand["recipe"]
    ).first()
    if existing is not None:  # registered by an earlier attempt of this job
        return existing
    steps = [
        {**s, "config": {k: v for k, v in s.get("config", {}).items() if not k.endswith("_path")}}
        for s in cand.get("steps") or []
    ]
    recipe = {
        "name": cand["recipe"],
        "job": job.pk,
        "steps": steps,
        "hardware_profile": job.hardware_profile.slug if job.hardware_profile else None,
    }
    registered = services.register_version(
        source.model,
        cand["path"],
        original_filename=f"{cand['recipe']}.onnx",
        actor=job.created_by,
        parent=source,
        recipe=recipe,
        metrics={**cand["metrics"], "estimate_for": recipe["hardware_profile"]},
        notes=_("Derived by compression job %(j)s.") % {"j": job.pk},
    )
    return registered.version


def _summary(job: CompressionJob, report: dict) -> dict:
    return {
        "chosen": report.get("chosen"),
        "reason": report.get("reason", ""),
        "reason_parts": report.get("reason_parts") or [],
        "pareto": report.get("pareto", []),
        "skipped": report.get("skipped", []),
        "seconds": report.get("seconds"),
        "threads": report.get("threads"),
        "measurement": report.get("measurement", {}),
        "default_quality_floor": report.get("default_quality_floor"),
        "latency_only": report.get("latency_only", False),
        "provider": report.get("provider"),
        "host": host_info(),
        "hardware_profile": job.hardware_profile.name if job.hardware_profile else None,
    }
