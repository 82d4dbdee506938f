"""On-device benchmark requests: create, sign, hand out, record, compare.

An operator (or a compression job, through the same service) asks devices — by
group, hardware profile, tag or id — to measure chosen versions before any
rollout. Each device gets one envelope signed with the manifest key
(`devices.agent.bench`: schema `benchmark-1`, the device's uid, an expiry, the
artifacts with size and sha256), and reports one result per version. Results are
kept per (version, device, hardware profile) next to the estimate the server
had, so the job page can show predicted against measured.
"""

from __future__ import annotations

import math
import statistics
from datetime import timedelta

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from compression.models import ModelVersion
from devices.agent import bench
from devices.agent import manifest as mf
from ota import keys, manifests
from ota.models import BenchmarkRequest, BenchmarkResult, BenchmarkRun, version_label
from ota.services import OtaError, clean_target, resolve_target
from ota.stats import estimate_p95

MAX_VERSIONS = 20
MAX_DEVICES = 1000
MAX_EXPIRY_S = 7 * 24 * 3600


def _int(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OtaError(
            f"bad_{name}",
            _("%(n)s must be an integer from %(a)s to %(b)s.") % {"n": name, "a": low, "b": high},
            field=name,
        )
    return value


def create_request(*, versions, target, actor, inferences=200, expires_in_s=3600, job=None):
    """Validate, then create the request, one signed run per device and one pending
    result per (device, version)."""
    if (
        not isinstance(versions, list)
        or not versions
        or len(versions) > MAX_VERSIONS
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in versions)
    ):
        raise OtaError(
            "bad_versions",
            _("versions: a list of 1 to %(n)s version ids.") % {"n": MAX_VERSIONS},
            field="versions",
        )
    inferences = _int(inferences, "inferences", 1, bench.MAX_INFERENCES)
    expires_in_s = _int(expires_in_s, "expires_in_s", 60, MAX_EXPIRY_S)
    found = {v.pk: v for v in ModelVersion.objects.filter(pk__in=versions).select_related("model")}
    missing = [v for v in versions if v not in found or not found[v].is_ready]
    if missing:
        raise OtaError(
            "bad_versions",
            _("Unknown or not ready version(s): %(v)s.") % {"v": ", ".join(map(str, missing))},
            field="versions",
        )
    devices = list(resolve_target(clean_target(target)).order_by("pk")[: MAX_DEVICES + 1])
    if not devices:
        raise OtaError("empty_target", _("The target matches no device."))
    if len(devices) > MAX_DEVICES:
        raise OtaError(
            "too_many_devices",
            _("At most %(n)s devices per benchmark request.") % {"n": MAX_DEVICES},
        )
    chosen = [found[v] for v in dict.fromkeys(versions)]
    now = timezone.now()
    active = keys.active_key()
    private = keys.private_key(active)
    with transaction.atomic():
        request = BenchmarkRequest.objects.create(
            target=clean_target(target),
            inferences=inferences,
            job=job,
            expires_at=now + timedelta(seconds=expires_in_s),
            created_by=actor if getattr(actor, "pk", None) else None,
        )
        request.versions.set(chosen)
        for device in devices:
            run = BenchmarkRun.objects.create(request=request, device=device)
            artifacts = []
            for version in chosen:
                predicted = estimate_p95(
                    version, version_label(version), device.hardware_profile_id
                )
                BenchmarkResult.objects.create(
                    run=run,
                    model_version=version,
                    hardware_profile_id=device.hardware_profile_id,
                    predicted_p95_ms=predicted,
                )
                artifacts.append(manifests.artifact_entry(f"v{version.pk}", version, predicted))
            run.envelope = sign(run, device.uid, artifacts, now, private)
            run.save(update_fields=["envelope"])
        manifests.forget(d.pk for d in devices)  # their next answer says X-Benchmarks: 1
    return request


def sign(run, uid: str, artifacts: list[dict], now, private_key) -> dict:
    payload = {
        "schema": bench.SCHEMA,
        "device": uid,
        "benchmark": run.pk,
        "version": run.pk,
        "issued_at": mf.format_time(now),
        "expires_at": mf.format_time(run.request.expires_at),
        "artifacts": artifacts,
        "default": artifacts[0]["name"],
        "policy": {},
        "inferences": run.request.inferences,
    }
    mf.check_artifacts(payload)
    return mf.sign(payload, private_key)


def pending_envelopes(device) -> list[dict]:
    runs = BenchmarkRun.waiting(device.pk)
    return [run.envelope for run in runs.order_by("pk")[:20] if run.envelope]


def assigned_artifact(device_pk: int, sha256: str) -> bool:
    """May this device download the artifact for a pending benchmark of its own?"""
    return BenchmarkResult.objects.filter(
        run__device_id=device_pk, run__state="pending", model_version__sha256=sha256
    ).exists()


def _figure(value) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) and value >= 0 else None


def record(device, run_id: int, data) -> BenchmarkRun:
    """Apply a device's report to its own run (never another device's)."""
    run = BenchmarkRun.objects.filter(pk=run_id, device=device).first()
    if run is None:
        raise OtaError("not_found", _("No such benchmark of this device."), 404)
    if not isinstance(data, dict) or data.get("state") not in {"done", "refused"}:
        raise OtaError("bad_report", _("A report has state done or refused."))
    results = data.get("results", [])
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise OtaError("bad_report", _("results must be a list of objects."))
    if run.state != "pending":
        if run.state == data["state"]:
            return run  # a resent report: same answer
        raise OtaError("illegal_transition", _("This benchmark was reported already."), 409)
    now = timezone.now()
    with transaction.atomic():
        rows = {r.model_version.sha256: r for r in run.results.select_related("model_version")}
        for item in results[:MAX_VERSIONS]:
            row = rows.get(item.get("sha256"))
            if row is None or row.state != "pending":
                continue
            row.state = "succeeded" if item.get("state") == "succeeded" else "failed"
            for name in BenchmarkResult.FIGURES:
                setattr(row, name, _figure(item.get(name)))
            row.error = str(item.get("error") or "")[:2000]
            row.measured_at = now
            row.save()
        run.state = data["state"]
        run.error_code = str(data.get("error_code") or "")[:40]
        run.error = str(data.get("error") or "")[:2000]
        run.save(update_fields=["state", "error_code", "error", "updated_at"])
        manifests.forget([device.pk])  # one pending request fewer in X-Benchmarks
        job_id = run.request.job_id
        if job_id is not None:  # a job choosing by device results decides when all are in
            from compression.device_choice import after_report

            transaction.on_commit(lambda: after_report(job_id))
    return run


def comparison(versions) -> list[dict]:
    """Predicted vs measured p95 per version × hardware profile (median over devices)."""
    groups: dict[tuple, dict] = {}
    rows = (
        BenchmarkResult.objects.filter(model_version__in=versions, state="succeeded")
        .select_related("model_version__model", "hardware_profile")
        .order_by("model_version_id", "hardware_profile_id")
    )
    for row in rows:
        key = (row.model_version_id, row.hardware_profile_id)
        group = groups.setdefault(
            key,
            {
                "version": row.model_version,
                "profile": row.hardware_profile,
                "predicted": row.predicted_p95_ms,
                "measured": [],
                "energy": [],
            },
        )
        group["measured"].append(row.p95_ms)
        if row.energy_mj is not None:
            group["energy"].append(row.energy_mj)
    out = []
    for group in groups.values():
        measured = statistics.median([m for m in group["measured"] if m is not None] or [0.0])
        predicted = group["predicted"]
        error = (predicted - measured) / measured if predicted and measured else None
        out.append(
            {
                "version": group["version"],
                "profile": group["profile"],
                "devices": len(group["measured"]),
                "predicted_p95_ms": predicted,
                "measured_p95_ms": measured,
                "error_pct": round(100 * error, 1) if error is not None else None,
                "energy_mj": statistics.median(group["energy"]) if group["energy"] else None,
            }
        )
    return out
