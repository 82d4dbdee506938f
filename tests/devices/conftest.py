"""Device personas: two enrolled devices with their own bearer clients."""

from __future__ import annotations

import time

import pytest


def bearer(token: str):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def points(first: int, last: int, *, boot: str = "boot-1", **values) -> list[dict]:
    now = time.time()
    return [
        {
            "seq": seq,
            "boot_id": boot,
            "ts": now - (last - seq) * 0.1,
            "model_version": "digits:3",
            "latency_ms": 10.0 + seq % 7,
            "cpu_pct": 30.0,
            "mem_mb": 120.0,
            "throughput": 50.0,
            **values,
        }
        for seq in range(first, last + 1)
    ]


def log_lines(
    first: int, last: int, *, boot: str = "boot-1", level: str = "info", ts: float | None = None
):
    now = time.time() if ts is None else ts
    return [
        {"seq": seq, "boot_id": boot, "ts": now, "level": level, "message": f"line {seq}"}
        for seq in range(first, last + 1)
    ]


@pytest.fixture(autouse=True)
def _hardware_profiles(request):
    """Transactional tests flush the profiles migration 0002 seeded: put them back."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    transactional = marker.kwargs.get("transaction") or (marker.args and marker.args[0])
    request.getfixturevalue("transactional_db" if transactional else "db")
    import importlib

    from django.apps import apps

    importlib.import_module("devices.migrations.0002_seed_hardware_profiles").seed(apps, None)


@pytest.fixture
def group(db):
    from devices.models import DeviceGroup

    return DeviceGroup.objects.create(name="line-3")


@pytest.fixture
def enrollment(db, group, admin_user):
    """(token row, plaintext) of a token that enrolls into `group` with tag `cam`."""
    from devices import services

    return services.create_enrollment_token(
        name="batch 1", actor=admin_user, group=group, tags=["cam"]
    )


def _enroll(enrollment, uid: str):
    from devices import services

    device, token = services.enroll(enrollment[1], {"uid": uid, "hardware_profile": "rpi4"})
    return device, token


@pytest.fixture
def device_a(enrollment):
    return _enroll(enrollment, "cam-a")


@pytest.fixture
def device_b(enrollment):
    return _enroll(enrollment, "cam-b")


@pytest.fixture
def api_a(device_a):
    return bearer(device_a[1])


@pytest.fixture
def api_b(device_b):
    return bearer(device_b[1])
