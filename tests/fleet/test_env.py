import pytest
from django.core.exceptions import ImproperlyConfigured

from fleet.env import env_bool, env_int, env_list


def test_env_bool(monkeypatch):
    monkeypatch.setenv("X", "yes")
    assert env_bool("X") is True
    monkeypatch.setenv("X", "0")
    assert env_bool("X", True) is False
    monkeypatch.setenv("X", "maybe")
    with pytest.raises(ImproperlyConfigured, match="not a boolean"):
        env_bool("X")
    monkeypatch.delenv("X")
    assert env_bool("X", True) is True


def test_env_int(monkeypatch):
    monkeypatch.setenv("N", "12")
    assert env_int("N", 1) == 12
    monkeypatch.setenv("N", "twelve")
    with pytest.raises(ImproperlyConfigured, match="not an integer"):
        env_int("N", 1)
    monkeypatch.setenv("N", "-1")
    with pytest.raises(ImproperlyConfigured, match="minimum"):
        env_int("N", 1, minimum=0)


def test_env_list(monkeypatch):
    monkeypatch.setenv("L", "a, b,,c")
    assert env_list("L") == ["a", "b", "c"]
    monkeypatch.delenv("L")
    assert env_list("L", ["d"]) == ["d"]


def test_settings_fail_loudly_on_bad_value():
    import os
    import subprocess
    import sys

    env = {**os.environ, "DEBUG": "perhaps"}
    proc = subprocess.run(
        [sys.executable, "-c", "import django; from django.conf import settings; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "DEBUG='perhaps' is not a boolean" in proc.stderr
