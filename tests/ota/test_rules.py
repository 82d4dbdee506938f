"""Each rule has one owner: the admin's model checks give the service's answer."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from ota import services
from ota.models import Deployment, Release

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "phases, gates",
    [
        ([50, 10], [{}, {}]),
        ([10, 100], [{}]),
        ([10, 100], [{"max_failure_rate": "lots"}, {}]),
        ([10, 100], [{}, {"min_successful": -1}]),
    ],
)
def test_deployment_clean_is_clean_phases(phases, gates):
    with pytest.raises(services.OtaError) as refused:
        services.clean_phases(phases, gates)
    with pytest.raises(ValidationError) as invalid:
        Deployment(phases=phases, gates=gates).clean()
    assert refused.value.message in str(invalid.value)


def test_deployment_clean_accepts_what_the_service_accepts():
    Deployment(phases=[10, 100], gates={"max_failure_rate": 0.1}).clean()


def test_release_clean_is_the_service_policy_rule():
    policy = {"rules": [{"when": {"battery_pct": {"lt": 20}}, "use": "int8"}]}
    with pytest.raises(services.OtaError) as refused:
        services.check_release_policy(policy, {"default"})
    with pytest.raises(ValidationError) as invalid:
        Release(name="r", default_variant="default", policy=policy).clean()
    assert refused.value.message in str(invalid.value)
