"""The agent's own wheel: built from devices/agent, installed with no index into a fresh
venv next to its declared dependencies only, and `edgefleet-agent` runs there."""

from __future__ import annotations

import subprocess

import pytest

from benchmarks.agent import SERVER_ONLY, install_agent, installed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_wheel_installs_alone_without_server_dependencies(tmp_path):
    venv = install_agent(tmp_path)
    names = installed(venv)
    assert "edgefleet-agent" in names
    assert {"onnxruntime", "numpy", "cryptography"} <= names
    assert not names & SERVER_ONLY
    assert not {"paho-mqtt", "django", "celery", "boto3"} & names

    def agent(*args, **kwargs):
        return subprocess.run(
            [venv / "bin" / "edgefleet-agent", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            check=False,
            **kwargs,
        )

    helped = agent("--help")
    assert helped.returncode == 0 and "enroll" in helped.stdout and "run" in helped.stdout
    version = agent("--version")
    assert version.returncode == 0 and version.stdout.strip()
    # Imports the whole package in the venv: nothing reaches for the server tree.
    probe = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import importlib, pkgutil, sys, edgefleet_agent as a\n"
            "for m in pkgutil.iter_modules(a.__path__):\n"
            "    m.name == '__main__' or m.name == 'mqtt' or importlib.import_module("
            "'edgefleet_agent.' + m.name)\n"
            "from edgefleet_agent.client import USER_AGENT\n"
            "print(USER_AGENT, sorted({n.split('.')[0] for n in sys.modules} & "
            "{'django', 'devices', 'fleet', 'ota', 'compression'}))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [f"edgefleet-agent/{version.stdout.strip()}", "[]"]
    refused = agent("run", "--state-dir", str(tmp_path / "nowhere"))
    assert refused.returncode == 1 and "not enrolled" in refused.stderr
