"""Audit log: every authenticated write leaves a row (docs/reliability.md A7).

The middleware guarantees coverage (one row per unsafe request by a signed-in
operator, whatever the outcome); views add what was touched with `note()`.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError

from fleet.models import AuditEntry, AuditResult
from fleet.roles import role_of

log = logging.getLogger(__name__)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}


def note(request, action: str, obj=None, **detail) -> None:
    """Describe the write this request performs; the middleware stores it."""
    target = getattr(request, "_request", request)  # DRF Request wraps HttpRequest
    target.audit = {"action": action, "obj": obj, "detail": detail}


def _result(status: int) -> str:
    if status < 400:
        return AuditResult.OK
    if status in (401, 403):
        return AuditResult.DENIED
    if status < 500:
        return AuditResult.REJECTED
    return AuditResult.ERROR


def record(request, status: int) -> AuditEntry | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or getattr(user, "is_device", False):
        return None
    info = getattr(request, "audit", None) or {}
    obj = info.get("obj")
    match = getattr(request, "resolver_match", None)
    action = info.get("action") or (match.view_name if match else "") or request.path
    role = role_of(user)
    return AuditEntry.objects.create(
        actor=user,
        actor_name=user.get_username(),
        actor_role=role.value if role else "",
        action=action[:120],
        method=request.method,
        path=request.path[:500],
        object_type=obj._meta.label if obj is not None and hasattr(obj, "_meta") else "",
        object_id=str(getattr(obj, "pk", "") or "")[:64],
        object_repr=str(obj)[:200] if obj is not None else "",
        result=_result(status),
        status_code=status,
        detail=info.get("detail") or {},
        ip=request.META.get("REMOTE_ADDR") or None,
    )


class AuditMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.method not in SAFE_METHODS:
            try:
                record(request, response.status_code)
            except DatabaseError:
                # The write itself already happened or failed; losing the audit row
                # must be loud but must not turn a success into a 500.
                log.exception("audit row could not be written for %s", request.path)
        return response
