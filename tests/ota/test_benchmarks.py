"""Benchmark requests on the server: who may create them, what input is refused, what
each device sees and may report (its own runs only), and the OpenAPI description."""

from __future__ import annotations

import pytest

from devices.agent import bench
from devices.agent import manifest as mf
from ota import keys
from ota.models import BenchmarkRequest, BenchmarkRun
from tests.conftest import bearer
from tests.ota.conftest import make_version

pytestmark = pytest.mark.django_db
URL = "/api/v1/benchmarks/"


@pytest.fixture
def versions(db):
    return [make_version("bench", seed, p95=2.0 + seed) for seed in (21, 22)]


def body(versions, **fields):
    return {"versions": [v.pk for v in versions], "target": {"tags": ["cam"]}, **fields}


def test_operator_creates_and_every_device_gets_a_signed_request(
    fleet, versions, operator_api, viewer_api
):
    created = operator_api.post(URL, body(versions, inferences=25), format="json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert data["runs"] == {"pending": 10} and len(data["results"]) == 20
    assert all(r["predicted_p95_ms"] > 0 for r in data["results"])
    assert viewer_api.get(URL).status_code == 200
    assert viewer_api.get(f"{URL}{data['id']}/").json()["inferences"] == 25

    device, token = fleet[0]
    listed = bearer(token).get("/api/v1/device/benchmarks")
    assert listed.status_code == 200
    (envelope,) = listed.json()["requests"]
    public = mf.load_public_key(keys.public_key_b64())
    trusted = {envelope["key_id"]: public}
    verified = mf.verify(
        envelope,
        trusted_keys=trusted,
        device_uid=device.uid,
        last_version=0,
        now=mf.parse_time(envelope["manifest"]["issued_at"]),
        schema=bench.SCHEMA,
    )
    assert verified.payload["benchmark"] == data["id"] or verified.payload["benchmark"]
    with pytest.raises(mf.ManifestError):  # never mistaken for a manifest
        mf.verify(
            envelope,
            trusted_keys=trusted,
            device_uid=device.uid,
            last_version=0,
            now=mf.parse_time(envelope["manifest"]["issued_at"]),
        )
    assert envelope["manifest"]["schema"] == bench.SCHEMA
    assert envelope["manifest"]["device"] == device.uid and envelope["manifest"]["inferences"] == 25
    # Its artifacts may be fetched by this device.
    sha = envelope["manifest"]["artifacts"][0]["sha256"]
    # 200 from local storage, 302 to a presigned URL on S3 (CI)
    assert bearer(token).get(f"/api/v1/device/artifacts/{sha}").status_code in (200, 302)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"versions": []}, "bad_versions"),
        ({"versions": "1"}, "bad_versions"),
        ({"versions": [True]}, "bad_versions"),
        ({"versions": [999999]}, "bad_versions"),
        ({"inferences": 0}, "bad_inferences"),
        ({"inferences": "many"}, "bad_inferences"),
        ({"inferences": 10**9}, "bad_inferences"),
        ({"expires_in_s": 5}, "bad_expires_in_s"),
        ({"target": {"planets": ["mars"]}}, "bad_target"),
        ({"target": {"devices": ["nobody"]}}, "empty_target"),
        ({"job": 123456}, "bad_job"),
    ],
)
def test_bad_input_is_a_400(fleet, versions, operator_api, fields, code):
    response = operator_api.post(URL, {**body(versions), **fields}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == code
    assert not BenchmarkRequest.objects.exists()


def test_roles(fleet, versions, viewer_api, anon_api):
    assert viewer_api.post(URL, body(versions), format="json").status_code == 403
    assert anon_api.post(URL, body(versions), format="json").status_code == 401
    assert anon_api.get(URL).status_code == 401
    _device, token = fleet[0]
    assert bearer(token).post(URL, body(versions), format="json").status_code in (401, 403)


def test_devices_report_only_their_own_runs(fleet, versions, operator_api):
    created = operator_api.post(URL, body(versions[:1]), format="json").json()
    (mine_device, mine), (_other_device, other) = fleet[0], fleet[1]
    run = BenchmarkRun.objects.get(request_id=created["id"], device=mine_device)
    path = f"/api/v1/device/benchmarks/{run.pk}/results"
    report = {
        "state": "done",
        "results": [
            {
                "sha256": versions[0].sha256,
                "state": "succeeded",
                "p50_ms": 1.0,
                "p95_ms": 2.0,
                "p99_ms": True,
                "throughput": "fast",
                "energy_mj": -1,
            }
        ],
    }
    assert bearer(other).post(path, report, format="json").status_code == 404
    assert bearer(mine).post(path, {"state": "weird"}, format="json").status_code == 400
    assert (
        bearer(mine).post(path, {"state": "done", "results": "x"}, format="json").status_code == 400
    )
    assert bearer(mine).post(path, [1, 2], format="json").status_code == 400
    assert bearer(mine).post(path, report, format="json").status_code == 200
    row = run.results.get()
    assert (row.state, row.p95_ms, row.p99_ms, row.throughput, row.energy_mj) == (
        "succeeded",
        2.0,
        None,
        None,
        None,
    )
    assert bearer(mine).post(path, report, format="json").status_code == 200  # resent
    assert bearer(mine).post(path, {"state": "refused"}, format="json").status_code == 409
    # Done: no longer listed, its artifact no longer served to this device for it.
    assert bearer(mine).get("/api/v1/device/benchmarks").json()["requests"] == []
    assert (
        bearer(mine)
        .post("/api/v1/device/benchmarks/999999/results", report, format="json")
        .status_code
        == 404
    )


def test_check_in_and_upload_answers_count_the_requests_waiting(fleet, versions, operator_api):
    """X-Benchmarks: a device fetches the list only when something waits; creating a
    request and the device's report change the (cached) count at once."""
    (device, token), (other_device, other) = fleet[0], fleet[1]
    upload = {"boot_id": "b" * 32, "batch": []}

    def waiting(tok) -> tuple[str, str]:
        polled = bearer(tok).get("/api/v1/device/update")
        sent = bearer(tok).post("/api/v1/device/telemetry", upload, format="json")
        assert polled.status_code == 204 and sent.status_code == 200, sent.content
        return polled["X-Benchmarks"], sent["X-Benchmarks"]

    assert waiting(token) == ("0", "0")  # and now cached
    created = operator_api.post(URL, body(versions[:1]), format="json").json()
    assert waiting(token) == ("1", "1")
    run = BenchmarkRun.objects.get(request_id=created["id"], device=device)
    report = {"state": "refused", "error_code": "no_room", "error": "disk full"}
    path = f"/api/v1/device/benchmarks/{run.pk}/results"
    assert bearer(token).post(path, report, format="json").status_code == 200
    assert waiting(token) == ("0", "0")
    assert waiting(other) == ("1", "1")  # its own run still waits
    BenchmarkRequest.objects.filter(pk=created["id"]).update(expires_at="2000-01-01T00:00Z")
    from ota import manifests

    manifests.forget([other_device.pk])  # what the cache TTL does
    assert waiting(other) == ("0", "0")  # expired: nothing to fetch


def test_openapi_describes_benchmarks(viewer_api):
    schema = viewer_api.get("/api/schema/?format=json").json()
    assert "/api/v1/benchmarks/" in schema["paths"]
    assert "post" in schema["paths"]["/api/v1/benchmarks/"]
    assert "/api/v1/device/benchmarks" in schema["paths"]
    assert "/api/v1/device/benchmarks/{pk}/results" in schema["paths"]
