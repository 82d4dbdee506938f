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


def _post_too_much(url: str, language: str) -> tuple[int, dict]:
    import contextlib
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", "/models/upload/")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(2 * 1024 * 1024))
    conn.putheader("Accept-Language", language)
    conn.endheaders()
    # the development server reads (and drops) an unread body before it closes
    with contextlib.suppress(OSError):  # the server may close its side already
        conn.send(b"x" * 2 * 1024 * 1024)
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return response.status, body


def test_development_server_answers_413_in_the_readers_language(live_server, settings):
    """The live server is Django's development server (wsgiref): a real request."""
    settings.EDGEFLEET_MAX_UPLOAD_BYTES = 1024 * 1024
    status, body = _post_too_much(live_server.url, "en")
    assert status == 413, body
    assert body == {"detail": "Request body is larger than the 1 MB limit.", "code": "too_large"}
    status, body = _post_too_much(live_server.url, "zh-Hans")
    assert status == 413 and body["detail"] == "请求体超过 1 MB 的限制。"
