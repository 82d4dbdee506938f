"""The fleet: hardware profiles, groups and tags, devices and their credentials,
telemetry and logs, per-minute rollups, alerts, and the server's signing key."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from devices.choices import AlertKind, AlertState, Arch, DeviceStatus, ExecutionProvider, LogLevel


class HardwareProfile(models.Model):
    """A class of device: what compression jobs measure for and releases target.

    Server-side benchmarks run with `intra_op_threads` and `execution_provider`
    of the profile on the server's CPU, so they are *estimates* for the device.
    """

    slug = models.SlugField(unique=True)
    name = models.CharField(_("name"), max_length=120)
    description = models.TextField(_("description"), blank=True)
    arch = models.CharField(
        _("architecture"), max_length=20, choices=Arch.choices, default=Arch.AARCH64
    )
    intra_op_threads = models.PositiveSmallIntegerField(_("intra-op threads"), default=1)
    execution_provider = models.CharField(
        _("execution provider"),
        max_length=40,
        choices=ExecutionProvider.choices,
        default=ExecutionProvider.CPU,
    )
    ram_mb = models.PositiveIntegerField(_("RAM (MB)"), default=1024)

    class Meta:
        ordering = ["name"]
        verbose_name = _("hardware profile")
        verbose_name_plural = _("hardware profiles")

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    name = models.SlugField(_("name"), max_length=64, unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("tag")
        verbose_name_plural = _("tags")

    def __str__(self) -> str:
        return self.name


class DeviceGroup(models.Model):
    name = models.CharField(_("name"), max_length=120, unique=True)
    description = models.TextField(_("description"), blank=True)
    # None: settings.DEVICE_OFFLINE_AFTER_S. A line camera is late after minutes,
    # a battery sensor that wakes hourly is not.
    offline_after_s = models.PositiveIntegerField(_("offline after (s)"), null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("device group")
        verbose_name_plural = _("device groups")

    def __str__(self) -> str:
        return self.name

    @property
    def offline_threshold_s(self) -> int:
        return self.offline_after_s or settings.DEVICE_OFFLINE_AFTER_S


class QueryGroup(models.Model):
    """A saved filter over devices, e.g. `hardware=rpi4 and tag=line-3`.

    The grammar lives in `devices.query`; `devices()` is usable wherever a group is.
    """

    name = models.CharField(_("name"), max_length=120, unique=True)
    query = models.CharField(_("query"), max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("query group")
        verbose_name_plural = _("query groups")

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from devices.query import validate_query

        validate_query(self.query)

    def devices(self):
        from devices.query import filter_by_query

        return filter_by_query(Device.objects.all(), self.query)


class Device(models.Model):
    uid = models.CharField(_("device id"), max_length=64, unique=True)
    name = models.CharField(_("name"), max_length=120, blank=True)
    group = models.ForeignKey(
        DeviceGroup,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="devices",
        verbose_name=_("group"),
    )
    tags = models.ManyToManyField(Tag, blank=True, related_name="devices", verbose_name=_("tags"))
    hardware_profile = models.ForeignKey(
        HardwareProfile,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="devices",
        verbose_name=_("hardware profile"),
    )
    # arch, cpu, ram_mb, os, onnxruntime, execution_providers, agent_version,
    # models: {slot: {"model_version": ..., "sha256": ...}}
    inventory = models.JSONField(_("inventory"), default=dict, blank=True)
    # Denormalized from the inventory's "default" slot so the fleet can be
    # filtered and counted by it with an index, at 100k devices.
    model_version = models.CharField(_("model version"), max_length=120, blank=True, db_index=True)
    agent_version = models.CharField(_("agent version"), max_length=40, blank=True)
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=DeviceStatus.choices,
        default=DeviceStatus.ONLINE,
        db_index=True,
    )
    last_seen = models.DateTimeField(_("last seen"), null=True, blank=True, db_index=True)
    enrolled_with = models.ForeignKey(
        "EnrollmentToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="devices"
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        ordering = ["uid"]
        verbose_name = _("device")
        verbose_name_plural = _("devices")

    def __str__(self) -> str:
        return self.name or self.uid

    def mark_revoked(self) -> None:
        self.status = DeviceStatus.REVOKED
        self.save(update_fields=["status"])

    def move_to(self, group: DeviceGroup | None) -> None:
        self.group = group
        self.save(update_fields=["group"])


class EnrollmentToken(models.Model):
    """A shared secret a batch of devices enrolls with; stored hashed like credentials."""

    name = models.CharField(_("name"), max_length=120)
    prefix = models.CharField(max_length=16, db_index=True)
    token_hash = models.CharField(max_length=64, unique=True)
    group = models.ForeignKey(
        DeviceGroup,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="enrollment_tokens",
        verbose_name=_("group"),
    )
    tags = models.ManyToManyField(
        Tag, blank=True, related_name="enrollment_tokens", verbose_name=_("tags")
    )
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    max_uses = models.PositiveIntegerField(_("max uses"), null=True, blank=True)
    uses = models.PositiveIntegerField(_("uses"), default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("enrollment token")
        verbose_name_plural = _("enrollment tokens")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_usable(self) -> bool:
        if self.revoked_at is not None:
            return False
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return False
        return self.max_uses is None or self.uses < self.max_uses

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class DeviceCredential(models.Model):
    """A device token: only its sha256 is stored; `prefix` finds the row."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="credentials")
    prefix = models.CharField(max_length=16, db_index=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("device credential")
        verbose_name_plural = _("device credentials")

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.device_id})"


class TelemetryPoint(models.Model):
    """One raw sample. Narrow typed columns: this table holds tens of millions of rows.

    Rows are written only by `devices.ingest` (one multi-row INSERT … ON CONFLICT
    DO NOTHING per batch); `(device, boot_id, seq, ts)` makes a resent point a
    no-op (the agent resends a record unchanged). On PostgreSQL the table is
    partitioned by day (`devices.partitions`, migration 0009): the unique key
    must hold the partition key `ts`; a BRIN index on `ts` serves time scans.
    """

    # No database FK constraint: its per-row trigger (a FOR KEY SHARE lookup of
    # the device for each of 500 rows per batch) cost ~30 % of insert CPU.
    # Devices are revoked, not deleted, while they report; deleting one still
    # removes its rows through Django's cascade, and retention sweeps the rest.
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, db_index=False, db_constraint=False, related_name="+"
    )
    boot_id = models.CharField(max_length=40)
    seq = models.BigIntegerField()
    ts = models.DateTimeField()
    model_version = models.CharField(max_length=120, blank=True)
    latency_ms = models.FloatField(null=True)
    throughput = models.FloatField(null=True)
    mem_mb = models.FloatField(null=True)
    cpu_pct = models.FloatField(null=True)
    temp_c = models.FloatField(null=True)
    battery_pct = models.FloatField(null=True)
    power_w = models.FloatField(null=True)
    inferences = models.IntegerField(null=True)
    errors = models.IntegerField(null=True)
    extra = models.JSONField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "boot_id", "seq", "ts"], name="telemetry_device_boot_seq"
            )
        ]
        indexes = [models.Index(fields=["device", "ts"], name="telemetry_device_ts")]

    def __str__(self) -> str:
        return f"{self.device_id}/{self.boot_id}/{self.seq}"


class LogLine(models.Model):
    # No database FK constraint, for the same reason as TelemetryPoint.device.
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, db_index=False, db_constraint=False, related_name="+"
    )
    boot_id = models.CharField(max_length=40)
    seq = models.BigIntegerField()
    ts = models.DateTimeField()
    level = models.CharField(max_length=10, choices=LogLevel.choices, default=LogLevel.INFO)
    message = models.TextField()
    # A plain id, not a FK: ota depends on devices, never the reverse.
    deployment_id = models.BigIntegerField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "boot_id", "seq", "ts"], name="log_device_boot_seq"
            )
        ]
        indexes = [models.Index(fields=["device", "ts"], name="log_device_ts")]

    def __str__(self) -> str:
        return f"[{self.level}] {self.message[:80]}"


class TelemetryRollup(models.Model):
    """Per device and minute: what dashboards read instead of raw points."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, db_index=False, related_name="+")
    minute = models.DateTimeField()
    n = models.IntegerField()
    model_version = models.CharField(max_length=120, blank=True)
    latency_p50 = models.FloatField(null=True)
    latency_p95 = models.FloatField(null=True)
    throughput_mean = models.FloatField(null=True)
    mem_max = models.FloatField(null=True)
    cpu_mean = models.FloatField(null=True)
    temp_max = models.FloatField(null=True)
    battery_min = models.FloatField(null=True)
    power_mean = models.FloatField(null=True)
    inferences_sum = models.BigIntegerField(null=True)
    errors_sum = models.BigIntegerField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "minute"], name="rollup_device_minute")
        ]

    def __str__(self) -> str:
        return f"{self.device_id}@{self.minute:%Y-%m-%d %H:%M}"


class DropReport(models.Model):
    """Records an agent's bounded offline buffer dropped (docs/reliability.md E3).

    Keyed by the batch that carried the count, so a resent batch does not count
    twice; a resend may carry a larger count (more dropped meanwhile): keep the max.
    """

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="drop_reports")
    kind = models.CharField(max_length=16)  # telemetry | logs
    boot_id = models.CharField(max_length=40)
    first_seq = models.BigIntegerField()
    count = models.PositiveIntegerField()
    reported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "kind", "boot_id", "first_seq"], name="drop_report_batch"
            )
        ]

    def __str__(self) -> str:
        return f"{self.device_id}: {self.count} {self.kind} dropped"


class LatencyBaseline(models.Model):
    """The server's benchmark estimate of a model version on a hardware profile.

    Filled by whoever measures (compression jobs); keyed by the version label the
    devices report, so devices needs no import of compression.
    """

    model_version = models.CharField(max_length=120)
    hardware_profile = models.ForeignKey(
        HardwareProfile, on_delete=models.CASCADE, related_name="+"
    )
    p95_ms = models.FloatField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model_version", "hardware_profile"], name="baseline_version_profile"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_version} on {self.hardware_profile_id}: {self.p95_ms} ms"


class Alert(models.Model):
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=16, choices=AlertKind.choices)
    state = models.CharField(
        max_length=16, choices=AlertState.choices, default=AlertState.OPEN, db_index=True
    )
    message = models.CharField(max_length=300)
    detail = models.JSONField(default=dict, blank=True)
    opened_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "kind"],
                condition=models.Q(state=AlertState.OPEN),
                name="one_open_alert_per_kind",
            )
        ]

    def __str__(self) -> str:
        return self.message

    def resolve(self) -> None:
        self.state = AlertState.RESOLVED
        self.resolved_at = timezone.now()
        self.save(update_fields=["state", "resolved_at"])


class FleetSample(models.Model):
    """The fleet's health at one moment, written by a beat task: the overview charts
    online devices and open alerts over time from these rows."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    total = models.IntegerField()
    online = models.IntegerField()
    open_alerts = models.IntegerField()

    class Meta:
        ordering = ["at"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.online}/{self.total}"
