from __future__ import annotations

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils.translation import gettext as _

LOGIN_FAILURES_PER_WINDOW = 10
LOGIN_WINDOW_S = 60


@login_required
def home(request):
    widgets = []
    for name in settings.EDGEFLEET_HOME_WIDGETS:
        try:
            widgets.append(reverse(name))
        except NoReverseMatch:
            continue  # an app that is not installed simply has no widget
    return render(request, "home.html", {"widgets": widgets})


def healthz(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any DB failure means "not ready", reported, never raised
        return JsonResponse({"status": "unavailable", "database": str(exc)[:200]}, status=503)
    return JsonResponse({"status": "ok"})


class LoginView(auth_views.LoginView):
    """Django's login with a per-account failure limit (docs/reliability.md A6)."""

    template_name = "registration/login.html"

    def _key(self, request) -> str:
        username = (request.POST.get("username") or "").strip().lower()
        return f"login-failures:{username}"

    def post(self, request, *args, **kwargs):
        key = self._key(request)
        if cache.get(key, 0) >= LOGIN_FAILURES_PER_WINDOW:
            response = HttpResponse(
                _("Too many failed logins for this account; try again in a minute."),
                status=429,
            )
            response["Retry-After"] = str(LOGIN_WINDOW_S)
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        key = self._key(self.request)
        if cache.add(key, 1, LOGIN_WINDOW_S) is False:
            try:
                cache.incr(key)
            except ValueError:
                cache.set(key, 1, LOGIN_WINDOW_S)
        return super().form_invalid(form)
