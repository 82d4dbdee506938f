"""A compression job's last step: measure its variants on devices, and optionally let
the devices' results choose.

The job's options ask for it (`device_benchmark`: a target, `choose`, `timeout_s`).
Once the job has succeeded, one benchmark request for its registered variants goes to
the target's devices (`ota.benchmarks.create_request`, the operators' service). With
`choose`, the job waits (`DeviceChoice.WAITING`) until every device reported or the
timeout passed, then decides once (`CompressionJob.decide_by_devices`, a conditional
UPDATE): the variant with the lowest measured p50 (median over each hardware profile's
devices, the worst profile counting) among those meeting every KPI with the measured
latency in place of the server's estimate; at the timeout the estimate's choice stays,
with the reason. A variant that misses a KPI is never chosen. The last device's report
decides (`after_report`, the ingest hook); the beat's `sweep` decides at the timeout.
"""

from __future__ import annotations

import logging
import statistics
from datetime import timedelta

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from compression.choices import DeviceChoice, JobStatus
from compression.engine.search.decide import LATENCY_TIE, violations
from compression.models import Candidate, CompressionJob
from fleet.refusal import Refusal
from ota import benchmarks
from ota.models import BenchmarkResult, BenchmarkRun
from ota.services import clean_target, resolve_target

log = logging.getLogger(__name__)

OPTION = "device_benchmark"
DEFAULT_TIMEOUT_S = 3600
MIN_TIMEOUT_S = 60
INFERENCES = 200
SWEEP_DAYS = 1  # a job that succeeded this recently and has not asked yet asks now


def clean_option(value, reject) -> dict | None:
    """The job option, checked at job creation: `reject(code, message)` raises."""
    if value in (None, {}, ""):
        return None
    if not isinstance(value, dict) or set(value) - {"target", "choose", "timeout_s"}:
        reject("bad_option", _("device_benchmark takes target, choose and timeout_s."))
    try:
        target = clean_target(value.get("target"))
    except Refusal as exc:
        reject(exc.code, exc.message)
    if not resolve_target(target).exists():
        reject("empty_target", _("The target matches no device."))
    timeout = value.get("timeout_s", DEFAULT_TIMEOUT_S)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int)
        or not MIN_TIMEOUT_S <= timeout <= benchmarks.MAX_EXPIRY_S
    ):
        reject(
            "bad_option",
            _("timeout_s must be an integer from %(a)s to %(b)s.")
            % {"a": MIN_TIMEOUT_S, "b": benchmarks.MAX_EXPIRY_S},
        )
    if not isinstance(value.get("choose", False), bool):
        reject("bad_option", _("choose must be true or false."))
    return {"target": target, "choose": value.get("choose", False), "timeout_s": timeout}


def _versions(job: CompressionJob) -> list[int]:
    rows = (
        Candidate.objects.filter(job=job, version__isnull=False, error="")
        .order_by("-meets_kpis", "pk")
        .values_list("version_id", flat=True)
    )
    return list(dict.fromkeys(rows))[: benchmarks.MAX_VERSIONS]


def request_benchmarks(job: CompressionJob) -> str:
    """Ask the option's devices to measure a succeeded job's variants, once. Returns the
    job's device_choice state ("" when the job did not ask)."""
    option = (job.options or {}).get(OPTION)
    if not option or job.status != JobStatus.SUCCEEDED or job.device_choice:
        return job.device_choice
    choose = option.get("choose", False)
    state = DeviceChoice.WAITING if choose else DeviceChoice.REQUESTED
    timeout = option.get("timeout_s", DEFAULT_TIMEOUT_S)
    try:
        with transaction.atomic():
            if not job.ask_devices(state, deadline=timezone.now() + timedelta(seconds=timeout)):
                return job.device_choice
            benchmarks.create_request(
                versions=_versions(job),
                target=option["target"],
                actor=job.created_by,
                inferences=INFERENCES,
                expires_in_s=timeout,
                job=job,
            )
    except Refusal as exc:
        reason = _("No benchmark on devices: %(e)s") % {"e": exc.message}
        end = DeviceChoice.ESTIMATE if choose else DeviceChoice.REQUESTED
        job.ask_devices(end, result=_with_choice(job, end, reason))
    return job.device_choice


def _with_choice(job: CompressionJob, state: str, reason: str, **more) -> dict:
    return {**(job.result or {}), "device_choice": {"state": state, "reason": reason, **more}}


def progress(job: CompressionJob) -> tuple[int, int]:
    """(devices that reported, devices asked) for the job's benchmark requests."""
    runs = BenchmarkRun.objects.filter(request__job=job)
    return runs.exclude(state="pending").count(), runs.count()


def measured_p50(job: CompressionJob) -> dict[int, dict[str, float]]:
    """version id → hardware profile slug → median measured p50 over its devices."""
    rows = BenchmarkResult.objects.filter(
        run__request__job=job, state="succeeded", p50_ms__isnull=False
    ).values_list("model_version_id", "hardware_profile__slug", "p50_ms")
    samples: dict[int, dict[str, list[float]]] = {}
    for version, profile, p50 in rows:
        samples.setdefault(version, {}).setdefault(profile or "-", []).append(p50)
    return {
        v: {p: statistics.median(values) for p, values in by.items()} for v, by in samples.items()
    }


def _pick(job: CompressionJob, measured: dict) -> tuple[Candidate | None, dict, list[str]]:
    """The chosen candidate, the best per profile, the misses of those not chosen."""
    eligible, misses, by_profile = [], [], {}
    candidates = Candidate.objects.filter(job=job, version__isnull=False, error="")
    for cand in candidates.order_by("pk"):
        p50s = measured.get(cand.version_id)
        if not p50s or "size_mb" not in cand.metrics:
            continue
        for profile, p50 in p50s.items():
            if not violations({**cand.metrics, "p50_ms": p50}, job.kpis or {}):
                best = by_profile.get(profile)
                if best is None or p50 < best[1]:
                    by_profile[profile] = (cand.recipe, p50)
        worst = max(p50s.values())
        missed = violations({**cand.metrics, "p50_ms": worst}, job.kpis or {})
        if missed:
            misses.append(f"{cand.recipe} ({'; '.join(missed)})")
        else:
            eligible.append((worst, cand.metrics.get("size_bytes", 0), cand))
    profiles = {p: {"recipe": r, "p50_ms": round(v, 3)} for p, (r, v) in by_profile.items()}
    if not eligible:
        return None, profiles, misses
    fastest = min(w for w, _s, _c in eligible)
    band = [e for e in eligible if e[0] <= fastest * LATENCY_TIE]
    return min(band, key=lambda e: (e[1], e[0]))[2], profiles, misses


def decide(job_id: int, *, now=None) -> str:
    """Decide a waiting job once every device reported or its deadline passed; the
    job's device_choice state after the call."""
    job = CompressionJob.objects.filter(pk=job_id).first()
    if job is None or job.device_choice != DeviceChoice.WAITING:
        return job.device_choice if job else "gone"
    if job.status != JobStatus.SUCCEEDED:
        return job.device_choice
    done, total = progress(job)
    now = now or timezone.now()
    estimate = Candidate.objects.filter(job=job, chosen=True).first()
    if done < total and job.device_deadline and now < job.device_deadline:
        return job.device_choice
    if done < total:
        reason = _(
            "Timed out waiting for device results (%(d)s/%(t)s devices reported): "
            "the server's estimate decides."
        ) % {"d": done, "t": total}
        job.decide_by_devices(DeviceChoice.ESTIMATE, _with_choice(job, "estimate", reason))
        return job.device_choice
    measured = measured_p50(job)
    chosen, profiles, misses = _pick(job, measured)
    if not measured:
        reason = _("No device measured a variant: the server's estimate decides.")
        job.decide_by_devices(DeviceChoice.ESTIMATE, _with_choice(job, "estimate", reason))
        return job.device_choice
    if chosen is None:
        reason = _("No variant meets the KPIs on the devices: %(m)s.") % {"m": "; ".join(misses)}
    else:
        reason = _(
            "%(r)s meets every KPI with the lowest p50 measured on the devices "
            "(%(p)s ms, the slowest hardware profile counting)."
        ) % {"r": chosen.recipe, "p": round(max(measured[chosen.version_id].values()), 3)}
    result = _with_choice(
        job,
        "measured",
        reason,
        estimate=estimate.recipe if estimate else None,
        by_profile=profiles,
    )
    result["chosen"] = chosen.recipe if chosen else None
    with transaction.atomic():
        if job.decide_by_devices(DeviceChoice.MEASURED, result):
            Candidate.objects.filter(job=job).update(chosen=False)
            if chosen is not None:
                Candidate.objects.filter(pk=chosen.pk).update(chosen=True)
    return job.device_choice


def after_report(job_id: int) -> None:
    """The ingest hook, after a device's report on the job's benchmark committed: decide
    when it was the last one. Database only (no broker in the device's request), and it
    never fails that request: on any error the beat's sweep decides."""
    try:
        if not BenchmarkRun.objects.filter(request__job_id=job_id, state="pending").exists():
            decide(job_id)
    except Exception:
        log.exception("job %s: device choice left to the sweep", job_id)


def sweep(*, now=None) -> dict[int, str]:
    """Beat: ask for jobs that succeeded without asking yet (a worker lost between the
    two steps) and decide waiting jobs that are complete or past their deadline."""
    now = now or timezone.now()
    out = {}
    unasked = CompressionJob.objects.filter(
        status=JobStatus.SUCCEEDED,
        device_choice=DeviceChoice.NONE,
        options__has_key=OPTION,
        finished_at__gt=now - timedelta(days=SWEEP_DAYS),
    )
    for job in unasked.select_related("created_by"):
        try:
            out[job.pk] = request_benchmarks(job)
        except Exception:  # one job's failure must not stop the others; next sweep
            log.exception("job %s: the benchmark on devices was not requested", job.pk)
    waiting = CompressionJob.objects.filter(
        status=JobStatus.SUCCEEDED, device_choice=DeviceChoice.WAITING
    )
    for pk in waiting.values_list("pk", flat=True):
        out[pk] = decide(pk, now=now)
    return out
