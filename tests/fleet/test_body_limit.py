"""An upload over the limit is a 413 under every server, never a bare 500."""

from __future__ import annotations

from wsgiref.util import is_hop_by_hop

from django.test import RequestFactory

from fleet.middleware import BodySizeLimitMiddleware


def _answer(settings, server: str):
    settings.EDGEFLEET_MAX_UPLOAD_BYTES = 1024
    request = RequestFactory().post(
        "/api/v1/models/",
        data=b"x",
        content_type="application/json",
        CONTENT_LENGTH="5000",
        SERVER_SOFTWARE=server,
    )
    return BodySizeLimitMiddleware(lambda r: None)(request)


def test_development_server_gets_no_hop_by_hop_header(settings):
    response = _answer(settings, "WSGIServer/0.2 CPython/3.11.7")  # `manage.py runserver`
    assert response.status_code == 413
    assert not [h for h in response.headers if is_hop_by_hop(h)]


def test_production_server_closes_the_connection(settings):
    response = _answer(settings, "gunicorn/23.0.0")
    assert response.status_code == 413 and response["Connection"] == "close"
