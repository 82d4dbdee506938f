"""fleet.wsgi: device API requests take the lean middleware chain, the rest the full one."""

from __future__ import annotations

import json

import pytest


@pytest.mark.django_db
def test_device_api_skips_browser_middleware(call):
    answer = call("GET", "/api/v1/device/update")
    assert answer["status"] == 401
    assert "x-frame-options" not in answer["headers"]  # no clickjacking middleware
    assert "cookie" not in answer["headers"].get("vary", "").lower()  # no session/locale
    assert answer["headers"]["x-content-type-options"] == "nosniff"  # security headers kept
    assert answer["headers"]["content-length"] == str(len(answer["body"]))  # not chunked
    oversize = call("POST", "/api/v1/device/telemetry", CONTENT_LENGTH=str(10**12))
    assert oversize["status"] == 413  # the body limit is kept too


@pytest.mark.django_db
def test_other_paths_keep_the_full_stack(call):
    answer = call("GET", "/accounts/login/")
    assert answer["status"] == 200
    assert answer["headers"]["x-frame-options"] == "DENY"
    assert "csrftoken" in answer["headers"].get("set-cookie", "")
    assert (
        call(
            "POST",
            "/accounts/login/",
            b"username=a&password=b",
            CONTENT_TYPE="application/x-www-form-urlencoded",
        )["status"]
        == 403
    )  # CSRF


@pytest.mark.django_db
def test_device_handler_matches_only_device_routes(call):
    from django.urls import resolve, reverse

    missing = call("GET", "/api/v1/device/nothing-here")
    assert missing["status"] == 404 and missing["headers"]["content-type"] == "application/json"
    assert json.loads(missing["body"])["code"] == "not_found"
    # The root URLconf still has every device route, under the same names.
    for name, path in [
        ("device-telemetry", "/api/v1/device/telemetry"),
        ("device-update", "/api/v1/device/update"),
        ("device-enroll", "/api/v1/device/enroll"),
    ]:
        assert reverse(name) == path and resolve(path).url_name == name
    assert reverse("device-artifact", args=["a" * 64]) == f"/api/v1/device/artifacts/{'a' * 64}"
    assert call("POST", "/api/v1/device/logs", b"{}")["status"] == 401  # routed, then refused
