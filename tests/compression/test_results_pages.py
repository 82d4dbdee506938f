"""Reading results: the model page opens on the best version, KPI-missing variants are
marked and not offered for release, metrics read as a table."""

from __future__ import annotations

import pytest

from compression.models import CompressionJob, ModelVersion
from tests.ota.conftest import make_version

pytestmark = pytest.mark.django_db


def _variant(source, recipe: str, *, meets: bool, chosen: bool = False, job=None):
    job = job or CompressionJob.objects.create(
        source=source, status="succeeded", kpis={"max_latency_ms": 5}
    )
    version = make_version(source.model.name, p95=4.0)
    ModelVersion.objects.filter(pk=version.pk).update(
        parent=source,
        recipe={"name": recipe, "job": job.pk},
        metrics={"latency_ms": {"p50": 3.21, "p95": 4.0}, "accuracy": 0.38},
    )
    job.candidates.create(
        recipe=recipe,
        version=version,
        meets_kpis=meets,
        chosen=chosen,
        violations=[] if meets else ["accuracy drop 60 pt > 1 pt"],
    )
    return job, ModelVersion.objects.get(pk=version.pk)


def test_model_page_opens_on_the_chosen_variant_not_the_latest_failed_one(client, operator_user):
    source = make_version("cam")
    job, chosen = _variant(source, "int8-static", meets=True, chosen=True)
    _job, failed = _variant(source, "prune-structured", meets=False, job=job)
    client.force_login(operator_user)
    page = client.get(f"/models/{source.model_id}/")
    assert page.context["selected"] == chosen
    text = page.content.decode()
    assert "misses the KPIs" in text and 'id="use-in-release"' in text
    assert 'id="meta-metrics"' in text and "latency_ms.p50" in text and "{&#x27;" not in text
    failed_page = client.get(f"/models/{source.model_id}/?v={failed.number}").content.decode()
    assert 'id="version-misses-kpis"' in failed_page and 'id="use-in-release"' not in failed_page
    form = client.get(f"/deployments/releases/new/?version={failed.pk}").content.decode()
    assert f'value="{failed.pk}"' not in form and f'value="{chosen.pk}"' in form
    assert f'value="{source.pk}"' in form  # the upload itself stays offered


def test_job_form_describes_recipes_and_shows_the_baseline(client, operator_user):
    source = make_version("cam", p95=12.5)
    client.force_login(operator_user)
    text = client.get(f"/models/versions/{source.pk}/compress/").content.decode()
    assert "int8-static — int8 weights and activations" in text
    assert 'id="baseline-latency"' in text and "12.50" in text


def test_a_kpi_missing_variant_is_released_only_with_the_override(
    client, operator_user, viewer_user, operator_api
):
    from ota import services
    from ota.models import Release

    source = make_version("cam")
    _job, failed = _variant(source, "prune-structured", meets=False)
    with pytest.raises(services.OtaError) as caught:
        services.create_release(name="no", variants=[{"model_version": failed.pk}])
    assert caught.value.code == "misses_kpis" and caught.value.field == "variants"
    refused = operator_api.post(
        "/api/v1/releases/",
        {"name": "no", "variants": [{"model_version": failed.pk}]},
        format="json",
    )
    assert refused.status_code == 400 and refused.json()["code"] == "misses_kpis"
    forced = operator_api.post(
        "/api/v1/releases/",
        {"name": "forced", "variants": [{"model_version": failed.pk}], "allow_kpi_misses": True},
        format="json",
    )
    assert forced.status_code == 201, forced.content
    # the page: the model page links to the override, which offers the variant
    client.force_login(operator_user)
    page = client.get(f"/models/{source.model_id}/?v={failed.number}").content.decode()
    assert 'id="release-anyway"' in page and 'id="use-in-release"' not in page
    url = f"/deployments/releases/new/?version={failed.pk}&allow_kpi_misses=1"
    assert f'value="{failed.pk}" selected' in client.get(url).content.decode()
    form = {
        "name": "from page",
        "slot": "default",
        "default_variant": "default",
        "variant_0_name": "default",
        "variant_0_version": failed.pk,
    }
    assert client.post("/deployments/releases/new/", form).status_code == 400
    done = client.post("/deployments/releases/new/", {**form, "allow_kpi_misses": "on"})
    assert done.status_code == 302
    assert Release.objects.filter(name__in=["forced", "from page"]).count() == 2
    client.force_login(viewer_user)
    assert client.post("/deployments/releases/new/", form).status_code == 403


def test_job_page_names_its_kpis_as_the_form_does(client, viewer_user):
    source = make_version("cam")
    job, _version = _variant(source, "int8-static", meets=True, chosen=True)
    client.force_login(viewer_user)
    text = client.get(f"/models/jobs/{job.pk}/").content.decode()
    assert "Max latency p50 (ms): 5" in text and "max_latency_ms = 5" not in text
    client.cookies["django_language"] = "zh-hans"
    assert "最大 p50 延迟（毫秒）: 5" in client.get(f"/models/jobs/{job.pk}/").content.decode()


def test_each_row_that_misses_says_why_in_the_row(client, viewer_user):
    """A candidate that was not evaluated, or missed a KPI, says why in its own row (in
    the reader's language), not only in a tooltip or the report."""
    source = make_version("cam")
    job, _version = _variant(source, "int8-static", meets=True, chosen=True)
    skipped = make_version("cam", p95=4.0)
    job.candidates.create(
        recipe="int8-static[qdq,s8]",
        version=skipped,
        meets_kpis=False,
        violations=["not evaluated: neither faster nor smaller than fp32"],
    )
    client.force_login(viewer_user)
    text = client.get(f"/models/jobs/{job.pk}/").content.decode()
    row = text[text.index('data-recipe="int8-static[qdq,s8]"') :].split("</tr>")[0]
    assert 'class="muted why"' in row and "neither faster nor smaller than fp32" in row
    client.cookies["django_language"] = "zh-hans"
    text = client.get(f"/models/jobs/{job.pk}/").content.decode()
    row = text[text.index('data-recipe="int8-static[qdq,s8]"') :].split("</tr>")[0]
    assert 'class="muted why"' in row and "neither faster nor smaller" not in row
