"""CLI fixtures: a CI persona (the `ci` role, as a pipeline's token) and the demo files."""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURES, _make_user, token_client

DEMO_MODEL = FIXTURES / "digits_cnn.onnx"
DEMO_CALIBRATION = FIXTURES / "digits_calibration.npz"
DEMO_EVAL = FIXTURES / "digits_eval.npz"
# `edgefleet push` of the demo model with both its datasets
PUSH_DEMO = (
    "push",
    DEMO_MODEL,
    "--name",
    "digits-cnn",
    "--calibration",
    DEMO_CALIBRATION,
    "--eval",
    DEMO_EVAL,
)


@pytest.fixture
def ci_user(db, django_user_model):
    return _make_user(django_user_model, "cici-pipeline", "ci")


@pytest.fixture
def ci_api(ci_user):
    return token_client(ci_user)


@pytest.fixture
def ci_token(ci_user) -> str:
    from rest_framework.authtoken.models import Token

    return Token.objects.get_or_create(user=ci_user)[0].key


@pytest.fixture
def enrollment(db, admin_user):
    """An enrollment token into group `line-3`, with the seeded hardware profiles."""
    import importlib

    from django.apps import apps

    from devices import services
    from devices.models import DeviceGroup

    importlib.import_module("devices.migrations.0002_seed_hardware_profiles").seed(apps, None)
    group = DeviceGroup.objects.get_or_create(name="line-3")[0]
    return services.create_enrollment_token(name="batch", actor=admin_user, group=group)
