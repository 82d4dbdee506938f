"""Operator roles: viewer < operator < admin, stored as Django groups.

Views declare the role they need (`read_role` / `write_role`, or per action in
`action_roles`); `RolePermission` enforces it. Device credentials are never an
operator: a device principal is refused here whatever it claims.

`ci` is the role of a pipeline's API token: it reads like a viewer and may do
only the operator writes a view lists in `ci_actions` (push a model, start a
compression job, create a release, start a canary deployment). What a CI
deployment may be is checked by the OTA service, not here.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import models
from django.utils.translation import gettext_lazy as _
from rest_framework.permissions import SAFE_METHODS, BasePermission


class Role(models.TextChoices):
    VIEWER = "viewer", _("Viewer")
    CI = "ci", _("CI pipeline")
    OPERATOR = "operator", _("Operator")
    ADMIN = "admin", _("Admin")


# CI ranks with viewers: it reads; its few writes are opted into per view (`ci_actions`).
RANK = {Role.VIEWER: 1, Role.CI: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


def role_of(user) -> Role | None:
    """The highest role a user holds, or None (anonymous, device, no group)."""
    if user is None or not user.is_authenticated or getattr(user, "is_device", False):
        return None
    if user.is_superuser:
        return Role.ADMIN
    cached = getattr(user, "_edgefleet_role", "unset")
    if cached != "unset":
        return cached
    names = set(user.groups.values_list("name", flat=True))
    role = None
    for candidate in (Role.ADMIN, Role.OPERATOR, Role.CI, Role.VIEWER):
        if candidate.value in names:
            role = candidate
            break
    user._edgefleet_role = role
    return role


def has_role(user, needed: Role) -> bool:
    role = role_of(user)
    return role is not None and RANK[role] >= RANK[needed]


class RolePermission(BasePermission):
    """Safe methods need `read_role` (viewer), writes need `write_role` (operator).

    `action_roles = {"cancel": Role.OPERATOR}` overrides per viewset action;
    `ci_actions = {"create"}` lets the CI role do these operator actions (for a
    plain APIView the action is the lower-case method, e.g. "post").
    """

    def has_permission(self, request, view) -> bool:
        action = getattr(view, "action", None)
        overrides = getattr(view, "action_roles", {}) or {}
        if action in overrides:
            needed = overrides[action]
        elif request.method in SAFE_METHODS:
            needed = getattr(view, "read_role", Role.VIEWER)
        else:
            needed = getattr(view, "write_role", Role.OPERATOR)
        if needed == Role.OPERATOR and role_of(request.user) == Role.CI:
            action = action or request.method.lower()
            return action in getattr(view, "ci_actions", ())
        return has_role(request.user, needed)


def role_required(needed: Role):
    """Decorator for server-rendered views: login first, then the role or 403."""

    def decorator(view_func):
        @wraps(view_func)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, needed):
                raise PermissionDenied
            return view_func(request, *args, **kwargs)

        return wrapper

    return decorator


def role_context(request) -> dict:
    user = getattr(request, "user", None)
    role = role_of(user) if user is not None else None
    return {
        "user_role": role,
        "can_operate": role is not None and RANK[role] >= RANK[Role.OPERATOR],
        "is_admin_role": role == Role.ADMIN,
    }


# Apps whose objects operators create and change; admins get every permission.
OPERATED_APPS = ("compression", "devices", "ota")


def sync_role_permissions(sender=None, **kwargs) -> None:
    """post_migrate: create the role groups and give each its model permissions."""
    from django.contrib.auth.models import Group, Permission

    groups = {role: Group.objects.get_or_create(name=role.value)[0] for role in Role}
    perms = Permission.objects.select_related("content_type")
    viewer = [p for p in perms if p.codename.startswith("view_")]
    operator = viewer + [
        p
        for p in perms
        if p.content_type.app_label in OPERATED_APPS
        and p.codename.split("_", 1)[0] in {"add", "change"}
    ]
    ci = viewer + [
        p
        for p in perms
        if p.content_type.app_label in ("compression", "ota") and p.codename.startswith("add_")
    ]
    groups[Role.VIEWER].permissions.set(viewer)
    groups[Role.CI].permissions.set(ci)
    groups[Role.OPERATOR].permissions.set(operator)
    groups[Role.ADMIN].permissions.set(list(perms))
