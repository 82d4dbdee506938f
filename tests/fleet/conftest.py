"""`call`: a request through the real WSGI entry point (`fleet.wsgi.application`),
device handler and all, as gunicorn would make it."""

from __future__ import annotations

import io
import sys

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections


@pytest.fixture
def call():
    from fleet.wsgi import application

    def run(method: str, path: str, body: bytes = b"", **headers):
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/json",
            "REMOTE_ADDR": "127.0.0.1",
            **headers,
        }
        answer = {}

        def start_response(status, response_headers, exc_info=None):
            answer["status"] = int(status.split()[0])
            answer["headers"] = {k.lower(): v for k, v in response_headers}

        answer["body"] = b"".join(application(environ, start_response))
        return answer

    # As django's test client does: the test's connection must outlive the request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield run
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
