"""WSGI entry point (gunicorn, runserver).

Device API requests (`DEVICE_API_PREFIX`) go through a second Django handler
whose middleware is `DEVICE_API_MIDDLEWARE` (body size limit, security headers)
instead of the browser stack: sessions, locale, CSRF, user authentication,
messages and clickjacking protection do nothing for a bearer-token device, and
on the endpoints every device calls every few seconds they cost a fifth of the
request's CPU (benchmarks/fleet.py). Everything else gets the full `MIDDLEWARE`.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")


class DeviceAPIRouter:
    def __init__(self, default, device, prefix: str):
        self.default, self.device, self.prefix = default, device, prefix

    def __call__(self, environ, start_response):
        handler = self.device if environ.get("PATH_INFO", "").startswith(self.prefix) \
            else self.default
        return handler(environ, start_response)


def _application():
    default = get_wsgi_application()  # sets Django up
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    # BaseHandler.load_middleware reads settings.MIDDLEWARE: give it the device
    # list for the one handler built here, at import, before any request.
    browser = settings.MIDDLEWARE
    settings.MIDDLEWARE = settings.DEVICE_API_MIDDLEWARE
    try:
        device = WSGIHandler()
    finally:
        settings.MIDDLEWARE = browser
    return DeviceAPIRouter(default, device, settings.DEVICE_API_PREFIX)


application = _application()
