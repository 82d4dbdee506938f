"""The `ci` role of a pipeline's token: it reads, pushes, compresses, creates releases and
starts canary deployments; everything else an operator does is refused."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from compression.models import CompressionJob
from fleet.models import AuditEntry
from fleet.roles import Role, role_of
from ota.models import Deployment, Release
from tests.ota.conftest import enroll, make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def devices(enrollment):
    return [enroll(enrollment, f"cam-{i:02d}")[0] for i in range(10)]


@pytest.fixture
def ci_release(db, ci_user):
    from ota import services

    return services.create_release(
        name="ci build", variants=[{"model_version": make_version(seed=4).pk}], actor=ci_user
    )


def test_ci_is_its_own_role_ranked_with_viewers(ci_user, operator_user):
    assert role_of(ci_user) == Role.CI
    ci_user.groups.add(operator_user.groups.get())
    del ci_user._edgefleet_role
    assert role_of(ci_user) == Role.OPERATOR  # the higher role wins


def test_ci_reads_what_viewers_read(ci_api, devices):
    for path in (
        "/api/v1/models/",
        "/api/v1/versions/",
        "/api/v1/jobs/",
        "/api/v1/releases/",
        "/api/v1/deployments/",
        "/api/v1/devices/",
        "/api/v1/datasets/",
    ):
        assert ci_api.get(path).status_code == 200, path
    assert ci_api.get("/api/v1/enrollment-tokens/").status_code == 403  # admins only


def test_me_names_the_role(ci_api, operator_api, anon_api):
    assert ci_api.get("/api/v1/me/").json() == {"username": "cici-pipeline", "role": "ci"}
    assert operator_api.get("/api/v1/me/").json()["role"] == "operator"
    assert anon_api.get("/api/v1/me/").status_code == 401


def test_ci_starts_a_compression_job_but_cannot_cancel_it(ci_api, operator_api):
    from tests.compression.jobs_support import job_payload, load_demo

    demo = load_demo()
    response = ci_api.post("/api/v1/jobs/", job_payload(demo), format="json")
    assert response.status_code == 201, response.content
    job = CompressionJob.objects.get()
    assert job.created_by.username == "cici-pipeline"
    assert ci_api.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 403
    assert operator_api.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 202


def test_ci_job_with_bad_input_is_400(ci_api):
    from tests.compression.jobs_support import job_payload, load_demo

    demo = load_demo()
    for bad in (
        {"kpis": {"max_latency_ms": "fast"}},
        {"recipes": ["no-such-recipe"]},
        {"source": 999_999},
        {"mode": "magic"},
    ):
        response = ci_api.post("/api/v1/jobs/", {**job_payload(demo), **bad}, format="json")
        assert response.status_code == 400, (bad, response.content)
    assert not CompressionJob.objects.exists()


def test_ci_cannot_do_other_operator_writes(ci_api, devices, ci_release):
    assert ci_api.post("/api/v1/models/", {"name": "x"}).status_code == 403
    assert (
        ci_api.patch(f"/api/v1/devices/{devices[0].uid}/", {"name": "n"}, format="json").status_code
        == 403
    )
    deployment = Deployment.objects.create(
        release=ci_release, target={"devices": ["cam-00"]}, phases=[100], status="running"
    )
    for action in ("pause", "resume", "approve", "abort", "rollback"):
        response = ci_api.post(f"/api/v1/deployments/{deployment.pk}/{action}/")
        assert response.status_code == 403, action
    assert AuditEntry.objects.filter(actor_name="cici-pipeline", result="denied").count() >= 7


def test_ci_creates_a_release(ci_api):
    version = make_version(seed=5)
    response = ci_api.post(
        "/api/v1/releases/",
        {"name": "from ci", "variants": [{"name": "default", "model_version": version.pk}]},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert Release.objects.get().created_by.username == "cici-pipeline"
    bad = ci_api.post(
        "/api/v1/releases/", {"name": "x", "variants": [{"model_version": 0}]}, format="json"
    )
    assert bad.status_code == 400 and bad.json()["code"] == "bad_model_version"


def test_ci_starts_a_canary_deployment(ci_api, devices, ci_release):
    response = ci_api.post(
        "/api/v1/deployments/",
        {
            "release": ci_release.pk,
            "target": {"groups": ["line-3"]},
            "phases": [10, 50, 100],
            "gates": {"max_latency_ratio": None},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    deployment = Deployment.objects.get()
    assert deployment.created_by.username == "cici-pipeline"
    assert deployment.updates.filter(state="pending").count() == 1  # the canary


@pytest.mark.parametrize(
    "phases, gates",
    [
        ([100], {}),  # unphased: fleet-wide at once
        ([50, 100], {}),  # "canary" of half the target
        ([10, 100], {"max_failure_rate": 1.0}),  # failure gate switched off
        ([10, 100], {"min_successful": 0}),
    ],
)
def test_ci_cannot_deploy_wide_or_ungated(ci_api, operator_api, devices, ci_release, phases, gates):
    body = {
        "release": ci_release.pk,
        "target": {"groups": ["line-3"]},
        "phases": phases,
        "gates": gates,
    }
    response = ci_api.post("/api/v1/deployments/", body, format="json")
    assert response.status_code == 403, response.content
    assert response.json()["code"] == "needs_operator"
    assert not Deployment.objects.exists()
    if phases[0] <= 10:  # an operator may (an ungated first phase over 20 % needs an admin)
        assert operator_api.post("/api/v1/deployments/", body, format="json").status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"target": {"groups": ["line-3"]}, "phases": "ten"},
        {"target": {"groups": ["line-3"]}, "phases": [10, 5, 100]},
        {"target": "everything", "phases": [10, 100]},
        {"target": {"groups": ["line-3"]}, "phases": [10, 100], "gates": {"bogus": 1}},
        {"target": {"groups": ["nowhere"]}, "phases": [10, 100]},
    ],
)
def test_ci_malformed_deployment_is_4xx(ci_api, devices, ci_release, body):
    response = ci_api.post(
        "/api/v1/deployments/", {"release": ci_release.pk, **body}, format="json"
    )
    assert response.status_code == 400, response.content
    assert not Deployment.objects.exists()


def test_api_token_command_makes_a_ci_account(capsys):
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    call_command("api_token", "gitlab-ci", "--role", "ci")
    key = capsys.readouterr().out.strip()
    user = get_user_model().objects.get(username="gitlab-ci")
    assert role_of(user) == Role.CI and not user.has_usable_password()
    assert Token.objects.get(user=user).key == key
    call_command("api_token", "gitlab-ci")
    assert capsys.readouterr().out.strip() == key
    call_command("api_token", "gitlab-ci", "--rotate")
    assert capsys.readouterr().out.strip() != key
