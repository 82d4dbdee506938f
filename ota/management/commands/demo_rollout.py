"""Roll the demo job's chosen variant out to the demo fleet, once (used by `make run`).

Waits until the simulated devices have enrolled, then creates the release
"digits-cnn demo" (the chosen candidate of the demo job, else the source
version) and a two-phase deployment to the "demo" group with a short soak, so
the first `make run` shows a rollout that completes by itself. It also seeds
the release "digits-cnn slow demo" (variant `slow-demo`, which `make run`'s
simulator runs 3× slower than its estimate): deploy it to see a gate pause.
"""

from __future__ import annotations

import os
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from compression.models import Candidate, ModelVersion
from devices.models import DeviceGroup
from ota import services
from ota.models import Release

DEMO_RELEASE = "digits-cnn demo"
SLOW_RELEASE = "digits-cnn slow demo"
SLOW_VARIANT = "slow-demo"


def demo_version() -> ModelVersion | None:
    chosen = (
        Candidate.objects.filter(chosen=True, version__isnull=False)
        .select_related("version")
        .order_by("-pk")
        .first()
    )
    if chosen is not None:
        return chosen.version
    return ModelVersion.objects.filter(model__name="digits-cnn").order_by("pk").first()


class Command(BaseCommand):
    help = "Once the demo devices enrolled, deploy the demo release to them (once)."

    def add_arguments(self, parser):
        parser.add_argument("--devices", type=int, default=1, help="wait for this many")
        parser.add_argument("--wait-s", type=float, default=300)
        parser.add_argument("--soak-s", type=int, default=int(os.environ.get("DEMO_SOAK_S", "30")))

    def handle(self, *args, devices=1, wait_s=300.0, soak_s=30, **options):
        if Release.objects.filter(name=DEMO_RELEASE).exists():
            self.stdout.write("Demo release exists; no new demo rollout.")
            return
        version = demo_version()
        if version is None:
            self.stderr.write("No demo model loaded (seed_demo); no demo rollout.")
            return
        deadline = time.monotonic() + wait_s
        group = None
        while time.monotonic() < deadline:
            group = DeviceGroup.objects.filter(name="demo").first()
            if group is not None and group.devices.count() >= devices:
                break
            time.sleep(1)
        else:
            self.stderr.write("Demo devices did not enroll in time; no demo rollout.")
            return
        release = services.create_release(
            name=DEMO_RELEASE,
            notes="The demo job's chosen variant (make run).",
            variants=[{"name": "default", "model_version": version}],
        )
        services.create_release(
            name=SLOW_RELEASE,
            notes="Runs 3× slower than its estimate on the simulated "
            "devices: deploy it to see the latency gate pause.",
            variants=[{"name": SLOW_VARIANT, "model_version": version}],
        )
        gate = {"min_soak_s": soak_s, "min_successful": 1, "min_latency_samples": 3}
        admin = get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
        deployment = services.start_deployment(
            release, {"groups": [group.pk]}, actor=admin, phases=[40, 100], gates=gate
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo deployment {deployment.pk}: {release.name} to {group.devices.count()} "
                "devices in 2 phases."
            )
        )
