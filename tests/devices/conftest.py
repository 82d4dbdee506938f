"""Device personas: two enrolled devices with their own bearer clients."""

from __future__ import annotations

import time

import pytest

from tests.conftest import bearer, seed_hardware_profiles


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
    seed_hardware_profiles()


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
