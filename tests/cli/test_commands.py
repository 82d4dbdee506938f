"""The `edgefleet` commands against a live server (in this process, over HTTP):
config and login, push, and every kind of bad input — one clear line, the documented
exit code, nothing left half created on the server."""

from __future__ import annotations

import io
import socket
import stat

import pytest

from compression.models import CompressionJob, Dataset, MLModel, ModelVersion
from fleet.cli import BAD_INPUT, ERROR, MISSED, OK
from fleet.cli.main import main
from tests.cli.conftest import DEMO_EVAL, DEMO_MODEL, PUSH_DEMO

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """Run `edgefleet ARGS` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("EDGEFLEET_URL", raising=False)
    monkeypatch.delenv("EDGEFLEET_TOKEN", raising=False)

    def run(*args, stdin: str | None = None):
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def server(live_server, ci_token, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_URL", live_server.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", ci_token)
    return live_server.url


def one_line(err: str) -> str:
    assert err.startswith("edgefleet: ") and err.count("\n") == 1, err
    return err


def nothing_on_server() -> bool:
    return not (
        MLModel.objects.exists()
        or ModelVersion.objects.exists()
        or Dataset.objects.exists()
        or CompressionJob.objects.exists()
    )


def test_login_checks_the_token_and_saves_it_for_the_user_only(
    cli, live_server, ci_token, tmp_path
):
    code, out, _err = cli("login", "--url", live_server.url, "--token-stdin", stdin=ci_token + "\n")
    assert code == OK and "cici-pipeline (ci)" in out
    path = tmp_path / "config" / "edgefleet" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ci_token in path.read_text()
    code, out, _err = cli("status")  # no flag, no env: the saved login
    assert code == OK and "signed in as cici-pipeline (ci)" in out
    assert cli("logout")[0] == OK and not path.exists()


def test_login_with_a_wrong_token_saves_nothing(cli, live_server, tmp_path):
    code, _out, err = cli("login", "--url", live_server.url, "--token", "wrong")
    assert code == BAD_INPUT
    assert "refused the credentials (401)" in one_line(err)
    assert not (tmp_path / "config" / "edgefleet").exists()


def test_saved_token_is_not_sent_to_another_server(cli, live_server, ci_token, monkeypatch):
    assert cli("login", "--url", live_server.url, "--token", ci_token)[0] == OK
    code, _out, err = cli("status", "--url", "http://other.example:1")
    assert code == BAD_INPUT and "no API token" in one_line(err)


def test_flags_beat_env(cli, server):
    code, _out, err = cli("status", "--token", "not-the-env-token")
    assert code == BAD_INPUT and "401" in one_line(err)


def test_push_prints_the_version_id_and_same_bytes_give_the_same_version(cli, server):
    code, out, err = cli(*PUSH_DEMO)
    assert code == OK, err
    version = ModelVersion.objects.get()
    assert out == f"{version.pk}\n" and "new" in err
    code, out, err = cli(*PUSH_DEMO)
    assert code == OK and out == f"{version.pk}\n" and "unchanged" in err
    assert ModelVersion.objects.count() == 1 and Dataset.objects.count() == 2


def test_push_json(cli, server):
    import json

    code, out, _err = cli("push", DEMO_MODEL, "--name", "digits-cnn", "--json")
    assert code == OK
    body = json.loads(out)
    assert body["created"] is True and body["version"]["model_name"] == "digits-cnn"


def test_missing_file_is_bad_input_and_sends_nothing(cli, server, tmp_path):
    code, out, err = cli("push", tmp_path / "nope.onnx", "--name", "m")
    assert (code, out) == (BAD_INPUT, "")
    assert "no such file" in one_line(err)
    code, _out, err = cli("push", DEMO_MODEL, "--name", "m", "--eval", tmp_path / "e.npz")
    assert code == BAD_INPUT and "no such file" in one_line(err)
    assert nothing_on_server()


def test_not_onnx_is_refused_and_nothing_is_left(cli, server, tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"<html>not a model</html>")
    code, out, err = cli("push", fake, "--name", "fresh-model", "--eval", DEMO_EVAL)
    assert (code, out) == (BAD_INPUT, "")
    assert "refused (400" in one_line(err)
    assert nothing_on_server()
    text = tmp_path / "model.txt"
    text.write_bytes(b"x")
    code, _out, err = cli("push", text, "--name", "fresh-model")
    assert code == BAD_INPUT and "expected a .onnx file" in one_line(err)


def test_unknown_ids_are_bad_input(cli, server):
    code, _out, err = cli("compress", 999999, "--auto", "--max-latency-ms", 5)
    assert code == BAD_INPUT and "unknown model version 999999" in one_line(err)
    code, _out, err = cli("release", "create", "--from-job", 999999)
    assert code == BAD_INPUT and "unknown compression job 999999" in one_line(err)
    code, _out, err = cli("deploy", 999999, "--group", "g", "--phases", "10,100")
    assert code == BAD_INPUT and "Unknown release" in one_line(err)
    code, _out, err = cli("logs", "no-such-device")
    assert code == BAD_INPUT and "unknown device no-such-device" in one_line(err)
    assert nothing_on_server()


def test_usage_errors_are_bad_input(cli, server):
    assert cli("compress", "abc", "--auto")[0] == BAD_INPUT
    assert cli("compress", 1)[0] == BAD_INPUT  # neither --auto nor --recipe
    assert cli("compress", 1, "--auto", "--recipe", "fp16")[0] == BAD_INPUT
    code, _out, err = cli("deploy", 1, "--phases", "10,100")
    assert code == BAD_INPUT and "--group" in one_line(err)
    code, _out, err = cli("deploy", 1, "--group", "g", "--phases", "ten")
    assert code == BAD_INPUT and "--phases" in one_line(err)
    code, _out, err = cli("deploy", 1, "--group", "g", "--max-latency-ratio", "fast")
    assert code == BAD_INPUT and "a number or 'off'" in one_line(err)


def test_compress_without_evaluation_data_is_bad_input(cli, server):
    assert cli("push", DEMO_MODEL, "--name", "digits-cnn")[0] == OK
    code, _out, err = cli("compress", ModelVersion.objects.get().pk, "--auto")
    assert code == BAD_INPUT and "no evaluation dataset" in one_line(err)
    assert not CompressionJob.objects.exists()


def test_release_of_a_job_that_met_no_kpi_is_below_the_bar(cli, server):
    assert cli("push", DEMO_MODEL, "--name", "digits-cnn", "--eval", DEMO_EVAL)[0] == OK
    version, evaluation = ModelVersion.objects.get(), Dataset.objects.get()
    job = CompressionJob.objects.create(
        source=version, evaluation=evaluation, status="succeeded", kpis={"max_latency_ms": 0.001}
    )
    job.candidates.create(recipe="fp32", version=version, violations=["too slow"])
    code, out, err = cli("release", "create", "--from-job", job.pk)
    assert (code, out) == (MISSED, "")
    assert "meets its KPIs" in one_line(err)


def test_wrong_token_is_bad_input(cli, server):
    code, _out, err = cli("push", DEMO_MODEL, "--name", "m", "--token", "0" * 40)
    assert code == BAD_INPUT and "401" in one_line(err)
    assert nothing_on_server()


def test_viewer_token_is_refused_with_the_reason(cli, server, viewer_user):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=viewer_user).key
    code, _out, err = cli("push", DEMO_MODEL, "--name", "m", "--token", token)
    assert code == BAD_INPUT and "permission denied (403)" in one_line(err)
    assert nothing_on_server()


def test_server_down_is_a_transport_error(cli, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("EDGEFLEET_TOKEN", "t")
    for args in (("status",), ("push", DEMO_MODEL, "--name", "m")):
        code, out, err = cli(*args, "--url", f"http://127.0.0.1:{port}")
        assert (code, out) == (ERROR, "")
        assert "cannot reach the server" in one_line(err)


def test_no_server_configured_is_bad_input(cli):
    code, _out, err = cli("status")
    assert code == BAD_INPUT and "EDGEFLEET_URL" in one_line(err)
    code, _out, err = cli("status", "--url", "ftp://x")
    assert code == BAD_INPUT and "must look like" in one_line(err)


def test_status_and_logs(cli, server, enrollment):
    from datetime import UTC, datetime

    from devices.models import LogLine
    from tests.ota.conftest import enroll

    device, _token = enroll(enrollment, "cam-07")
    LogLine.objects.bulk_create(
        LogLine(
            device=device,
            boot_id="b1",
            seq=i,
            message=f"line {i}",
            ts=datetime(2026, 12, 1, 10, 0, i, tzinfo=UTC),
        )
        for i in range(3)
    )
    code, out, _err = cli("status")
    assert code == OK and "devices: 1 online, 0 offline" in out and "no deployments" in out
    code, out, err = cli("logs", "cam-07")
    assert code == OK, err
    assert [line.split("  ", 1)[1] for line in out.splitlines()] == [
        f"info     line {i}" for i in range(3)
    ]


def test_waiting_gives_up_with_exit_4_and_the_job_goes_on(cli, server):
    from fleet.cli import TIMEOUT

    args = ("push", DEMO_MODEL, "--name", "digits-cnn", "--eval", DEMO_EVAL)
    assert cli(*args)[0] == OK
    version = ModelVersion.objects.get()
    code, out, err = cli("compress", version.pk, "--recipe", "fp16", "--wait", "--timeout", 0.5)
    assert (code, out) == (TIMEOUT, "")
    assert "still queued" in err.splitlines()[-1] and "goes on on the server" in err
    job = CompressionJob.objects.get()
    assert job.status == "queued"  # nobody cancelled it (no worker runs in this test)
    code, out, _err = cli("compress", version.pk, "--recipe", "fp16")  # no --wait: the id
    assert code == OK and out.strip().isdigit()


def test_compress_asks_devices_to_benchmark_and_choose(cli, server):
    from devices import services as devices_services
    from tests.conftest import seed_hardware_profiles

    seed_hardware_profiles()
    token = devices_services.create_enrollment_token(name="cli-bench")[1]
    devices_services.enroll(token, {"uid": "cli-pi", "hardware_profile": "rpi4"})
    assert cli("push", DEMO_MODEL, "--name", "digits-cnn", "--eval", DEMO_EVAL)[0] == OK
    version = ModelVersion.objects.get()
    flags = ("--bench-profile", "rpi4", "--bench-device", "cli-pi", "--choose-by-devices")
    code, _out, err = cli("compress", version.pk, "--auto", *flags, "--device-timeout", 120)
    assert code == OK, err
    assert CompressionJob.objects.get().options["device_benchmark"] == {
        "target": {"hardware_profiles": ["rpi4"], "devices": ["cli-pi"]},
        "choose": True,
        "timeout_s": 120,
    }
    code, _out, err = cli("compress", version.pk, "--auto", "--bench-device", "nobody")
    assert code == BAD_INPUT and "matches no device" in one_line(err)
    code, _out, err = cli("compress", version.pk, "--auto", "--choose-by-devices")
    assert code == BAD_INPUT, err
    assert CompressionJob.objects.count() == 1
