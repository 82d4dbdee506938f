"""Refuse oversize bodies with 413 before a byte of them is read (RELIABILITY O2)."""

from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
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


def too_large_response(limit: int, request=None) -> JsonResponse:
    mb = limit / (1024 * 1024)
    body = {
        "detail": _("Request body is larger than the %(mb)g MB limit.") % {"mb": mb},
        "code": "too_large",
    }
    response = JsonResponse(body, status=413)
    # Do not read the rest of a huge body: close the connection. Django's development
    # server (wsgiref) refuses hop-by-hop headers from the app (a bare 500 instead of
    # this 413) and closes an unread request by itself.
    server = request.META.get("SERVER_SOFTWARE", "") if request is not None else ""
    if not server.startswith("WSGIServer"):
        response["Connection"] = "close"
    return response


class ContentLengthMiddleware:
    """Content-Length on every complete response, as CommonMiddleware sets it in
    the browser stack: the device API's lean stack (fleet/wsgi.py) would otherwise
    answer in chunked encoding, extra bytes and writes for every device request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))
        return response
