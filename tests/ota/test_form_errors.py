"""Forms show every mistake at once; a deployment's phases each reach a device."""

from __future__ import annotations

import pytest

from fleet.refusal import Refusal, gather
from ota import services
from ota.models import Deployment, Release
from tests.ota.conftest import WIZARD_FORM, enroll

pytestmark = pytest.mark.django_db


def test_gather_raises_the_first_refusal_carrying_the_others():
    def refuse(code):
        def check():
            raise Refusal(code, code.upper(), field=code)

        return check

    assert gather(lambda: 1, lambda: 2) == [1, 2]
    with pytest.raises(Refusal) as caught:
        gather(refuse("a"), lambda: 2, refuse("b"))
    assert [r.code for r in caught.value.every()] == ["a", "b"]
    body = caught.value.body()
    assert body["code"] == "a" and [e["code"] for e in body["errors"]] == ["a", "b"]


@pytest.fixture
def small_fleet(enrollment, v1):
    return [enroll(enrollment, f"cam-{i:02d}", installed=v1) for i in range(3)]


def test_start_deployment_refuses_a_phase_that_adds_no_device(
    small_fleet, release, operator_user, admin_user
):
    # 3 devices: 1 % and 10 % both reach 1 device
    with pytest.raises(services.OtaError) as caught:
        services.start_deployment(
            release, {"tags": ["cam"]}, actor=operator_user, phases=[1, 10, 100]
        )
    assert caught.value.code == "empty_phases" and caught.value.field == "phases"
    assert "phase(s) 2" in caught.value.message
    with pytest.raises(services.OtaError) as caught:
        services.start_deployment(
            release, {"tags": ["cam"]}, actor=operator_user, phases=[50, 10, 100]
        )
    assert caught.value.code == "bad_phases"
    assert not Deployment.objects.exists()
    # the preview names the same phases (one rule: services.empty_phases)
    assert services.preview({"tags": ["cam"]}, [1, 10, 100])["empty_phases"] == [2]
    ok = services.start_deployment(release, {"tags": ["cam"]}, actor=admin_user, phases=[34, 100])
    assert ok.phases == [34, 100]


def test_api_refuses_empty_phases_with_its_code(small_fleet, release, operator_api):
    response = operator_api.post(
        "/api/v1/deployments/",
        {"release": release.pk, "target": {"tags": ["cam"]}, "phases": [1, 10, 100]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "empty_phases" and response.json()["field"] == "phases"


def test_api_answers_every_independent_mistake(small_fleet, release, operator_api):
    response = operator_api.post(
        "/api/v1/deployments/",
        {
            "release": release.pk,
            "target": {"tags": "cam"},
            "phases": [50, 10],
            "install_window": {"start": "25:00", "end": "x"},
        },
        format="json",
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "bad_target"  # the first, as before
    assert [e["code"] for e in body["errors"]] == ["bad_target", "bad_phases", "bad_window"]


def test_wizard_shows_every_error_at_once(client, operator_user, small_fleet, release):
    client.force_login(operator_user)
    response = client.post(
        "/deployments/new/",
        {
            **WIZARD_FORM,
            "release": release.pk,
            "phases": "50, 10, 100",
            "window_start": "25:99",
            "window_end": "02:00",
        },
    )
    text = response.content.decode()
    assert response.status_code == 400
    assert "phase percentages must increase" in text and "Install window" in text
    empty = client.post(
        "/deployments/new/", {**WIZARD_FORM, "release": release.pk, "phases": "1, 10, 100"}
    )
    assert empty.status_code == 400 and "would add no device" in empty.content.decode()
    malformed = client.post("/deployments/new/", {**WIZARD_FORM, "release": "x", "phases": "a, b"})
    assert malformed.status_code == 400
    assert not Deployment.objects.exists()


def test_wizard_wrong_role(client, viewer_user, small_fleet, release):
    client.force_login(viewer_user)
    assert (
        client.post("/deployments/new/", {**WIZARD_FORM, "release": release.pk}).status_code == 403
    )


def test_release_form_shows_every_error_at_once(client, operator_user, v2):
    client.force_login(operator_user)
    services.create_release(name="taken", variants=[{"model_version": v2.pk}])
    response = client.post(
        "/deployments/releases/new/",
        {
            "name": "taken",
            "slot": "default",
            "default_variant": "default",
            "policy": "",
            "variant_0_name": "default",
            "variant_0_version": v2.pk,
            "variant_1_name": "default",
            "variant_1_version": v2.pk,
        },
    )
    text = response.content.decode()
    assert response.status_code == 400
    assert "A release needs a unique name." in text
    assert "Variant default is listed twice for one profile." in text
    assert Release.objects.count() == 1
    malformed = client.post("/deployments/releases/new/", {"name": "", "variant_0_version": "x"})
    assert malformed.status_code == 400
