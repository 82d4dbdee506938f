"""Rollout workflows: releases, deployments, phase assignment, gates, rollback.

Views, the API and the gate task call these functions; single-row state changes
are `Deployment` methods (conditional UPDATEs).
"""

from __future__ import annotations

import logging
import math
import random
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from compression.models import Candidate, ModelVersion
from devices.agent.manifest import ManifestError, check_policy
from devices.choices import DeviceStatus
from devices.models import Device, DeviceGroup, HardwareProfile, QueryGroup
from fleet import prometheus
from fleet.refusal import Refusal, gather
from fleet.roles import Role, has_role, role_of
from ota import manifests, stats
from ota.assignment import (
    CHUNK,
    SUPERSEDABLE,
    assign_phase,
    pick_variants,
    refresh_manifests,
    variants_by_profile,
)
from ota.choices import ACTIVE_STATES, DeploymentKind, DeploymentStatus, UpdateState
from ota.gates import GATE_FAILED, GateConfig, GateError, Verdict, evaluate, phase_targets
from ota.models import (
    Deployment,
    DeviceUpdate,
    Release,
    ReleaseVariant,
    version_label,
)

log = logging.getLogger(__name__)

TARGET_KEYS = {"groups", "query_groups", "tags", "hardware_profiles", "devices"}


class OtaError(Refusal):
    """A refused release, deployment or status report (`fleet.refusal`)."""


# --- releases -------------------------------------------------------------------------
def create_release(
    *,
    name: str,
    slot: str = "default",
    notes: str = "",
    variants: list[dict],
    policy: dict | None = None,
    default_variant: str | None = None,
    allow_kpi_misses: bool = False,
    actor=None,
) -> Release:
    """Validate then create a release. `variants`: [{"name", "model_version" (pk or row),
    "hardware_profile" (slug, pk, row or None)}]. A variant that missed its
    compression job's KPIs is refused unless `allow_kpi_misses` (an explicit override)."""
    _name, rows = gather(
        lambda: _check_release_name(name),
        lambda: _variant_rows(variants, allow_kpi_misses),
    )
    names = {r.name for r in rows}
    default_variant = default_variant or rows[0].name
    if default_variant not in names:
        raise OtaError("bad_default", _("The default variant names no variant."))
    check_release_policy(policy, names)
    with transaction.atomic():
        release = Release.objects.create(
            name=name[:120],
            slot=slot or "default",
            notes=notes,
            policy=policy or {},
            default_variant=default_variant,
            created_by=actor if getattr(actor, "pk", None) else None,
        )
        for row in rows:
            row.release = release
        ReleaseVariant.objects.bulk_create(rows)
    return release


def _check_release_name(name: str) -> str:
    if not name or Release.objects.filter(name=name).exists():
        raise OtaError("bad_name", _("A release needs a unique name."), field="name")
    return name


def kpi_missing_versions():
    """Versions a compression job built that missed its KPIs (the uploaded original,
    measured as fp32, is never one of them): not released without an override."""
    return (
        Candidate.objects.filter(meets_kpis=False, version__isnull=False)
        .exclude(recipe="fp32")
        .values("version_id")
    )


def _variant_rows(variants, allow_kpi_misses: bool) -> list[ReleaseVariant]:
    if not isinstance(variants, list) or not variants:
        raise OtaError("no_variants", _("A release needs at least one variant."), field="variants")
    rows, seen = [], set()
    for item in variants:
        if not isinstance(item, dict):
            raise OtaError("bad_variant", _("Each variant must be an object."), field="variants")
        version = _model_version(item.get("model_version"))
        profile = _hardware_profile(item.get("hardware_profile"))
        vname = str(item.get("name") or "default")
        key = (vname, profile.pk if profile else None)
        if key in seen:
            raise OtaError(
                "bad_variant",
                _("Variant %(n)s is listed twice for one profile.") % {"n": vname},
                field="variants",
            )
        seen.add(key)
        rows.append(ReleaseVariant(name=vname, model_version=version, hardware_profile=profile))
    missing = set() if allow_kpi_misses else _kpi_misses([r.model_version for r in rows])
    if missing:
        raise OtaError(
            "misses_kpis",
            _(
                "%(v)s missed its compression job's KPIs; release it only with the "
                "explicit override (allow_kpi_misses)."
            )
            % {"v": ", ".join(sorted(missing))},
            field="variants",
        )
    return rows


def _kpi_misses(versions: list[ModelVersion]) -> set[str]:
    ids = set(
        kpi_missing_versions()
        .filter(version_id__in=[v.pk for v in versions])
        .values_list("version_id", flat=True)
    )
    return {str(v) for v in versions if v.pk in ids}


def check_release_policy(policy: dict | None, names: set[str]) -> None:
    """The policy may only name the release's variants (also `Release.clean`'s rule)."""
    try:
        check_policy(policy or {}, names)
    except ManifestError as exc:
        raise OtaError("bad_policy", exc.message) from None


def _model_version(value) -> ModelVersion:
    if not isinstance(value, ModelVersion):
        try:
            value = ModelVersion.objects.select_related("model").get(pk=int(value))
        except (TypeError, ValueError, ModelVersion.DoesNotExist):
            raise OtaError(
                "bad_model_version", _("Unknown model version %(v)r.") % {"v": value}
            ) from None
    if not value.is_ready:
        raise OtaError(
            "version_not_ready",
            _("Model version %(v)s is %(s)s; only validated versions can be released.")
            % {"v": value, "s": value.get_status_display()},
            field="variants",
        )
    return value


def _hardware_profile(value) -> HardwareProfile | None:
    if value in (None, "", "*"):
        return None
    if isinstance(value, HardwareProfile):
        return value
    found = HardwareProfile.objects.filter(
        Q(slug=str(value)) | Q(pk=int(value) if str(value).isdigit() else None)
    ).first()
    if found is None:
        raise OtaError("bad_hardware_profile", _("Unknown hardware profile %(v)r.") % {"v": value})
    return found


# --- targets --------------------------------------------------------------------------
def clean_target(target) -> dict:
    if not isinstance(target, dict) or not target or set(target) - TARGET_KEYS:
        raise OtaError(
            "bad_target",
            _("Target: an object with any of %(k)s.") % {"k": ", ".join(sorted(TARGET_KEYS))},
        )
    cleaned = {}
    for key, values in target.items():
        if not isinstance(values, list) or not all(isinstance(v, str | int) for v in values):
            raise OtaError(
                "bad_target", _("Target %(k)s must be a list.") % {"k": key}, field="target"
            )
        if values:
            cleaned[key] = values
    if not cleaned:
        raise OtaError("bad_target", _("The target names no device."), field="target")
    return cleaned


def resolve_target(target: dict):
    """Devices matching any entry of the target (revoked devices never)."""
    query = Q(pk__in=[])
    if target.get("groups"):
        ids = DeviceGroup.objects.filter(
            Q(pk__in=[v for v in target["groups"] if str(v).isdigit()])
            | Q(name__in=[str(v) for v in target["groups"]])
        ).values("pk")
        query |= Q(group__in=ids)
    for qg in QueryGroup.objects.filter(
        pk__in=[int(v) for v in target.get("query_groups", []) if str(v).isdigit()]
    ):
        query |= Q(pk__in=qg.devices().values("pk"))
    if target.get("tags"):
        query |= Q(pk__in=Device.objects.filter(tags__name__in=target["tags"]).values("pk"))
    if target.get("hardware_profiles"):
        query |= Q(hardware_profile__slug__in=[str(v) for v in target["hardware_profiles"]])
    if target.get("devices"):
        query |= Q(uid__in=[str(v) for v in target["devices"]])
    return Device.objects.filter(query).exclude(status=DeviceStatus.REVOKED)


def clean_phases(phases, gates) -> tuple[list[float], list[dict]]:
    try:
        phases = [float(p) for p in phases or [100]]
        phases = [int(p) if p.is_integer() else p for p in phases]
        phase_targets(1, phases)
    except (TypeError, ValueError) as exc:
        raise OtaError("bad_phases", _(str(exc)), field="phases") from None  # msgids in gates
    if isinstance(gates, dict) or gates is None:
        gates = [gates or {}] * len(phases)
    if not isinstance(gates, list) or len(gates) != len(phases):
        raise OtaError(
            "bad_phases",
            _("Give one gate configuration per phase (or one for all)."),
            field="gates",
        )
    cleaned = []
    for index, gate in enumerate(gates):
        try:
            cleaned.append(GateConfig.from_dict(gate).as_dict())
        except GateError as exc:
            raise OtaError(
                "bad_gates",
                _("Phase %(p)s gate: %(e)s") % {"p": index + 1, "e": exc},
                field=f"gates[{index}].{exc.field}",
            ) from None
    return phases, cleaned


def preview(target, phases) -> dict:
    """How many devices each phase reaches (the wizard shows this before starting)."""
    target = clean_target(target)
    phases, _gates = clean_phases(phases, None)
    total = resolve_target(target).count()
    fleet = Device.objects.exclude(status=DeviceStatus.REVOKED).count()
    cumulative = phase_targets(total, phases)
    empty = empty_phases(cumulative)
    return {
        "total": total,
        "fleet": fleet,
        "phases": phases,
        "empty_phases": empty,
        "cumulative": cumulative,
        "fleet_percent": round(100 * total / fleet, 1) if fleet else 0.0,
    }


def empty_phases(cumulative: list[int]) -> list[int]:
    """Phases (1-based) whose share rounds to the devices already reached: they add
    nobody and their gate would judge the previous phase again. The wizard warns of
    them; `start_deployment` refuses them."""
    return [i + 1 for i in range(1, len(cumulative)) if cumulative[i] == cumulative[i - 1]]


def check_phases_reach(devices: int, phases: list) -> list[int]:
    """Devices reached by the end of each phase; a phase that adds nobody is refused."""
    cumulative = phase_targets(devices, phases)
    if empty := empty_phases(cumulative):
        raise OtaError(
            "empty_phases",
            _(
                "With %(n)s target devices, phase(s) %(p)s would add no device; "
                "use fewer or wider phases."
            )
            % {"n": devices, "p": ", ".join(map(str, empty))},
            field="phases",
        )
    return cumulative


# --- deployments ----------------------------------------------------------------------
def check_ungated_reach(devices: int, actor) -> None:
    """Reaching more than OTA_MAX_UNPHASED_PERCENT of the fleet with no gate in
    between (the first phase, plus phases entered by manual approval) needs the
    admin role, however the phases are split: `[0.0001, 100]` + approve is the
    same fleet-wide push as `[100]`."""
    if has_role(actor, Role.ADMIN):
        return
    fleet = Device.objects.exclude(status=DeviceStatus.REVOKED).count()
    limit = settings.OTA_MAX_UNPHASED_PERCENT
    if 100 * devices > limit * fleet:
        raise OtaError(
            "needs_admin",
            _(
                "Reaching more than %(p)s %% of the fleet without a "
                "passing gate needs the admin role."
            )
            % {"p": limit},
            403,
        )


def clean_window(window) -> dict | None:
    if not window:
        return None
    import re

    if (
        not isinstance(window, dict)
        or set(window) != {"start", "end"}
        or not all(re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", str(window[k])) for k in window)
    ):
        raise OtaError(
            "bad_window",
            _('Install window: {"start": "HH:MM", "end": "HH:MM"} UTC.'),
            field="install_window",
        )
    return {"start": window["start"], "end": window["end"]}


def check_ci_canary(phases: list, gates: list[dict]) -> None:
    """A pipeline's token starts canaries, never a fleet-wide push: two phases or more,
    the first a small canary, the install-failure gate no looser than the default."""
    limit = settings.OTA_CI_MAX_CANARY_PERCENT
    if len(phases) < 2 or phases[0] > limit:
        raise OtaError(
            "needs_operator",
            _(
                "A CI token deploys in phases starting with a "
                "canary of at most %(p)s %%; ask an operator for "
                "anything wider."
            )
            % {"p": limit},
            403,
        )
    default = GateConfig()
    if any(
        g["max_failure_rate"] > default.max_failure_rate or g["min_successful"] < 1 for g in gates
    ):
        raise OtaError(
            "needs_operator",
            _("A CI token cannot loosen the install-failure gate; ask an operator."),
            403,
        )


def clean_shadow(value) -> dict | None:
    """A deployment's shadow request, bounded as the agent bounds it."""
    from devices.agent import shadow

    try:
        return shadow.parse(value)
    except shadow.ShadowError as exc:
        raise OtaError("bad_shadow", str(exc)) from exc


_SHADOW_NUMBERS = ("agreement", "min_agreement", "active_p50_ms", "candidate_p50_ms")


def _shadow_report(value) -> dict | None:
    """What is kept of a device's shadow evaluation: finite numbers and short strings."""
    if not isinstance(value, dict):
        return None
    kept = {}
    for name in _SHADOW_NUMBERS:
        number = value.get(name)
        finite = isinstance(number, int | float) and not isinstance(number, bool)
        if finite and math.isfinite(number):
            kept[name] = float(number)
    inferences = value.get("inferences")
    if isinstance(inferences, int) and not isinstance(inferences, bool) and inferences >= 0:
        kept["inferences"] = inferences
    for name in ("metric", "output"):
        if isinstance(value.get(name), str):
            kept[name] = value[name][:60]
    if isinstance(value.get("passed"), bool):
        kept["passed"] = value["passed"]
    return kept if "agreement" in kept else None


def start_deployment(
    release: Release,
    target,
    *,
    actor,
    phases=None,
    gates=None,
    scheduled_at: datetime | None = None,
    install_window=None,
    shadow=None,
    now: datetime | None = None,
) -> Deployment:
    """Validate, create the deployment and its queued device updates, start phase 0
    (or wait for `scheduled_at`)."""
    now = now or timezone.now()
    # independent inputs: every mistake is reported at once (fleet.refusal.gather)
    target, (phases, gates), window, shadow = gather(
        lambda: clean_target(target),
        lambda: clean_phases(phases, gates),
        lambda: clean_window(install_window),
        lambda: clean_shadow(shadow),
    )
    if role_of(actor) == Role.CI:
        check_ci_canary(phases, gates)
    devices = list(resolve_target(target).order_by("pk").values_list("pk", flat=True))
    if not devices:
        raise OtaError("empty_target", _("The target matches no device."), field="target")
    counts = check_phases_reach(len(devices), phases)
    check_ungated_reach(counts[0], actor)
    table = variants_by_profile(release)
    with transaction.atomic():
        deployment = Deployment.objects.create(
            release=release,
            slot=release.slot,
            target=target,
            phases=phases,
            gates=gates,
            target_count=len(devices),
            ungated_count=counts[0],
            scheduled_at=scheduled_at,
            install_window=window,
            shadow=shadow,
            created_by=actor if getattr(actor, "pk", None) else None,
        )
        rng = random.Random(deployment.pk)  # canaries spread over the fleet, reproducibly
        rng.shuffle(devices)
        _queue_updates(deployment, devices, counts, table)
        if scheduled_at and scheduled_at > now:
            deployment._move(DeploymentStatus.SCHEDULED, [DeploymentStatus.DRAFT])
        else:
            begin(deployment, now)
    return deployment


def _queue_updates(deployment, devices: list[int], counts: list[int], table) -> None:
    profiles = dict(Device.objects.filter(pk__in=devices).values_list("pk", "hardware_profile"))
    rows, phase = [], 0
    for index, device_pk in enumerate(devices):
        while index >= counts[phase]:
            phase += 1
        chosen = pick_variants(table, profiles.get(device_pk))
        main = next(
            (v for v in chosen if v.name == deployment.release.default_variant),
            chosen[0] if chosen else None,
        )
        rows.append(
            DeviceUpdate(
                deployment=deployment,
                device_id=device_pk,
                slot=deployment.slot,
                phase=phase,
                model_version=main.model_version if main else None,
                model_label=version_label(main.model_version) if main else "",
            )
        )
    DeviceUpdate.objects.bulk_create(rows, batch_size=CHUNK)


def begin(deployment: Deployment, now: datetime) -> bool:
    """Precondition: draft or scheduled. Running, phase 0 assigned."""
    if not deployment._move(
        DeploymentStatus.RUNNING,
        [DeploymentStatus.DRAFT, DeploymentStatus.SCHEDULED],
        started_at=now,
        phase_started_at=now,
        current_phase=0,
    ):
        return False
    assign_phase(deployment, 0, now)
    return True


def _cancel_unfinished(deployment: Deployment, now) -> None:
    pks = list(
        deployment.updates.filter(state__in=SUPERSEDABLE).values_list("device_id", flat=True)
    )
    deployment.updates.filter(state__in=SUPERSEDABLE).update(
        state=UpdateState.CANCELLED, finished_at=now
    )
    manifests.forget(pks)


def pause(deployment: Deployment, reason: str) -> bool:
    """Stop advancing; devices already assigned finish their update."""
    return deployment.pause(reason)


def resume(deployment: Deployment) -> bool:
    return deployment.resume()


def abort(deployment: Deployment, now: datetime | None = None) -> bool:
    """Stop; every update not yet installing is cancelled."""
    with transaction.atomic():
        if not deployment.abort():
            return False
        _cancel_unfinished(deployment, now or timezone.now())
    return True


def rollback(deployment: Deployment, *, actor, now: datetime | None = None) -> Deployment:
    """Deploy each touched device's previous version (one phase, no latency gate)."""
    now = now or timezone.now()
    if not deployment.can_roll_back:
        raise OtaError("bad_state", _("This deployment cannot be rolled back."), 409)
    with transaction.atomic():
        touched = list(
            deployment.updates.filter(
                state__in=[*ACTIVE_STATES, UpdateState.SUCCEEDED], previous_version__isnull=False
            ).values("device_id", "previous_version_id", "previous_label")
        )
        skipped = deployment.updates.filter(
            state__in=[*ACTIVE_STATES, UpdateState.SUCCEEDED], previous_version__isnull=True
        ).count()
        if not deployment.mark_rolled_back():
            raise OtaError("bad_state", _("This deployment cannot be rolled back."), 409)
        _cancel_unfinished(deployment, now)
        back = Deployment.objects.create(
            release=deployment.release,
            kind=DeploymentKind.ROLLBACK,
            slot=deployment.slot,
            target={"devices": []},
            phases=[100],
            gates=[
                GateConfig(max_failure_rate=1.0, min_successful=0, max_latency_ratio=None).as_dict()
            ],
            target_count=len(touched),
            rollback_of=deployment,
            gate_report={"skipped_without_previous_version": skipped},
            created_by=actor if getattr(actor, "pk", None) else None,
        )
        versions = ModelVersion.objects.select_related("model").in_bulk(
            {t["previous_version_id"] for t in touched}
        )
        DeviceUpdate.objects.bulk_create(
            [
                DeviceUpdate(
                    deployment=back,
                    device_id=t["device_id"],
                    slot=back.slot,
                    phase=0,
                    model_version=versions[t["previous_version_id"]],
                    model_label=version_label(versions[t["previous_version_id"]]),
                    previous_label="",
                )
                for t in touched
            ],
            batch_size=CHUNK,
        )
        begin(back, now)
    back.refresh_from_db()
    return back


# --- gates -----------------------------------------------------------------------------
def evaluate_deployments(now: datetime | None = None) -> dict[int, str]:
    """The gate task: start due scheduled deployments, judge every running one,
    re-sign pending manifests. Each deployment is judged in its own savepoint: one
    that raises is logged and reported as "error" while the others (and the
    re-signing, which keeps pending manifests from expiring) still run."""
    now = now or timezone.now()
    outcome = {}
    for deployment in Deployment.objects.filter(
        status=DeploymentStatus.SCHEDULED, scheduled_at__lte=now
    ):
        outcome[deployment.pk] = _isolated(
            deployment, lambda d: "started" if begin(d, now) else "skipped"
        )
    for deployment in Deployment.objects.filter(status=DeploymentStatus.RUNNING).select_related(
        "release"
    ):
        outcome[deployment.pk] = _isolated(deployment, lambda d: evaluate_deployment(d, now))
    refresh_manifests(now)
    prometheus.count_gate_decisions(outcome)
    return outcome


def _isolated(deployment: Deployment, judge) -> str:
    try:
        with transaction.atomic():
            return judge(deployment)
    except Exception as exc:  # one deployment's fault must not stop the others
        log.exception("gate evaluation of deployment %s failed", deployment.pk)
        Deployment.objects.filter(pk=deployment.pk).update(
            gate_report={
                "verdict": "error",
                "reasons": [f"{type(exc).__name__}: {exc}"[:500]],
                "at": timezone.now().isoformat(),
            }
        )
        return "error"


def evaluate_deployment(deployment: Deployment, now: datetime | None = None) -> str:
    """Judge the current phase; act on the verdict only if nobody moved the
    deployment since it was read (conditional UPDATE on `step`)."""
    now = now or timezone.now()
    phase, seen = deployment.current_phase, deployment.step
    phase_stats = stats.phase_stats(deployment, phase, now)
    decision = evaluate(deployment.gate_config(phase), phase_stats)
    report = {
        "phase": phase,
        "verdict": decision.verdict.value,
        "reasons": decision.reasons,
        "reason_codes": decision.codes,
        "values": decision.values,
        "thresholds": deployment.gate_config(phase).as_dict(),
        "stats": stats.as_dict(phase_stats),
        "at": now.isoformat(),
    }
    claim = Deployment.objects.filter(
        pk=deployment.pk, status=DeploymentStatus.RUNNING, step=seen, current_phase=phase
    )
    with transaction.atomic():
        if decision.verdict == Verdict.WAIT:
            claim.update(gate_report=report, evaluated_at=now)
            return "wait"
        if decision.verdict == Verdict.FAIL:
            reason = GATE_FAILED % {"p": phase + 1, "r": "; ".join(decision.reasons)}
            moved = claim.update(
                status=DeploymentStatus.PAUSED,
                pause_reason=reason,
                gate_report=report,
                evaluated_at=now,
                step=F("step") + 1,
            )
            return "paused" if moved else "skipped"
        if phase + 1 >= len(deployment.phases):
            moved = claim.update(
                status=DeploymentStatus.COMPLETED,
                finished_at=now,
                gate_report=report,
                evaluated_at=now,
                step=F("step") + 1,
            )
            return "completed" if moved else "skipped"
        moved = claim.update(
            current_phase=phase + 1,
            phase_started_at=now,
            gate_report=report,
            evaluated_at=now,
            step=F("step") + 1,
        )
        if not moved:
            return "skipped"
        assign_phase(deployment, phase + 1, now)
    return "advanced"


def approve(deployment: Deployment, *, actor, now: datetime | None = None) -> bool:
    """Manual approval: advance to the next phase now, whatever the gate says.
    Unless the current phase's gate passes anyway, the devices of the next phase
    count as reached without a gate (OtaError "needs_admin" past the limit)."""
    now = now or timezone.now()
    phase = deployment.current_phase
    if phase + 1 >= len(deployment.phases) or deployment.status not in (
        DeploymentStatus.RUNNING,
        DeploymentStatus.PAUSED,
    ):
        return False
    ungated = deployment.ungated_count
    passed = (
        evaluate(deployment.gate_config(phase), stats.phase_stats(deployment, phase, now)).verdict
        == Verdict.PASS
    )
    if not passed:
        ungated += deployment.updates.filter(phase=phase + 1).count()
        check_ungated_reach(ungated, actor)
    with transaction.atomic():
        moved = Deployment.objects.filter(
            pk=deployment.pk,
            status__in=[DeploymentStatus.RUNNING, DeploymentStatus.PAUSED],
            step=deployment.step,
            current_phase=phase,
        ).update(
            status=DeploymentStatus.RUNNING,
            current_phase=phase + 1,
            phase_started_at=now,
            pause_reason="",
            step=F("step") + 1,
            ungated_count=ungated,
        )
        if moved:
            assign_phase(deployment, phase + 1, now)
    deployment.refresh_from_db()
    return bool(moved)


# --- device reports ---------------------------------------------------------------------
# What an agent reports when it refuses a manifest before trusting any of it.
REFUSAL_CODES = {"bad_signature", "wrong_device", "rollback", "expired", "malformed", "bad_policy"}


def _refused_update(device: Device, data: dict) -> DeviceUpdate | None:
    """The update a refusal belongs to: the device's current assignment (in the slot the
    report names, or its only one). Nothing of a refused manifest is trusted — a forged
    one names any deployment and version — so neither picks the row."""
    active = list(
        DeviceUpdate.objects.select_for_update()
        .filter(device=device, state__in=ACTIVE_STATES)
        .order_by("-manifest_version")
    )
    in_slot = [u for u in active if u.slot == str(data.get("slot") or "")]
    if in_slot:
        return in_slot[0]
    if data.get("slot") is None or len({u.slot for u in active}) == 1:
        return active[0] if active else None
    return None


def report_status(device: Device, data) -> DeviceUpdate:
    """Apply one status report of `device` to its own update (A2: never another's)."""
    if not isinstance(data, dict):
        raise OtaError("bad_report", _("A status report is a JSON object."))
    state, version = data.get("state"), data.get("manifest_version")
    if state not in {s.value for s in stats.REPORTABLE_STATES}:
        raise OtaError("bad_state", _("Unknown or unreportable state %(s)r.") % {"s": state})
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise OtaError("bad_version", _("manifest_version must be an integer."))
    deployment = data.get("deployment")
    if deployment is not None and (not isinstance(deployment, int) or isinstance(deployment, bool)):
        raise OtaError("bad_deployment", _("deployment must be an integer or null."))
    if data.get("slot") is not None and not isinstance(data["slot"], str):
        raise OtaError("bad_slot", _("slot must be a string."))
    # A refused manifest proves nothing (a forged one names any deployment and version):
    # the agent flags its refusals, and they go to the device's current assignment.
    refused = state == UpdateState.FAILED and data.get("refused_manifest") is True
    if not refused and (not isinstance(version, int) or isinstance(version, bool)):
        raise OtaError("bad_version", _("manifest_version must be an integer."))
    updates = DeviceUpdate.objects.filter(device=device, manifest_version=version)
    if data.get("deployment") is not None:
        updates = updates.filter(deployment_id=data.get("deployment"))
    if data.get("slot"):
        updates = updates.filter(slot=str(data["slot"]))
    now = timezone.now()
    with transaction.atomic():
        update = None if refused else updates.select_for_update().first()
        if refused or (
            update is None
            and state == UpdateState.FAILED
            and str(data.get("error_code") or "") in REFUSAL_CODES
        ):
            update = _refused_update(device, data)  # (the second case: older agents)
        if update is None:
            raise OtaError("not_found", _("No such update for this device."), 404)
        if update.state == state and update.is_final:
            return update  # a resent final report: same answer
        if not update.can_report(state):
            raise OtaError(
                "illegal_transition",
                _("Cannot go from %(a)s to %(b)s.") % {"a": update.state, "b": state},
                409,
            )
        if state == UpdateState.DOWNLOADING and update.state != UpdateState.DOWNLOADING:
            update.attempts += 1
            update.started_at = update.started_at or now
        update.state = state
        if state in (UpdateState.FAILED, UpdateState.ROLLED_BACK):
            update.error = str(data.get("error") or "")[:2000]
            update.error_code = str(data.get("error_code") or "")[:40]
        shadow = _shadow_report(data.get("shadow"))
        if shadow is not None:
            update.shadow = shadow
        if update.is_final:
            update.finished_at = now
        update.save(
            update_fields=[
                "state",
                "attempts",
                "started_at",
                "finished_at",
                "error",
                "error_code",
                "shadow",
                "updated_at",
            ]
        )
        if update.is_final:
            manifests.forget([device.pk])
    return update


def state_counts(deployment: Deployment) -> dict[str, int]:
    rows = deployment.updates.values("state").annotate(n=Count("pk"))
    counts = {s.value: 0 for s in UpdateState}
    counts.update({r["state"]: r["n"] for r in rows})
    return counts


def phase_progress(deployment: Deployment) -> list[dict]:
    """Per phase: devices, finished, succeeded, failed (progress bars)."""
    rows = deployment.updates.values("phase", "state").annotate(n=Count("pk"))
    table: dict[int, dict] = {
        i: {
            "phase": i + 1,
            "percent": p,
            "devices": 0,
            "succeeded": 0,
            "failed": 0,
            "active": 0,
            "queued": 0,
        }
        for i, p in enumerate(deployment.phases)
    }
    for row in rows:
        entry = table.setdefault(
            row["phase"],
            {
                "phase": row["phase"] + 1,
                "percent": None,
                "devices": 0,
                "succeeded": 0,
                "failed": 0,
                "active": 0,
                "queued": 0,
            },
        )
        entry["devices"] += row["n"]
        key = {
            UpdateState.SUCCEEDED: "succeeded",
            UpdateState.FAILED: "failed",
            UpdateState.ROLLED_BACK: "failed",
            UpdateState.QUEUED: "queued",
        }.get(row["state"], "active" if row["state"] in ACTIVE_STATES else None)
        if key:
            entry[key] += row["n"]
    for entry in table.values():
        total = entry["devices"] or 1
        entry["succeeded_pct"] = round(100 * entry["succeeded"] / total, 1)
        entry["failed_pct"] = round(100 * entry["failed"] / total, 1)
        entry["active_pct"] = round(100 * entry["active"] / total, 1)
    return [table[k] for k in sorted(table)]
