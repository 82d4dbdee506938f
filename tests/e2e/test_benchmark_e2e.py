"""On-device benchmarks end to end: real agents (onnxruntime) against the real server
over HTTP. Three candidate versions on three agents: every device measures every
version in its sandbox, the job page shows predicted against measured, the active
model stays as it was, and tampered or expired requests are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devices.agent.bench import Benchmarks
from devices.agent.client import Client
from tests.conftest import tiny_model_bytes
from tests.e2e.test_agent_ota_e2e import (
    active_sha,
    agent_cli,
    deploy,
    enroll_agents,
    run_all,
    stored_version,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _profiles(transactional_db):
    import importlib

    from django.apps import apps

    importlib.import_module("devices.migrations.0002_seed_hardware_profiles").seed(apps, None)


def test_three_versions_on_three_agents(live_server, admin_user, operator_api, client, tmp_path):
    from compression.models import Candidate, CompressionJob
    from devices import services as devices_services
    from ota.models import BenchmarkResult, BenchmarkRun

    token = devices_services.create_enrollment_token(name="bench")[1]
    states = enroll_agents(live_server, token, tmp_path, 3)
    active = stored_version("benched", tiny_model_bytes(1), p95=1000.0)
    deploy(active, [s.uid for s in states], admin_user)
    run_all(states)
    assert all(active_sha(s) == active.sha256 for s in states)

    candidates = [
        stored_version("benched", tiny_model_bytes(10 + i, hidden=8 * (i + 1)), p95=0.5 * (i + 1))
        for i in range(3)
    ]
    job = CompressionJob.objects.create(source=active)
    for i, version in enumerate(candidates):
        Candidate.objects.create(job=job, recipe=f"r{i}", version=version)
    created = operator_api.post(
        "/api/v1/benchmarks/",
        {
            "versions": [v.pk for v in candidates],
            "target": {"hardware_profiles": ["rpi4"]},
            "inferences": 30,
            "job": job.pk,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["runs"] == {"pending": 3}

    for state in states:
        agent_cli("run", "--once", "--state-dir", str(state.root))
    assert all(active_sha(s) == active.sha256 for s in states)  # untouched
    assert not [p for s in states for p in (s.root / "benchmarks").glob("*.onnx")]
    results = BenchmarkResult.objects.filter(run__request_id=created.json()["id"])
    assert results.count() == 9 and set(results.values_list("state", flat=True)) == {"succeeded"}
    for row in results:
        assert 0 < row.p50_ms <= row.p95_ms <= row.p99_ms and row.throughput > 0
        assert row.peak_rss_mb > 0 and row.load_ms > 0 and row.hardware_profile.slug == "rpi4"
        assert row.predicted_p95_ms > 0
    detail = operator_api.get(f"/api/v1/benchmarks/{created.json()['id']}/").json()
    assert detail["runs"] == {"done": 3} and len(detail["results"]) == 9

    client.force_login(admin_user)
    page = client.get(f"/deployments/benchmarks/job/{job.pk}/").content.decode()
    for version in candidates:
        assert version.device_label in page
    assert page.count("<tr>") == 1 + 3 and " %" in page  # one row per version × profile
    from django.urls import reverse

    job_page = client.get(reverse("compression:job-detail", args=[job.pk])).content.decode()
    assert "Measured on devices" in job_page and reverse("ota:job-benchmarks", args=[job.pk]) in (
        job_page
    )

    # Tampered: the stored envelope is changed after signing -> refused, nothing runs.
    one, two = states[0], states[1]
    tampered = operator_api.post(
        "/api/v1/benchmarks/",
        {"versions": [candidates[0].pk], "target": {"devices": [one.uid]}, "inferences": 5},
        format="json",
    ).json()
    run = BenchmarkRun.objects.get(request_id=tampered["id"])
    run.envelope["manifest"]["inferences"] = 10_000
    run.save(update_fields=["envelope"])
    agent = Benchmarks(one, Client(live_server.url, one.token, timeout=30), settings={})
    (report,) = agent.poll()
    assert report["state"] == "refused" and report["error_code"] == "bad_signature"
    run.refresh_from_db()
    assert (run.state, run.error_code) == ("refused", "bad_signature")
    assert run.results.get().state == "pending"

    # Expired: the device's clock is past the request's expiry -> refused.
    expired = operator_api.post(
        "/api/v1/benchmarks/",
        {"versions": [candidates[1].pk], "target": {"devices": [two.uid]}, "expires_in_s": 60},
        format="json",
    ).json()
    agent = Benchmarks(two, Client(live_server.url, two.token, timeout=30), settings={})
    (report,) = agent.poll(now=datetime.now(UTC) + timedelta(minutes=5))
    assert report["error_code"] == "expired"
    run = BenchmarkRun.objects.get(request_id=expired["id"])
    assert (run.state, run.error_code) == ("refused", "expired")
    assert all(active_sha(s) == active.sha256 for s in states)


def test_the_simulator_answers_from_the_estimate(live_server, operator_api, tmp_path):
    from devices import services as devices_services
    from ota.models import BenchmarkResult
    from tests.e2e.servers import run_simulator, summary

    token = devices_services.create_enrollment_token(name="sim-bench")[1]

    def simulate(seconds: str) -> dict:
        fleet = ("--devices", "2", "--uid-prefix", "simb", "--hardware-profile", "rpi4")
        pace = ("--poll-interval-s", "1", "--ramp-s", "0.2", "--benchmark-poll-s", "1")
        args = (*fleet, *pace, "--duration-s", seconds)
        return summary(run_simulator(live_server.url, token, tmp_path, *args))

    assert simulate("3")["enrolled"] == 2
    version = stored_version("simbench", tiny_model_bytes(31), p95=40.0)
    created = operator_api.post(
        "/api/v1/benchmarks/",
        {"versions": [version.pk], "target": {"hardware_profiles": ["rpi4"]}, "inferences": 500},
        format="json",
    )
    assert created.status_code == 201, created.content
    simulate("4")
    rows = BenchmarkResult.objects.filter(run__request_id=created.json()["id"])
    assert rows.count() == 2 and {r.state for r in rows} == {"succeeded"}
    for row in rows:
        # drawn around the estimate: p95 within the noise model of 40 ms
        assert 25 < row.p95_ms < 60 and row.predicted_p95_ms == 40.0


def test_real_agents_choose_the_jobs_variant(
    live_server, monkeypatch, client, admin_user, tmp_path
):
    """A job choosing by device results: three real agents measure its variants over
    HTTP; each report's ingest hook decides once the last one is in."""
    from django.urls import reverse

    from compression import device_choice
    from compression.choices import DeviceChoice, JobStatus
    from compression.models import Candidate, CompressionJob
    from devices import services as devices_services

    decided, decide = [], device_choice.decide

    def spy(job_id, **kwargs):  # what the ingest hook decided, in the live server
        decided.append(decide(job_id, **kwargs))
        return decided[-1]

    monkeypatch.setattr(device_choice, "decide", spy)
    token = devices_services.create_enrollment_token(name="choose")[1]
    states = enroll_agents(live_server, token, tmp_path, 3)
    source = stored_version("chosen", tiny_model_bytes(30, hidden=64), p95=5.0)
    job = CompressionJob.objects.create(
        source=source,
        status=JobStatus.SUCCEEDED,
        kpis={"min_fidelity": 0.9},
        result={"chosen": "fp32", "reason": "estimate"},
        options={"device_benchmark": {"target": {"hardware_profiles": ["rpi4"]}, "choose": True}},
    )
    metrics = {"p50_ms": 1.0, "size_mb": 0.1, "size_bytes": 100_000}
    rows = [("fp32", source, 1.0, True)]
    for i, fidelity in enumerate((0.99, 0.5)):
        data = tiny_model_bytes(31 + i, hidden=8)
        rows.append((f"small-{i}", stored_version("chosen", data, p95=1.0), fidelity, False))
    for recipe, version, fidelity, chosen in rows:
        Candidate.objects.create(
            job=job,
            recipe=recipe,
            version=version,
            metrics={**metrics, "fidelity": fidelity},
            meets_kpis=fidelity >= 0.9,
            chosen=chosen,
        )
    assert device_choice.request_benchmarks(job) == DeviceChoice.WAITING  # the runner's step

    agent_cli("run", "--once", "--state-dir", str(states[0].root))
    job.refresh_from_db()
    assert job.device_choice == DeviceChoice.WAITING and decided == []  # not the last
    client.force_login(admin_user)
    page = client.get(reverse("compression:job-detail", args=[job.pk])).content.decode()
    assert "Waiting for device results: 1/3" in page

    run_all(states[1:])
    job.refresh_from_db()
    assert decided == [DeviceChoice.MEASURED]  # the last report decided, once
    (chosen,) = job.candidates.filter(chosen=True)
    assert chosen.recipe in {"fp32", "small-0"}  # small-1 misses fidelity: never chosen
    measured = device_choice.measured_p50(job)
    assert set(measured) == {v.pk for _r, v, _f, _c in rows}
    assert all(p50 > 0 for by in measured.values() for p50 in by.values())
    page = client.get(reverse("compression:job-detail", args=[job.pk])).content.decode()
    assert "chosen by device results" in page and job.result["device_choice"]["reason"] in page
