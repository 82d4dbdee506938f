"""Check-in with Redis as the cache: credential cache, revocation tombstones, presence.

A poll of a cached credential costs no database query; revoking or deleting the
device refuses its next poll at once (A1), including a cache fill that raced the
revocation; Redis down is a 503 with Retry-After (S1).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from tests.conftest import bearer

pytestmark = pytest.mark.django_db


@pytest.fixture
def redis_cache(settings, redis_url):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": f"t{uuid.uuid4().hex[:10]}",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    from devices import authcache

    assert authcache.redis_client() is not None
    return authcache


@pytest.fixture
def deployed(fleet, release):
    from django.contrib.auth.models import Group, User

    from ota import services

    admin = User.objects.create(username="root-admin")
    admin.groups.add(Group.objects.get_or_create(name="admin")[0])
    return services.start_deployment(
        release, {"devices": [fleet[0][0].uid]}, actor=User.objects.get(pk=admin.pk), phases=[100]
    )


def cached_value(authcache, token):
    return authcache.redis_client().get(authcache.credential_key(token[:16]))


def test_second_poll_needs_no_database_query(
    redis_cache, fleet, deployed, django_assert_num_queries
):
    device, token = fleet[0]
    client = bearer(token)
    first = client.get("/api/v1/device/update")
    assert first.status_code == 200
    assert cached_value(redis_cache, token).decode().endswith(f":{device.pk}")
    with django_assert_num_queries(0):
        again = client.get("/api/v1/device/update")
        not_modified = client.get("/api/v1/device/update", HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 200 and again.content == first.content
    assert not_modified.status_code == 304


def test_revoked_device_is_refused_at_once_without_the_database(
    redis_cache, fleet, deployed, django_assert_num_queries
):
    from devices import services

    device, token = fleet[0]
    assert bearer(token).get("/api/v1/device/update").status_code == 200
    services.revoke_device(device)
    with django_assert_num_queries(0):
        response = bearer(token).get("/api/v1/device/update")
    assert response.status_code == 401
    assert cached_value(redis_cache, token) == b"-"
    assert bearer(fleet[1][1]).get("/api/v1/device/update").status_code == 204


def test_a_fill_racing_a_revocation_never_outlives_it(redis_cache, fleet):
    """The fill read the database before the revocation committed, and lands after it."""
    from devices import tokens

    _device, token = fleet[0]
    prefix, wanted = tokens.lookup_key(token)
    redis_cache.forget([prefix])
    redis_cache.remember(prefix, wanted, 12345)
    assert cached_value(redis_cache, token) == b"-"


def test_deleted_device_and_credential_revoked_in_admin_are_refused(redis_cache, fleet):
    from devices.models import DeviceCredential

    (first, first_token), (second, second_token) = fleet[0], fleet[1]
    for token in (first_token, second_token):
        assert bearer(token).get("/api/v1/device/update").status_code == 204
    first.delete()
    credential = DeviceCredential.objects.get(device=second)
    credential.revoked_at = credential.created_at + timedelta(seconds=1)
    credential.save()
    assert bearer(first_token).get("/api/v1/device/update").status_code == 401
    assert bearer(second_token).get("/api/v1/device/update").status_code == 401


def test_wrong_token_sharing_a_cached_prefix_is_refused(redis_cache, fleet):
    _device, token = fleet[0]
    assert bearer(token).get("/api/v1/device/update").status_code == 204
    forged = token[:16] + "A" * (len(token) - 16)
    assert forged != token
    assert bearer(forged).get("/api/v1/device/update").status_code == 401
    assert bearer(token).get("/api/v1/device/update").status_code == 204


def test_throttle_counts_on_the_redis_path(redis_cache, fleet, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
            "device": "3/min",
        },
    }
    client = bearer(fleet[0][1])
    codes = [client.get("/api/v1/device/update").status_code for _ in range(4)]
    assert codes == [204, 204, 204, 429]
    assert bearer(fleet[1][1]).get("/api/v1/device/update").status_code == 204


def test_polls_mark_devices_seen_through_the_presence_flush(redis_cache, fleet):
    from devices.choices import AlertKind, AlertState, DeviceStatus
    from devices.models import Alert, Device

    device, token = fleet[0]
    Device.objects.filter(pk=device.pk).update(status=DeviceStatus.OFFLINE, last_seen=None)
    alert = Alert.objects.create(device=device, kind=AlertKind.OFFLINE, message="silent")
    silent = fleet[1][0]
    Device.objects.filter(pk=silent.pk).update(status=DeviceStatus.OFFLINE, last_seen=None)
    assert bearer(token).get("/api/v1/device/update").status_code == 204
    assert bearer(token).get("/api/v1/device/update").status_code == 204  # cached path too
    assert redis_cache.flush_presence() == 1
    device.refresh_from_db()
    alert.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE and device.last_seen is not None
    assert alert.state == AlertState.RESOLVED
    silent.refresh_from_db()
    assert silent.status == DeviceStatus.OFFLINE
    assert redis_cache.flush_presence() == 0  # drained


def test_redis_down_is_503_with_retry_after(settings, fleet):
    from tests.conftest import port_open

    port = 6399
    assert not port_open("127.0.0.1", port)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "KEY_PREFIX": "down",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    response = bearer(fleet[0][1]).get("/api/v1/device/update")
    assert response.status_code == 503 and int(response["Retry-After"]) > 0
