"""`make run` on its embedded defaults in a throwaway var dir, for browser tests and
the screenshots: SQLite, filesystem broker, local storage, a free port.

`make -o venv run` runs exactly the `run` target (migrate, bootstrap, seed_demo,
the demo enrollment token, `fleet.devrun`) with this interpreter, without
reinstalling the venv. It runs in its own process group: `stop()` sends SIGINT to
that group, as Ctrl-C in a terminal does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fleet.devrun import alive

ROOT = Path(__file__).resolve().parents[2]
# Only what a shell has: no DATABASE_URL, REDIS_URL, broker, S3 or MQTT from the test run.
PASSED_ENV = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "EDGEFLEET_CHROMIUM")
CREDENTIALS = re.compile(r"username: (\S+)\s+password: (\S+)")


def load_scale() -> float:
    """Time limits grow with the machine's load (a loaded 2-core CI box is slow)."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def wait_for(predicate, timeout: float, what: str, demo: DemoRun | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if demo is not None and demo.proc is not None and demo.proc.poll() is not None:
            raise AssertionError(f"{what}: make run exited\n{demo.log_tail()}")
        time.sleep(0.5)
    tail = demo.log_tail() if demo is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoRun:
    """One `make run` after another on the same var dir (the second is a restart)."""

    def __init__(self, var: Path, *, devices: int = 5, soak_s: int | None = None):
        self.var, self.devices = var, devices
        var.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        self.env.update(EDGEFLEET_VAR_DIR=str(var), ORT_DISABLE_TELEMETRY="1")
        if soak_s is not None:
            self.env["DEMO_SOAK_S"] = str(soak_s)  # the demo rollout's soak per phase
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.username = self.password = None

    @property
    def log(self) -> Path:
        return self.var / f"make-run-{self.runs}.log"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> None:
        self.runs += 1
        cmd = ["make", "-s", "-o", "venv", "run", f"PY={sys.executable}",
               f"PORT={self.port}", f"SIM_DEVICES={self.devices}"]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float) -> None:
        """Until the web answers and devrun recorded all its children."""
        wait_for(self._ready, timeout, "make run to serve", self)
        if self.username is None:
            found = CREDENTIALS.search(self.log.read_text(errors="replace"))
            assert found, f"no admin credentials printed\n{self.log_tail()}"
            self.username, self.password = found.groups()

    def _ready(self) -> bool:
        if len(self.pgids()) < 3:  # web, worker, devices (+ the one-shot rollout)
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def pgids(self) -> list[int]:
        try:
            return json.loads((self.var / "run.pids").read_text())["pgids"]
        except (OSError, ValueError, KeyError):
            return []

    def stop(self, timeout: float) -> float:
        """Ctrl-C: SIGINT to make's process group; seconds until every child is gone."""
        assert self.proc is not None
        children = [p for p in self.pgids() if alive(p)]
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"make run still running after {timeout:.0f} s") from None
        wait_for(lambda: not any(alive(p) for p in children), 10, "devrun's children to end")
        self.proc = None
        return time.monotonic() - started

    def kill(self) -> None:
        """Teardown after a failure: nothing of ours may outlive the test."""
        for pgid in [*self.pgids(), *([self.proc.pid] if self.proc else [])]:
            if alive(pgid):
                os.killpg(pgid, signal.SIGKILL)

    def log_in(self, page) -> None:
        log_in(page, self.url, self.username, self.password)


def log_in(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("main form button[type=submit]")  # (the header has a logout button)
    page.wait_for_url(f"{base}/")
