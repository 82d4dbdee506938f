"""The one JSON parser for request bodies: the device API, the operator API
(DRF's parser) and the MQTT bridge all read JSON through `loads`.

Python's decoder recurses once per level, so `[[[[…` a few thousand deep raised
RecursionError (a 500) and a few hundred deep came through to code that
recurses again (`str()`, `json.dumps`, PostgreSQL's jsonb). `loads` refuses
anything nested deeper than `JSON_MAX_DEPTH` with a 400. Size: at most
`DATA_UPLOAD_MAX_MEMORY_SIZE`, else 413 (the device toolkit checks Content-Length
before reading; the DRF parser reads no more than the limit).
"""

from __future__ import annotations

import json

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from fleet.refusal import Refusal


def loads(body: bytes | str):
    """The parsed body; `Refusal` 400 `parse_error` when it is not JSON or too deep."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refusal("parse_error", f"JSON parse error - {exc}") from None
    limit = settings.JSON_MAX_DEPTH
    if (type(data) is dict or type(data) is list) and _deeper_than(data, limit):
        raise too_deep()
    return data


def too_deep() -> Refusal:
    return Refusal("parse_error", f"JSON nested deeper than {settings.JSON_MAX_DEPTH} levels.")


def _deeper_than(data, limit: int) -> bool:
    """Whether containers nest more than `limit` levels (iterative: no recursion)."""
    stack = [(data, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            return True
        for value in node.values() if type(node) is dict else node:
            kind = type(value)
            if kind is dict or kind is list:
                push((value, depth + 1))
    return False


class LimitedJSONParser(JSONParser):
    """DRF's JSON parser through `loads` (REST_FRAMEWORK DEFAULT_PARSER_CLASSES)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise too_large(limit)
        try:
            return loads(body)
        except Refusal as exc:
            raise ParseError(exc.message) from None


def too_large(limit: int) -> Refusal:
    return Refusal("too_large", f"Request body is larger than the {limit / 2**20:g} MB limit.", 413)
