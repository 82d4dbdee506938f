"""`DeviceAPIMiddleware`, first in MIDDLEWARE: device requests skip the browser stack.

A request under `DEVICE_API_PREFIX` is matched against `fleet.device_api.urls`
alone and answered right here, wrapped only in Django's SecurityMiddleware
(security headers, HTTPS redirect) and a Content-Length. Sessions, locale,
CSRF, user authentication, messages, clickjacking protection and the audit log
do nothing for a bearer-token device, and on the endpoints every device calls
every few seconds they cost a fifth of the request's CPU
(benchmarks/simulated_fleet.py). Everything else goes down the chain as usual.
The body limit and the rest are the toolkit's (`fleet.device_api.toolkit`).
Each device request is counted and timed for Prometheus (`fleet.prometheus`:
endpoint = URL name, status) unless METRICS_ENABLED=0.
"""

from __future__ import annotations

from time import perf_counter

from django.conf import settings
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, get_resolver, set_urlconf

from fleet import prometheus

URLCONF = "fleet.device_api.urls"


class DeviceAPIMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.prefix = settings.DEVICE_API_PREFIX
        self.resolver = get_resolver(URLCONF)
        self.device_chain = SecurityMiddleware(self.dispatch)
        self.measured = prometheus.enabled()

    def __call__(self, request):
        if not request.path_info.startswith(self.prefix):
            return self.get_response(request)
        # As a middleware may: 404/500 handlers (JSON) and resolve() use these routes.
        request.urlconf = URLCONF
        set_urlconf(URLCONF)
        if self.measured:
            return self.measure(request)
        return self.answer(request)

    def measure(self, request):
        start = perf_counter()
        try:
            response = self.answer(request)
        except Exception:
            prometheus.observe_device_request(request, 500, perf_counter() - start)
            raise
        prometheus.observe_device_request(request, response.status_code, perf_counter() - start)
        return response

    def answer(self, request):
        response = self.device_chain(request)
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))
        return response

    def dispatch(self, request):
        try:
            match = self.resolver.resolve(request.path_info)
        except Resolver404:
            from fleet.device_api.urls import not_found

            return not_found(request)
        request.resolver_match = match
        return match.func(request, *match.args, **match.kwargs)
