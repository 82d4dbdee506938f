"""Releases, deployments and per-device updates.

A `Deployment` owns its status; every change of status is a conditional UPDATE
(`_move`) so the gate task, an operator's click and a redelivered task never
both win. A `DeviceUpdate` is one device's part of a deployment, with the
signed envelope it is served at check-in.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ota.choices import (
    ACTIVE_STATES,
    FINAL_STATES,
    REPORTABLE,
    DeploymentKind,
    DeploymentStatus,
    UpdateState,
)
from ota.gates import GateConfig


def version_label(model_version) -> str:
    """The label devices report in inventory and telemetry (`digits:3`)."""
    return model_version.device_label


class Release(models.Model):
    name = models.CharField(_("name"), max_length=120, unique=True)
    slot = models.SlugField(_("slot"), max_length=64, default="default")
    notes = models.TextField(_("notes"), blank=True)
    # Name of the variant to run when no policy rule matches.
    default_variant = models.SlugField(_("default variant"), max_length=40, default="default")
    policy = models.JSONField(_("switching policy"), default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("release")
        verbose_name_plural = _("releases")

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """The admin's check: the rule is `ota.services.check_release_policy`."""
        from ota import services

        names = set(self.variants.values_list("name", flat=True)) if self.pk else set()
        names.add(self.default_variant)
        try:
            services.check_release_policy(self.policy, names)
        except services.OtaError as exc:
            raise ValidationError({"policy": exc.message}) from None


class ReleaseVariant(models.Model):
    """One artifact of a release; `hardware_profile` None = for any device."""

    release = models.ForeignKey(Release, on_delete=models.CASCADE, related_name="variants")
    name = models.SlugField(_("name"), max_length=40, default="default")
    model_version = models.ForeignKey(
        "compression.ModelVersion", on_delete=models.PROTECT, related_name="release_variants"
    )
    hardware_profile = models.ForeignKey(
        "devices.HardwareProfile", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["release", "hardware_profile", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["release", "hardware_profile", "name"], name="ota_variant_unique"
            ),
            models.UniqueConstraint(
                fields=["release", "name"],
                condition=Q(hardware_profile__isnull=True),
                name="ota_generic_variant_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.release}/{self.name}@{self.hardware_profile or '*'}"


class Deployment(models.Model):
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="deployments")
    kind = models.CharField(
        max_length=16, choices=DeploymentKind.choices, default=DeploymentKind.RELEASE
    )
    slot = models.SlugField(max_length=64)
    # {"groups": [id], "query_groups": [id], "tags": [name], "hardware_profiles": [slug],
    #  "devices": [uid]}: a device matching any entry is targeted.
    target = models.JSONField(default=dict, blank=True)
    phases = models.JSONField(default=list)  # cumulative percents, last = 100
    gates = models.JSONField(default=list)  # one GateConfig dict per phase
    status = models.CharField(
        max_length=16,
        choices=DeploymentStatus.choices,
        default=DeploymentStatus.DRAFT,
        db_index=True,
    )
    current_phase = models.IntegerField(default=-1)
    pause_reason = models.TextField(blank=True)
    gate_report = models.JSONField(default=dict, blank=True)  # last evaluation
    target_count = models.IntegerField(default=0)
    # Devices reached without a passing gate: the first phase plus every phase
    # entered by manual approval (the "fleet-wide needs admin" rule counts these).
    ungated_count = models.IntegerField(default=0)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    install_window = models.JSONField(null=True, blank=True)  # {"start": "HH:MM", "end": ...}
    # Shadow mode: {"inferences", "seconds", "min_agreement"} (devices.agent.shadow.parse)
    shadow = models.JSONField(null=True, blank=True)
    rollback_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rollbacks"
    )
    # Bumped by every status or phase change: a claim names the step it saw.
    step = models.IntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    phase_started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("deployment")
        verbose_name_plural = _("deployments")

    def __str__(self) -> str:
        return f"#{self.pk} {self.release}"

    def clean(self) -> None:
        """The admin's check: the rule is `ota.services.clean_phases`."""
        from ota import services

        try:
            services.clean_phases(self.phases, self.gates)
        except services.OtaError as exc:
            field = "gates" if (exc.field or "").startswith("gates") else "phases"
            raise ValidationError({field: exc.message}) from None

    def gate_config(self, phase: int) -> GateConfig:
        return GateConfig.from_dict(self.gates[phase] if phase < len(self.gates) else {})

    @property
    def is_live(self) -> bool:
        return self.status in (DeploymentStatus.RUNNING, DeploymentStatus.SCHEDULED)

    @property
    def polls(self) -> bool:
        """The page keeps refreshing: paused deployments still have devices finishing."""
        return self.is_live or self.status == DeploymentStatus.PAUSED

    @property
    def can_pause(self) -> bool:
        return self.status in (DeploymentStatus.RUNNING, DeploymentStatus.SCHEDULED)

    @property
    def can_resume(self) -> bool:
        return self.status == DeploymentStatus.PAUSED

    @property
    def can_abort(self) -> bool:
        return self.status in (
            DeploymentStatus.RUNNING,
            DeploymentStatus.PAUSED,
            DeploymentStatus.SCHEDULED,
            DeploymentStatus.DRAFT,
        )

    @property
    def can_roll_back(self) -> bool:
        return self.kind == DeploymentKind.RELEASE and self.status in (
            DeploymentStatus.RUNNING,
            DeploymentStatus.PAUSED,
            DeploymentStatus.COMPLETED,
            DeploymentStatus.ABORTED,
        )

    # --- state transitions: each a conditional UPDATE; False when another actor won ----
    def _move(self, to: str, sources, **fields) -> bool:
        moved = Deployment.objects.filter(pk=self.pk, status__in=list(sources)).update(
            status=to, step=F("step") + 1, **fields
        )
        if moved:
            self.refresh_from_db()
        return bool(moved)

    def pause(self, reason: str) -> bool:
        return self._move(
            DeploymentStatus.PAUSED,
            [DeploymentStatus.RUNNING, DeploymentStatus.SCHEDULED],
            pause_reason=reason[:2000],
        )

    def resume(self) -> bool:
        return self._move(
            DeploymentStatus.RUNNING,
            [DeploymentStatus.PAUSED],
            pause_reason="",
            phase_started_at=timezone.now(),
        )

    def abort(self) -> bool:
        return self._move(
            DeploymentStatus.ABORTED,
            [
                DeploymentStatus.RUNNING,
                DeploymentStatus.PAUSED,
                DeploymentStatus.SCHEDULED,
                DeploymentStatus.DRAFT,
            ],
            finished_at=timezone.now(),
        )

    def complete(self) -> bool:
        return self._move(
            DeploymentStatus.COMPLETED, [DeploymentStatus.RUNNING], finished_at=timezone.now()
        )

    def mark_rolled_back(self) -> bool:
        return self._move(
            DeploymentStatus.ROLLED_BACK,
            [
                DeploymentStatus.RUNNING,
                DeploymentStatus.PAUSED,
                DeploymentStatus.COMPLETED,
                DeploymentStatus.ABORTED,
            ],
            finished_at=timezone.now(),
        )


class ManifestSequence(models.Model):
    """One row: the last manifest version handed out. Global, hence monotonic per
    device and slot; the row lock orders concurrent assignments."""

    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return str(self.value)


class DeviceUpdate(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="updates")
    device = models.ForeignKey(
        "devices.Device", on_delete=models.CASCADE, related_name="ota_updates"
    )
    slot = models.SlugField(max_length=64)
    phase = models.IntegerField(default=0)
    state = models.CharField(max_length=16, choices=UpdateState.choices, default=UpdateState.QUEUED)
    manifest_version = models.BigIntegerField(null=True, blank=True)
    model_version = models.ForeignKey(
        "compression.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    model_label = models.CharField(max_length=120, blank=True)
    previous_version = models.ForeignKey(
        "compression.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    previous_label = models.CharField(max_length=120, blank=True)
    envelope = models.JSONField(null=True, blank=True)  # signed once, served as is
    artifacts = models.JSONField(default=list, blank=True)  # sha256s the device may fetch
    attempts = models.IntegerField(default=0)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=40, blank=True)
    shadow = models.JSONField(null=True, blank=True)  # the device's shadow evaluation
    assigned_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "device"], name="ota_update_once_per_deployment"
            )
        ]
        indexes = [
            models.Index(fields=["device", "slot", "state"], name="ota_update_device_state"),
            models.Index(fields=["deployment", "phase", "state"], name="ota_update_phase_state"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id}/{self.slot} v{self.manifest_version} {self.state}"

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def can_report(self, state: str) -> bool:
        return self.state in REPORTABLE.get(state, ())


class ServerKey(models.Model):
    """The server's Ed25519 signing key (manifests). One active at a time."""

    private_key_pem = models.TextField()
    public_key_b64 = models.CharField(max_length=64)
    fingerprint = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    active = models.BooleanField(default=True)

    class Meta:
        # Moved here from the devices app: the table keeps its first name.
        db_table = "devices_serverkey"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["active"], condition=models.Q(active=True), name="one_active_server_key"
            )
        ]

    def __str__(self) -> str:
        return f"ed25519:{self.fingerprint[:16]}"


class BenchmarkRequest(models.Model):
    """An operator's ask: measure these versions on these devices before any rollout."""

    versions = models.ManyToManyField("compression.ModelVersion", related_name="+")
    target = models.JSONField(default=dict)
    inferences = models.PositiveIntegerField(default=200)
    expires_at = models.DateTimeField()
    job = models.ForeignKey(
        "compression.CompressionJob",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"benchmark {self.pk}"


class BenchmarkRun(models.Model):
    """One device's part of a request: its signed envelope and what became of it."""

    request = models.ForeignKey(BenchmarkRequest, on_delete=models.CASCADE, related_name="runs")
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="+")
    envelope = models.JSONField(null=True, blank=True)
    state = models.CharField(max_length=16, default="pending")  # pending|done|refused
    error_code = models.CharField(max_length=40, blank=True)
    error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["request", "device"], name="uniq_benchmark_run")
        ]
        indexes = [models.Index(fields=["device", "state"], name="benchmark_run_device_state")]

    def __str__(self) -> str:
        return f"benchmark {self.request_id} on device {self.device_id}: {self.state}"

    @classmethod
    def waiting(cls, device_id: int):
        """This device's runs still to do: pending, their request not expired."""
        return cls.objects.filter(
            device_id=device_id, state="pending", request__expires_at__gt=timezone.now()
        )


class BenchmarkResult(models.Model):
    """Measured on a device, per (version, device, hardware profile), with the estimate
    the server had for that version on that profile."""

    run = models.ForeignKey(BenchmarkRun, on_delete=models.CASCADE, related_name="results")
    model_version = models.ForeignKey(
        "compression.ModelVersion", on_delete=models.CASCADE, related_name="+"
    )
    hardware_profile = models.ForeignKey(
        "devices.HardwareProfile",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    state = models.CharField(max_length=16, default="pending")  # pending|succeeded|failed
    predicted_p95_ms = models.FloatField(null=True)
    p50_ms = models.FloatField(null=True)
    p95_ms = models.FloatField(null=True)
    p99_ms = models.FloatField(null=True)
    throughput = models.FloatField(null=True)
    peak_rss_mb = models.FloatField(null=True)
    load_ms = models.FloatField(null=True)
    cpu_pct = models.FloatField(null=True)
    energy_mj = models.FloatField(null=True)
    avg_power_w = models.FloatField(null=True)
    error = models.TextField(blank=True)
    measured_at = models.DateTimeField(null=True, blank=True)

    # The figures a device measures and reports, in the order the API lists them.
    FIGURES = (
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "throughput",
        "peak_rss_mb",
        "load_ms",
        "cpu_pct",
        "energy_mj",
        "avg_power_w",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "model_version"], name="uniq_benchmark_result")
        ]

    def __str__(self) -> str:
        return f"{self.model_version_id} on run {self.run_id}: {self.state}"
