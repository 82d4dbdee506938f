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


def _throttle_uploads(page, bytes_per_s: int) -> None:
    """Chromium's own network emulation: a localhost upload then takes seconds."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": bytes_per_s,
        },
    )


def test_upload_shows_its_limit_and_progress(page, live_server, login, operator_user, tmp_path):
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(12 * 1024 * 1024))  # not ONNX: the server refuses it after
    login(operator_user, "pw-oscar-operator")
    page.goto(f"{live_server.url}/models/upload/")
    assert "Largest upload: 512.0 MB." in page.inner_text("#upload-form .upload-limit")
    page.fill("#id_name", "big-from-browser")
    page.select_option("#id_task", "classification")
    page.set_input_files("#id_file", str(big))
    _throttle_uploads(page, 4 * 1024 * 1024)
    page.click("#upload-form button[type=submit]")
    # several progress events, shown as a percentage, while the body is still going up
    page.wait_for_function(
        """() => {
          const box = document.querySelector('#upload-form .upload-box');
          if (!box || !box.dataset.percents) return false;
          const seen = box.dataset.percents.split(' ').map(Number).filter(p => p > 0 && p < 100);
          return new Set(seen).size >= 2 && !box.querySelector('.upload-progress').hidden
            && Number(box.querySelector('.upload-percent').innerText) > 0;
        }""",
        timeout=60_000,
    )
    # then the server's answer replaces the page: the form again, with the validator's reason
    page.wait_for_selector("#upload-form .errorlist", timeout=60_000)
    assert page.url.endswith("/models/upload/")
    assert page.input_value("#id_name") == "big-from-browser"


def test_over_limit_upload_is_refused_before_sending(
    page, live_server, login, operator_user, settings, tmp_path
):
    settings.EDGEFLEET_MAX_UPLOAD_BYTES = 1024 * 1024
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))
    login(operator_user, "pw-oscar-operator")
    page.goto(f"{live_server.url}/models/upload/")
    page.select_option("#lang-form select", "zh-hans")
    page.wait_for_selector("html[lang=zh-hans]")
    assert "1.0 MB" in page.inner_text("#upload-form .upload-limit")
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.fill("#id_name", "too-big")
    page.set_input_files("#id_file", str(big))
    page.click("#upload-form button[type=submit]")
    error = page.wait_for_selector("#upload-form .upload-error:not([hidden])")
    assert "1.0 MB" in error.inner_text() and "上传" in error.inner_text()
    assert not posts
