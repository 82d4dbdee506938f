"""`manage.py demo_enrollment_token`: one usable token for the demo group, printed alone."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from devices import services
from devices.models import Device, EnrollmentToken

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _var_dir(settings, tmp_path):
    settings.VAR_DIR = tmp_path


def run() -> str:
    out = io.StringIO()
    call_command("demo_enrollment_token", stdout=out)
    return out.getvalue()


def test_prints_only_the_token_and_enrolls_into_the_demo_group(tmp_path):
    printed = run()
    value = printed.strip()
    assert printed == value + "\n" and value.startswith("efe_") and " " not in value
    assert (tmp_path / "demo-enrollment-token").stat().st_mode & 0o777 == 0o600
    device, _token = services.enroll(value, {"uid": "demo-00000"})
    assert Device.objects.get(pk=device.pk).group.name == "demo"


def test_idempotent():
    first = run()
    assert run() == first
    assert EnrollmentToken.objects.count() == 1


def test_replaces_a_revoked_or_lost_token(tmp_path):
    first = run().strip()
    EnrollmentToken.objects.get().revoke()
    second = run().strip()
    assert second != first
    (tmp_path / "demo-enrollment-token").unlink()
    third = run().strip()
    assert third not in (first, second)
    services.enroll(third, {"uid": "demo-00001"})
    with pytest.raises(services.DeviceError):
        services.enroll(first, {"uid": "demo-00002"})
