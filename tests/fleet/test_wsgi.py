"""fleet.wsgi: device API requests take the lean middleware chain, the rest the full one."""

from __future__ import annotations

import io
import json
import sys

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections


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


@pytest.mark.django_db
def test_unknown_token_limit_is_per_real_client_behind_the_proxy(settings):
    """Behind nginx (TRUSTED_PROXIES) the limit on unknown device tokens counts the
    forwarded client address; a direct client cannot dodge it with the header."""
    from django.core.wsgi import get_wsgi_application

    from fleet.proxy import TrustedProxyHeaders

    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**rates, "device_auth_failure": "2/min"},
    }
    app = TrustedProxyHeaders(get_wsgi_application(), ["10.9.0.1"])

    def guess(n: int, remote: str, forwarded: str = "") -> int:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/api/v1/device/update",
            "QUERY_STRING": "",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
            "REMOTE_ADDR": remote,
            "HTTP_AUTHORIZATION": f"Bearer efd_proxyguess{n:04d}{'0' * 28}",
        }
        if forwarded:
            environ["HTTP_X_FORWARDED_FOR"] = forwarded
        status = {}
        b"".join(app(environ, lambda s, h, e=None: status.setdefault("code", int(s[:3]))))
        return status["code"]

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        assert [guess(n, "10.9.0.1", "203.0.113.5") for n in range(3)] == [401, 401, 429]
        assert guess(3, "10.9.0.1", "203.0.113.6") == 401  # another client behind nginx
        # Not from the proxy: the header is dropped, the limit is the sender's own.
        assert [guess(n, "198.51.100.7", f"192.0.2.{n}") for n in range(4, 7)] == [401, 401, 429]
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
