"""Shared DRF pieces: capped pagination and errors that always carry a code."""

from __future__ import annotations

from django.db.models import ProtectedError, RestrictedError
from django.utils.translation import gettext as _
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from fleet.refusal import Refusal

MAX_PAGE_SIZE = 200


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE


def exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: a service's `Refusal` becomes its answer here, and
    nowhere else in the operator API; deleting what other rows still need
    (ProtectedError) is a 409 saying what; DRF's own errors get a `code` too."""
    if isinstance(exc, Refusal):
        return Response(exc.body(), status=exc.status, headers=exc.headers())
    if isinstance(exc, ProtectedError | RestrictedError):
        return Response(in_use(exc).body(), status=409)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict):
        code = getattr(exc, "default_code", None)
        if hasattr(exc, "get_codes"):
            codes = exc.get_codes()
            if isinstance(codes, str):
                code = codes
        response.data.setdefault("code", code or "error")
    return response


def in_use(exc: ProtectedError | RestrictedError) -> Refusal:
    """Why a delete was refused: the kinds of rows that still point at it."""
    objects = exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects
    kinds = sorted({str(obj._meta.verbose_name_plural) for obj in objects})
    return Refusal(
        "in_use", _("Cannot delete: still used by %(what)s.") % {"what": ", ".join(kinds)}, 409
    )
