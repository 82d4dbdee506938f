"""Malformed input on the operator API is a 4xx with a reason, never a 500:
NUL bytes in list filters, a non-numeric query group, deleting a model that a
release still uses (issue 15, item 14)."""

from __future__ import annotations

import pytest

from compression.models import MLModel

pytestmark = pytest.mark.django_db

LISTS = [
    "/api/v1/devices/?uid=%00",
    "/api/v1/devices/?q=a%00b",
    "/api/v1/devices/?tag=%00",
    "/api/v1/device-updates/?state=%00",
    "/api/v1/deployments/?status=%00",
    "/api/v1/alerts/?state=%00",
    "/devices/?q=%00",
    "/deployments/?status=%00",
]


@pytest.mark.parametrize("url", LISTS)
def test_nul_in_a_list_filter_is_a_400(admin_api, url):
    response = admin_api.get(url)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "bad_query"


def test_nul_in_the_device_log_filter_is_a_400(admin_api, fleet):
    device = fleet[0][0]
    response = admin_api.get(f"/api/v1/devices/{device.uid}/logs/?level=%00")
    assert response.status_code == 400 and response.json()["code"] == "bad_query"


def test_filters_without_nul_still_work(admin_api, fleet):
    assert admin_api.get(f"/api/v1/devices/?uid={fleet[0][0].uid}").status_code == 200


@pytest.mark.parametrize("value", ["abc", "1.5", "-1"])
def test_a_query_group_that_is_not_an_id_is_a_400(admin_api, value):
    response = admin_api.get(f"/api/v1/devices/?query_group={value}")
    assert response.status_code == 400, response.content


def test_deleting_a_model_a_release_uses_is_a_409_with_the_reason(admin_api, release):
    model = release.variants.first().model_version.model
    response = admin_api.delete(f"/api/v1/models/{model.pk}/")
    assert response.status_code == 409, response.content
    body = response.json()
    assert body["code"] == "in_use" and "release variants" in body["detail"]
    assert MLModel.objects.filter(pk=model.pk).exists()


def test_deleting_a_model_a_release_uses_is_refused_in_the_admin(admin_client, release):
    model = release.variants.first().model_version.model
    url = f"/admin/compression/mlmodel/{model.pk}/delete/"
    page = admin_client.get(url)
    assert page.status_code == 200 and b"protected" in page.content.lower()
    assert admin_client.post(url, {"post": "yes"}).status_code in {200, 403}
    bulk = admin_client.post(
        "/admin/compression/mlmodel/",
        {"action": "delete_selected", "_selected_action": [model.pk], "post": "yes"},
    )
    assert bulk.status_code in {200, 302}
    assert MLModel.objects.filter(pk=model.pk).exists()


def test_a_refusal_raised_in_a_view_keeps_its_status_and_body(
    admin_api, admin_user, fleet, release
):
    from ota import services

    deployment = services.start_deployment(
        release, {"devices": [fleet[0][0].uid]}, actor=admin_user, phases=[100]
    )
    assert admin_api.post(f"/api/v1/deployments/{deployment.pk}/abort/").status_code == 200
    again = admin_api.post(f"/api/v1/deployments/{deployment.pk}/abort/")
    assert again.status_code == 409
    assert again.json() == {"detail": "Cannot abort a aborted deployment.", "code": "bad_state"}
    unknown = admin_api.post(
        "/api/v1/deployments/", {"release": 10**9, "target": {}}, format="json"
    )
    assert unknown.status_code == 400 and unknown.json()["code"] == "bad_release"
