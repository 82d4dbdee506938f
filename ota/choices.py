from django.db import models
from django.utils.translation import gettext_lazy as _


class DeploymentStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    SCHEDULED = "scheduled", _("Scheduled")
    RUNNING = "running", _("Running")
    PAUSED = "paused", _("Paused")
    COMPLETED = "completed", _("Completed")
    ABORTED = "aborted", _("Aborted")
    ROLLED_BACK = "rolled_back", _("Rolled back")


class DeploymentKind(models.TextChoices):
    RELEASE = "release", _("Release")
    ROLLBACK = "rollback", _("Rollback")


class UpdateState(models.TextChoices):
    QUEUED = "queued", _("Waiting for its phase")
    PENDING = "pending", _("Pending")
    DOWNLOADING = "downloading", _("Downloading")
    DOWNLOADED = "downloaded", _("Downloaded")
    INSTALLING = "installing", _("Installing")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    ROLLED_BACK = "rolled_back", _("Rolled back")
    CANCELLED = "cancelled", _("Cancelled")
    SUPERSEDED = "superseded", _("Superseded")


# Assigned to a device and not finished: what check-in serves.
ACTIVE_STATES = (
    UpdateState.PENDING,
    UpdateState.DOWNLOADING,
    UpdateState.DOWNLOADED,
    UpdateState.INSTALLING,
)
FINAL_STATES = (
    UpdateState.SUCCEEDED,
    UpdateState.FAILED,
    UpdateState.ROLLED_BACK,
    UpdateState.CANCELLED,
    UpdateState.SUPERSEDED,
)
# What a device may report, and from which states (the agent may skip steps:
# a cached artifact goes straight to installing; a refused manifest straight to failed).
REPORTABLE = {
    UpdateState.DOWNLOADING: {UpdateState.PENDING, UpdateState.DOWNLOADING},
    UpdateState.DOWNLOADED: {UpdateState.PENDING, UpdateState.DOWNLOADING, UpdateState.DOWNLOADED},
    UpdateState.INSTALLING: {
        UpdateState.PENDING,
        UpdateState.DOWNLOADING,
        UpdateState.DOWNLOADED,
        UpdateState.INSTALLING,
    },
    UpdateState.SUCCEEDED: {*ACTIVE_STATES, UpdateState.SUCCEEDED},
    UpdateState.FAILED: {*ACTIVE_STATES, UpdateState.FAILED},
    UpdateState.ROLLED_BACK: {*ACTIVE_STATES, UpdateState.ROLLED_BACK},
}
