"""Device authentication: `Authorization: Bearer <device token>`.

A device is never an operator: the principal has `is_device=True`, which
`fleet.roles.role_of` maps to no role, and device endpoints accept only this
authenticator, so a session or operator token never reaches them.
"""

from __future__ import annotations

import hmac

from django.db import connection
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from devices import tokens
from devices.choices import DeviceStatus
from devices.models import Device, DeviceCredential


class DevicePrincipal:
    """What `request.user` is for a device request."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_device = True
    is_staff = False
    is_superuser = False

    def __init__(self, device: Device, credential: DeviceCredential):
        self.device = device
        self.credential = credential
        self.pk = None  # not a user: user-keyed throttles and audit must not match it

    def __str__(self) -> str:
        return f"device:{self.device.uid}"

    def get_username(self) -> str:
        return str(self)


def authenticate_token(value: str) -> DevicePrincipal | None:
    """The principal for a device token, or None if unknown or revoked."""
    queryset = DeviceCredential.objects.select_related("device").filter(revoked_at__isnull=True)
    credential = tokens.find(queryset, value)
    if credential is None or credential.device.status == DeviceStatus.REVOKED:
        return None
    return DevicePrincipal(credential.device, credential)


AUTH_SQL = (
    f"SELECT c.token_hash, d.id, d.status FROM {DeviceCredential._meta.db_table} c "
    f"JOIN {Device._meta.db_table} d ON d.id = c.device_id "
    "WHERE c.prefix = %s AND c.revoked_at IS NULL"
)


def device_for_token(value: str) -> int | None:
    """The device id of a live credential: the same rule as `authenticate_token`
    (prefix lookup, constant-time hash compare, revoked credential or device refused) in
    one raw query, because building two ORM instances per poll cost more than the poll.
    """
    key = tokens.lookup_key(value)
    if key is None:
        return None
    prefix, wanted = key
    # Skip the per-request `SELECT 1` of CONN_HEALTH_CHECKS: it doubles this endpoint's
    # database round trips. A dead connection fails this one query instead (503 below);
    # Django then drops the connection at the end of the request and the next poll
    # reconnects, which is the recovery the health check would have given.
    connection.health_check_done = True
    with connection.cursor() as cursor:
        cursor.execute(AUTH_SQL, [prefix])
        rows = cursor.fetchall()
    for token_hash, device_pk, status in rows:
        if hmac.compare_digest(token_hash, wanted):
            return None if status == DeviceStatus.REVOKED else device_pk
    return None


class DeviceTokenAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        principal = authenticate_token(parts[1].decode("latin-1"))
        if principal is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked device token.")
        return principal, principal.credential

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="devices"'


class IsDevice(BasePermission):
    """Only a device principal: sessions and operator tokens are refused."""

    def has_permission(self, request, view) -> bool:
        return bool(getattr(request.user, "is_device", False))


class DeviceTokenScheme(OpenApiAuthenticationExtension):
    """Names the device bearer token in the OpenAPI schema."""

    target_class = "devices.auth.DeviceTokenAuthentication"
    name = "deviceToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "Device token issued once by POST /api/v1/device/enroll"}
