"""The device API toolkit and the hardening it carries: one route table, poison
items refused per item, depth and size limits as JSON 4xx on every JSON
endpoint, unknown tokens cached negatively and limited per client address."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from devices.models import LogLine, TelemetryPoint
from tests.conftest import bearer
from tests.devices.conftest import log_lines, points

pytestmark = pytest.mark.django_db
TELEMETRY = "/api/v1/device/telemetry"
LOGS = "/api/v1/device/logs"
DEVICE_JSON_ENDPOINTS = [
    ("post", TELEMETRY),
    ("post", LOGS),
    ("post", "/api/v1/device/enroll"),
    ("put", "/api/v1/device/inventory"),
    ("post", "/api/v1/device/update/status"),
]


def raw(client, path: str, body: bytes, method: str = "post", **extra):
    return getattr(client, method)(path, body, content_type="application/json", **extra)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_every_device_route_is_a_toolkit_endpoint_and_documented(viewer_api):
    from fleet.device_api.urls import urlpatterns

    assert all(hasattr(p.callback, "device_api") for p in urlpatterns)
    spec = viewer_api.get("/api/schema/?format=json").json()
    documented = {p for p in spec["paths"] if p.startswith("/api/v1/device/")}
    assert len(documented) == len(urlpatterns)  # every route is in the schema
    for path, method in [
        ("/api/v1/device/enroll", "post"),
        ("/api/v1/device/inventory", "put"),
        ("/api/v1/device/update", "get"),
        ("/api/v1/device/update/status", "post"),
        ("/api/v1/device/artifacts/{sha256}", "get"),
        ("/api/v1/device/telemetry", "post"),
        ("/api/v1/device/logs", "post"),
        ("/api/v1/device/benchmarks", "get"),
        ("/api/v1/device/benchmarks/{pk}/results", "post"),
    ]:
        operation = spec["paths"][path][method]
        assert {"429", "503"} <= set(operation["responses"]), path
    point = spec["components"]["schemas"]["TelemetryPoint"]["properties"]
    from devices.ingest import FLOATS, INTS

    assert set(FLOATS) | set(INTS) <= set(point)  # the field list the validator uses


def test_wrong_method_and_unknown_path_answer_json(api_a):
    response = api_a.get(TELEMETRY)
    assert response.status_code == 405 and response["Allow"] == "POST"
    assert response.json()["code"] == "method_not_allowed"
    missing = api_a.get("/api/v1/device/nothing")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


# --- issue 15 item 10: poison items ----------------------------------------------------------
def test_nan_infinity_and_lone_surrogates_are_refused_per_item(api_a, device_a):
    good = points(1, 3)
    body = json.dumps({"batch": good}).encode()[:-2]  # open the list to append raw items
    poison = [
        b'{"seq": 4, "boot_id": "boot-1", "ts": %d, "extra": {"p95": NaN}}',
        b'{"seq": 5, "boot_id": "boot-1", "ts": %d, "extra": {"p95": Infinity}}',
        b'{"seq": 6, "boot_id": "boot-1", "ts": %d, "model_version": "v\\ud800"}',
        b'{"seq": 7, "boot_id": "b\\udfff", "ts": %d}',
        b'{"seq": 8, "boot_id": "boot-1", "ts": %d, "extra": {"k": "\\ud83d"}}',
    ]
    now = int(good[0]["ts"])
    body += b", " + b", ".join(p % now for p in poison) + b"]}"
    response = raw(api_a, TELEMETRY, body)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["accepted"] == {"boot-1": [1, 2, 3]}
    refused = {r["seq"]: r["error"] for r in answer["rejected"]}
    assert set(refused) == {4, 5, 6, 7, 8}
    assert "finite" in refused[4] and "finite" in refused[5]
    assert "model_version" in refused[6] and "boot_id" in refused[7]
    assert TelemetryPoint.objects.filter(device=device_a[0]).count() == 3
    # A resend is answered the same: the agent can drop what was refused.
    assert raw(api_a, TELEMETRY, body).json() == answer


def test_a_log_line_with_a_lone_surrogate_is_refused_the_rest_stored(api_a, device_a):
    lines = log_lines(1, 2)
    body = json.dumps({"batch": lines}).encode()[:-2]
    body += b', {"seq": 3, "boot_id": "boot-1", "ts": %d, "message": "bad \\udc80 byte"}]}' % (
        int(lines[0]["ts"])
    )
    response = raw(api_a, LOGS, body)
    assert response.status_code == 200, response.content
    assert [r["seq"] for r in response.json()["rejected"]] == [3]
    assert LogLine.objects.filter(device=device_a[0]).count() == 2


def test_unstorable_input_elsewhere_is_a_400_not_a_503(api_a):
    response = raw(api_a, "/api/v1/device/inventory", b'{"os": "linux\\ud800"}', method="put")
    assert response.status_code == 400, response.content


# --- issue 15 item 14: nesting ---------------------------------------------------------------
@pytest.mark.parametrize("method, path", DEVICE_JSON_ENDPOINTS)
@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_json_is_a_400_on_every_device_endpoint(api_a, method, path, depth):
    client = Client() if path.endswith("enroll") else api_a  # enroll needs no token
    response = raw(client, path, nested(depth), method=method)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "parse_error"


def test_nesting_within_the_limit_is_parsed(api_a):
    body = json.dumps({"batch": points(1, 1, extra={"a": {"b": {"c": [1, [2]]}}})}).encode()
    assert raw(api_a, TELEMETRY, body).status_code == 200


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_json_is_a_400_on_the_operator_api(operator_api, depth):
    response = raw(operator_api, "/api/v1/deployments/", nested(depth))
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "parse_error"


def test_deeply_nested_mqtt_payload_is_refused():
    from devices import mqtt

    _uid, answer = mqtt.handle("edgefleet/cam-a/telemetry", nested(100_000))
    assert answer["code"] == "bad_batch"


# --- issue 15 item 15: one body limit, JSON 413 ----------------------------------------------
@pytest.mark.parametrize("method, path", DEVICE_JSON_ENDPOINTS)
def test_device_bodies_over_the_limit_get_a_json_413(api_a, settings, method, path):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    client = Client() if path.endswith("enroll") else api_a
    response = raw(client, path, b'{"pad": "' + b"x" * 5000 + b'"}', method=method)
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


def test_operator_json_and_forms_over_the_limit_get_a_json_413(operator_api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    body = b'{"release": 1, "target": {}, "pad": "' + b"x" * 5000 + b'"}'
    response = raw(operator_api, "/api/v1/deployments/", body)
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    form = Client().post("/accounts/login/", {"username": "a", "password": "x" * 5000})
    assert form.status_code == 413 and form.json()["code"] == "too_large"


def test_the_documented_device_body_limit_is_djangos_body_limit(settings):
    from django.conf import settings as live

    assert live.DATA_UPLOAD_MAX_MEMORY_SIZE == 4 * 1024 * 1024
    assert not hasattr(live, "DEVICE_MAX_BATCH_BYTES")


# --- issue 15 item 16: unknown tokens --------------------------------------------------------
BAD = "efd_" + "0" * 40


def test_a_repeated_bad_token_costs_one_query(django_assert_num_queries):
    client = bearer(BAD)
    with django_assert_num_queries(1):
        assert client.get("/api/v1/device/update").status_code == 401
    for _ in range(3):
        with django_assert_num_queries(0):
            response = client.post(TELEMETRY, {"batch": []}, format="json")
            assert response.status_code == 401
            assert response["WWW-Authenticate"].startswith("Bearer")


def test_guessing_is_limited_per_client_address(settings, api_a, django_assert_num_queries):
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**rates, "device_auth_failure": "3/min"},
    }
    assert api_a.get("/api/v1/device/update", REMOTE_ADDR="10.0.0.9").status_code == 204
    guesses = [bearer(f"efd_guess{n:04d}" + "0" * 32) for n in range(5)]
    codes = [
        g.get("/api/v1/device/update", REMOTE_ADDR="10.0.0.9").status_code for g in guesses[:3]
    ]
    assert codes == [401, 401, 401]
    with django_assert_num_queries(0):
        limited = guesses[3].get("/api/v1/device/update", REMOTE_ADDR="10.0.0.9")
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    assert limited.json()["code"] == "throttled"
    # Another address is not limited; a device whose credential is cached passes.
    other = guesses[4].get("/api/v1/device/update", REMOTE_ADDR="10.0.0.10")
    assert other.status_code == 401
    assert api_a.get("/api/v1/device/update", REMOTE_ADDR="10.0.0.9").status_code == 204


def test_a_new_valid_token_is_never_refused_by_the_negative_cache(enrollment):
    from devices import services

    bearer(BAD).get("/api/v1/device/update")
    _device, token = services.enroll(enrollment[1], {"uid": "cam-new"})
    assert bearer(token).get("/api/v1/device/update").status_code == 204
