"""WSGI entry point (gunicorn, runserver).

Device API requests (`DEVICE_API_PREFIX`) go through a second Django handler
whose middleware is `DEVICE_API_MIDDLEWARE` (body size limit, security headers)
instead of the browser stack: sessions, locale, CSRF, user authentication,
messages and clickjacking protection do nothing for a bearer-token device, and
on the endpoints every device calls every few seconds they cost a fifth of the
request's CPU (benchmarks/simulated_fleet.py). That handler also resolves against
`DEVICE_API_URLCONF` (only the device routes). Everything else gets the full
`MIDDLEWARE` and `ROOT_URLCONF`. The device handler counts and times each
request for Prometheus (`fleet.prometheus`) unless `METRICS_ENABLED=0`. Both sit
behind `fleet.proxy.TrustedProxyHeaders` (X-Forwarded-* from the reverse proxy only).
"""

import os
from time import perf_counter

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")


class DeviceAPIRouter:
    def __init__(self, default, device, prefix: str):
        self.default, self.device, self.prefix = default, device, prefix

    def __call__(self, environ, start_response):
        handler = (
            self.device if environ.get("PATH_INFO", "").startswith(self.prefix) else self.default
        )
        return handler(environ, start_response)


def _device_handler():
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    from fleet import prometheus

    class DeviceAPIHandler(WSGIHandler):
        urlconf = settings.DEVICE_API_URLCONF

        def get_response(self, request):
            request.urlconf = self.urlconf  # as a middleware may: resolve, reverse, 404s
            return super().get_response(request)

    class MeasuredDeviceAPIHandler(DeviceAPIHandler):
        def get_response(self, request):
            start = perf_counter()
            response = super().get_response(request)
            prometheus.observe_device_request(request, response, perf_counter() - start)
            return response

    # BaseHandler.load_middleware reads settings.MIDDLEWARE: give it the device
    # list for the one handler built here, at import, before any request.
    browser = settings.MIDDLEWARE
    settings.MIDDLEWARE = settings.DEVICE_API_MIDDLEWARE
    try:
        return MeasuredDeviceAPIHandler() if prometheus.enabled() else DeviceAPIHandler()
    finally:
        settings.MIDDLEWARE = browser


def _application():
    default = get_wsgi_application()  # sets Django up
    from django.conf import settings

    from fleet.proxy import TrustedProxyHeaders

    router = DeviceAPIRouter(default, _device_handler(), settings.DEVICE_API_PREFIX)
    return TrustedProxyHeaders(router, settings.TRUSTED_PROXIES)


application = _application()
