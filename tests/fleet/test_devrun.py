"""`make run`'s supervisor stops web, worker (with beat) and devices on a signal,
and a second start finds no stray worker from a run that was killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet.devrun import alive

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _start(var: Path, grace_s: int = 10) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL"}
    }
    env.update(EDGEFLEET_VAR_DIR=str(var), DEBUG="1")  # the embedded defaults, as `make run`
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.devrun",
            "--port",
            str(_free_port()),
            "--devices",
            "2",
            "--token",
            "not-a-token",
            "--grace-s",
            str(grace_s),
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _running(var: Path) -> list[int]:
    """The children's process groups once all three run and the worker is up."""
    try:
        pgids = json.loads((var / "run.pids").read_text())["pgids"]
    except (OSError, ValueError, KeyError):
        return []
    return pgids if len(pgids) >= 3 and (var / "worker-heartbeat").exists() else []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_process_group_stops_every_child(tmp_path, signum):
    """Ctrl-C (SIGINT) or SIGTERM to `make run`'s group: web, worker with beat and the
    devices all stop on SIGTERM, well before the SIGKILL fallback (`--grace-s`)."""
    grace_s = 90
    run = _start(tmp_path, grace_s=grace_s)
    try:
        pgids = _wait(lambda: _running(tmp_path), 120, "web, worker and devices")
        started = time.monotonic()
        os.killpg(run.pid, signum)  # what `make run`'s group receives
        run.wait(timeout=grace_s + 30)
        elapsed = time.monotonic() - started
        assert not any(alive(p) for p in pgids)
        # Before the fix the supervisor waited on its own zombies for the whole grace.
        assert elapsed < grace_s / 2, f"took {elapsed:.1f} s: something waited for SIGKILL"
        assert not (tmp_path / "run.pids").exists()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def test_a_second_start_stops_the_strays_of_a_killed_run(tmp_path):
    first = _start(tmp_path)
    second = None
    try:
        strays = _wait(lambda: _running(tmp_path), 120, "the first run")
        os.kill(first.pid, signal.SIGKILL)  # the supervisor dies; its children do not
        first.wait(timeout=10)
        strays = [p for p in strays if alive(p)]  # (the one-shot demo rollout may be done)
        assert len(strays) >= 3  # web, worker and devices outlived their supervisor
        (tmp_path / "worker-heartbeat").unlink()
        second = _start(tmp_path)
        _wait(lambda: not any(alive(p) for p in strays), 60, "the strays to be stopped")
        _wait(lambda: _running(tmp_path), 120, "the second run")
        os.killpg(second.pid, signal.SIGINT)  # Ctrl-C
        second.wait(timeout=60)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        try:
            for pgid in json.loads((tmp_path / "run.pids").read_text())["pgids"]:
                if alive(pgid):
                    os.killpg(pgid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_and_said_so(capsys):
    from fleet.devrun import stop_groups

    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert stubborn.stdout.readline() == b"ready\n"
        stop_groups([stubborn.pid], 0.5, [stubborn])
        stubborn.wait(timeout=10)
        assert stubborn.returncode == -signal.SIGKILL
        assert "1 process group(s) still running after 0.5 s; killing" in capsys.readouterr().out
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
