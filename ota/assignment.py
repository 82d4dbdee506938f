"""Handing manifests out: sign one envelope per device and store it on its update.

Versions come from one global sequence (monotonic per device and slot); the
envelope is signed once here and served as is at every check-in.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from compression.models import ModelVersion
from ota import manifests
from ota.choices import DeploymentKind, UpdateState
from ota.models import Deployment, DeviceUpdate, ManifestSequence

log = logging.getLogger(__name__)

CHUNK = 2000
# Superseded by a newer assignment to the same slot: not yet installing.
SUPERSEDABLE = (
    UpdateState.QUEUED,
    UpdateState.PENDING,
    UpdateState.DOWNLOADING,
    UpdateState.DOWNLOADED,
)


def variants_by_profile(release) -> dict:
    """Hardware profile id (None = generic) → its variants; a device with no
    variant of its own gets the generic ones."""
    table: dict = defaultdict(list)
    for variant in release.variants.select_related("model_version__model"):
        table[variant.hardware_profile_id].append(variant)
    return table


def pick_variants(table, profile_id: int | None) -> list:
    return table.get(profile_id) or table.get(None) or []


def _claim_versions(count: int) -> int:
    """First of `count` fresh manifest versions; the row lock orders assignments."""
    with transaction.atomic():
        ManifestSequence.objects.get_or_create(pk=1)
        ManifestSequence.objects.filter(pk=1).update(value=F("value") + count)
        return ManifestSequence.objects.select_for_update().get(pk=1).value - count + 1


def assign_phase(deployment: Deployment, phase: int, now: datetime | None = None) -> int:
    """Sign and store manifests for the queued devices of phases ≤ `phase`;
    supersede their older unfinished updates of the same slot."""
    now = now or timezone.now()
    signer = manifests.Signer.now(now)
    table = (
        variants_by_profile(deployment.release)
        if deployment.kind == DeploymentKind.RELEASE
        else None
    )
    assigned = 0
    with transaction.atomic():
        queued = list(
            deployment.updates.filter(state=UpdateState.QUEUED, phase__lte=phase).select_related(
                "device", "model_version__model"
            )
        )
        if not queued:
            return 0
        first = _claim_versions(len(queued))
        device_pks = [u.device_id for u in queued]
        installed = _installed_versions(queued, deployment.slot)
        for start in range(0, len(device_pks), CHUNK):
            DeviceUpdate.objects.filter(
                device_id__in=device_pks[start : start + CHUNK],
                slot=deployment.slot,
                state__in=SUPERSEDABLE,
            ).exclude(deployment=deployment).update(state=UpdateState.SUPERSEDED, finished_at=now)
        estimates: dict = {}
        for offset, update in enumerate(queued):
            _sign_update(
                update, deployment, table, signer, first + offset, now, installed, estimates
            )
            assigned += 1
        _store_assignments(queued)
        manifests.forget(device_pks)
    return assigned


def _store_assignments(updates) -> None:
    """One parameterized UPDATE per row (executemany): bulk_update's CASE WHEN per
    field cost seconds per thousand rows when assigning a whole fleet."""
    table = DeviceUpdate._meta.db_table
    ops = connection.ops
    rows = [
        (
            u.state,
            u.manifest_version,
            json.dumps(u.envelope),
            json.dumps(u.artifacts),
            ops.adapt_datetimefield_value(u.assigned_at),
            u.previous_version_id,
            u.previous_label,
            ops.adapt_datetimefield_value(timezone.now()),
            u.pk,
        )
        for u in updates
    ]
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {table} SET state = %s, manifest_version = %s, envelope = %s, "
            "artifacts = %s, assigned_at = %s, previous_version_id = %s, previous_label = %s, "
            "updated_at = %s WHERE id = %s",
            rows,
        )


def _slot_inventory(device, slot: str) -> dict:
    return ((device.inventory or {}).get("models") or {}).get(slot) or {}


def _installed_versions(updates, slot: str) -> dict[str, ModelVersion]:
    """sha256 → ModelVersion of what the devices report installed, in one query."""
    shas = {_slot_inventory(u.device, slot).get("sha256") for u in updates} - {None, ""}
    found: dict[str, ModelVersion] = {}
    for version in ModelVersion.objects.filter(sha256__in=shas).order_by("-pk"):
        found[version.sha256] = version  # the oldest registration of identical bytes wins
    return found


def _estimate(model_version, device, cache: dict) -> float | None:
    """The latency gate's estimate for this device's profile (one lookup per batch)."""
    key = (model_version.pk, device.hardware_profile_id)
    if key not in cache:
        from ota.models import version_label
        from ota.stats import estimate_p95

        cache[key] = estimate_p95(
            model_version, version_label(model_version), device.hardware_profile_id
        )
    return cache[key]


def _input_stats(model_version, cache: dict) -> dict:
    """The drift reference of a version (computed once, then one lookup per batch)."""
    key = ("input_stats", model_version.pk)
    if key not in cache:
        from compression.services import calibration_input_stats

        cache[key] = calibration_input_stats(model_version)
    return cache[key]


def _sign_update(
    update, deployment, table, signer, version: int, now, installed, estimates: dict | None = None
) -> None:
    estimates = {} if estimates is None else estimates
    device = update.device
    current = _slot_inventory(device, deployment.slot)
    if not update.previous_label:
        update.previous_label = str(current.get("model_version") or "")[:120]
        update.previous_version = installed.get(current.get("sha256"))
    if table is None:  # a rollback: the one version this device had before
        artifacts, default, policy = (
            [
                manifests.artifact_entry(
                    "rollback",
                    update.model_version,
                    input_stats=_input_stats(update.model_version, estimates),
                )
            ],
            "rollback",
            {},
        )
    else:
        chosen = pick_variants(table, device.hardware_profile_id)
        artifacts = [
            manifests.artifact_entry(
                v.name,
                v.model_version,
                _estimate(v.model_version, device, estimates),
                _input_stats(v.model_version, estimates),
            )
            for v in chosen
        ]
        names = {a["name"] for a in artifacts}
        default = deployment.release.default_variant
        default = default if default in names else artifacts[0]["name"]
        policy = manifests.policy_for(deployment.release.policy, names)
    update.envelope = signer.envelope(
        device_uid=device.uid,
        deployment=deployment,
        version=version,
        artifacts=artifacts,
        default=default,
        policy=policy,
    )
    update.artifacts = [a["sha256"] for a in artifacts]
    update.manifest_version = version
    update.state = UpdateState.PENDING
    update.assigned_at = now


def refresh_manifests(now: datetime | None = None) -> int:
    """Re-sign pending manifests past half their lifetime, so a device that polls
    late never receives an expired one (U3 makes it refuse those)."""
    now = now or timezone.now()
    stale_before = now - timedelta(hours=settings.OTA_MANIFEST_TTL_H / 2)
    refreshed = 0
    for deployment in (
        Deployment.objects.filter(
            updates__state=UpdateState.PENDING, updates__assigned_at__lt=stale_before
        )
        .distinct()
        .select_related("release")
    ):
        try:
            refreshed += _refresh_deployment(deployment, stale_before, now)
        except Exception:  # one broken deployment must not let the others' manifests expire
            log.exception("re-signing the manifests of deployment %s failed", deployment.pk)
    return refreshed


def _refresh_deployment(deployment: Deployment, stale_before: datetime, now: datetime) -> int:
    with transaction.atomic():  # a savepoint: a failure rolls back only this deployment
        signer = manifests.Signer.now(now)
        table = (
            variants_by_profile(deployment.release)
            if deployment.kind == DeploymentKind.RELEASE
            else None
        )
        stale = list(
            deployment.updates.select_for_update(of=("self",))
            .filter(state=UpdateState.PENDING, assigned_at__lt=stale_before)
            .select_related("device", "model_version__model")
        )
        if not stale:
            return 0
        first = _claim_versions(len(stale))
        for offset, update in enumerate(stale):
            _sign_update(update, deployment, table, signer, first + offset, now, {})
        _store_assignments(stale)
        manifests.forget([u.device_id for u in stale])
    return len(stale)
