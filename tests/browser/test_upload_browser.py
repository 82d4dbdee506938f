"""A person logs in, uploads the demo model and sees its metadata."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_login_upload_and_see_metadata(
    page, live_server, login, operator_user, demo_model_path, tmp_path
):
    login(operator_user, "pw-oscar-operator")
    page.click("text=Models")
    page.click("text=Upload a model")
    page.fill("#id_name", "digits-from-browser")
    page.select_option("#id_task", "classification")
    page.set_input_files("#id_file", str(demo_model_path))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#version-meta")
    assert page.inner_text("h1").startswith("digits-from-browser")
    assert "Validating" in page.inner_text("#version-status")
    from compression import tasks
    from compression.models import ModelVersion

    # the worker's part, here in the test process; the page polls and updates itself
    tasks.validate_model_version(ModelVersion.objects.get(model__name="digits-from-browser").pk)
    page.wait_for_function(
        "document.querySelector('#version-status').innerText.includes('Ready')", timeout=20000
    )
    inputs = page.inner_text("#meta-inputs")
    outputs = page.inner_text("#meta-outputs")
    assert "float" in inputs.lower()
    assert outputs.strip()
    assert page.inner_text("#meta-params").strip() not in {"", "0"}
    assert page.inner_text("#meta-opsets").strip()
    page.screenshot(
        path=os.environ.get("EDGEFLEET_SCREENSHOT", str(tmp_path / "detail.png")), full_page=True
    )
