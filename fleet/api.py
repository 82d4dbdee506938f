"""Shared DRF pieces: capped pagination and errors that always carry a code."""

from __future__ import annotations

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
    nowhere else in the operator API; DRF's own errors get a `code` too."""
    if isinstance(exc, Refusal):
        return Response(exc.body(), status=exc.status, headers=exc.headers())
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict):
        code = getattr(exc, "default_code", None)
        if hasattr(exc, "get_codes"):
            codes = exc.get_codes()
            if isinstance(codes, str):
                code = codes
        response.data.setdefault("code", code or "error")
    return response
