"""Answers shared by the device API's plain Django views (check-in, telemetry,
logs): the `{"detail", "code"}` error body, the bearer token challenge and the
503 that tells the agent to retry."""

from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse

BEARER_REALM = 'Bearer realm="devices"'


def refusal(status: int, detail: str, code: str, **headers) -> JsonResponse:
    """The error body; `Retry_After=` becomes the `Retry-After` header."""
    response = JsonResponse({"detail": detail, "code": code}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def unavailable(detail: str) -> JsonResponse:
    return refusal(503, detail, "unavailable", Retry_After=str(settings.DEVICE_RETRY_AFTER_S))


def bearer_token(request) -> str | None:
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    return parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else None


def token_required() -> JsonResponse:
    return refusal(
        401, "Device token required.", "not_authenticated", WWW_Authenticate=BEARER_REALM
    )


def token_refused() -> JsonResponse:
    return refusal(
        401,
        "Unknown or revoked device token.",
        "authentication_failed",
        WWW_Authenticate=BEARER_REALM,
    )
