"""Refuse oversize bodies with 413 before a byte of them is read (docs/reliability.md O2)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.utils import translation
from django.utils.translation import gettext as _


class BodySizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.EDGEFLEET_MAX_UPLOAD_BYTES
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"detail": _("Invalid Content-Length header.")}, status=400)
        if declared > limit:
            return too_large_response(limit, request)
        response = self.get_response(request)
        if getattr(request, "upload_too_large", False):
            return too_large_response(limit, request)
        return response

    def process_exception(self, request, exception):
        """A form or JSON body over DATA_UPLOAD_MAX_MEMORY_SIZE (Django raises
        RequestDataTooBig, which it would answer with an HTML 400): a JSON 413."""
        if isinstance(exception, RequestDataTooBig):
            return too_large_response(settings.DATA_UPLOAD_MAX_MEMORY_SIZE, request)
        return None


def too_large_response(limit: int, request=None) -> JsonResponse:
    mb = limit / (1024 * 1024)
    # this middleware runs before LocaleMiddleware: the reader's language by hand
    language = translation.get_language_from_request(request) if request is not None else None
    with translation.override(language or translation.get_language()):
        detail = _("Request body is larger than the %(mb)g MB limit.") % {"mb": mb}
    body = {"detail": detail, "code": "too_large"}
    response = JsonResponse(body, status=413)
    # Do not read the rest of a huge body: close the connection. Django's development
    # server (wsgiref) refuses hop-by-hop headers from the app (a bare 500 instead of
    # this 413) and closes an unread request by itself.
    server = request.META.get("SERVER_SOFTWARE", "") if request is not None else ""
    if not server.startswith("WSGIServer"):
        response["Connection"] = "close"
    return response


class QueryStringMiddleware:
    """A NUL in the query string is a 400 here: PostgreSQL refuses NUL in any
    string, so every list filter (`?uid=%00`) would otherwise be a 500."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        query = request.META.get("QUERY_STRING", "")
        if "%00" in query or "\x00" in query:
            return JsonResponse(
                {
                    "detail": _("Query parameters must not contain NUL characters."),
                    "code": "bad_query",
                },
                status=400,
            )
        return self.get_response(request)
