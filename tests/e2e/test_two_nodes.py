"""Two web nodes behind the production proxy behave as one.

Two gunicorn processes (own ports, own var directories) serve the test
database and share this test's Redis namespace; nginx runs from
deploy/nginx.conf.template with both as upstream servers, started as
tests/e2e/test_reverse_proxy.py starts it. Simulated devices
(devices.agent.simulate) and a real agent go through nginx:

- a phased rollout with a gate moves one phase at a time, each device updated once;
- a credential revoked on node A is refused by node B at once;
- the per-device rate limit is one count across both nodes;
- node A killed (SIGKILL) mid-run: the devices carry on through node B, and every
  telemetry point the server acknowledged is stored, once (counted in points,
  whatever the batch size).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks import _harness as harness
from devices.agent.state import State
from tests.compression.jobs_support import wait_for
from tests.conftest import need_service, tiny_model_bytes
from tests.e2e.servers import ROOT, agent_env, simulate_command, web_env
from tests.e2e.test_agent_ota_e2e import agent_cli, deploy, stored_version
from tests.e2e.test_reverse_proxy import running_nginx

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
DEVICES = 6  # simulated, through nginx
LIMIT = 12  # per-device requests per hour in the rate-limit test
TELEMETRY = "/api/v1/device/telemetry"
WAIT_S = 300  # generous: the machine running the suite may be loaded


@dataclass
class Node:
    name: str
    port: int
    proc: subprocess.Popen
    access_log: Path

    def served(self, path: str) -> int:
        """Requests for `path` this node answered (its gunicorn access log)."""
        text = self.access_log.read_text() if self.access_log.exists() else ""
        return text.count(f" {path} ")


@pytest.fixture
def start_nodes(transactional_db, settings, redis_url, tmp_path):
    """`start_nodes(**env)` -> [node A, node B], stopped after the test."""
    from django.db import connection

    if connection.vendor != "postgresql":
        need_service("PostgreSQL", "web nodes in subprocesses share the test database")
    cache = settings.CACHES["default"]
    if "redis" not in cache["BACKEND"].lower():
        need_service("Redis", "the nodes and this test share the cache (set REDIS_URL)")
    shared = {
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": cache.get("KEY_PREFIX", ""),  # this test's namespace
        # the signing key in the test database is encrypted with the test's secret
        "SECRET_KEY": settings.SECRET_KEY,
        "SERVER_KEY_PASSPHRASE": settings.SERVER_KEY_PASSPHRASE,
        "OTA_POLL_INTERVAL_S": "5",
        "DEVICE_UPLOAD_INTERVAL_S": "2",  # devices upload their samples this often
        "THROTTLE_ENROLL": "100000/min",
    }
    storage = settings.STORAGES["default"]
    if storage["BACKEND"].endswith("FileSystemStorage"):
        shared["MEDIA_ROOT"] = storage["OPTIONS"]["location"]  # on S3: AWS_LOCATION is in env
    nodes: list[Node] = []

    def start(**extra: str) -> list[Node]:
        for name in ("a", "b"):
            var = tmp_path / f"node-{name}"
            var.mkdir()
            env = web_env(var, **shared, WEB_ACCESS_LOG=str(var / "access.log"), **extra)
            port = harness.free_port()
            proc = harness.start_gunicorn(env, port, 2, timeout_s=120)
            nodes.append(Node(name, port, proc, var / "access.log"))
        return nodes

    yield start
    for node in nodes:
        harness.stop(node.proc)


def request(port: int, method: str, path: str, authorization: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, headers={"Authorization": authorization})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def check_in(node: Node, token: str) -> int:
    return request(node.port, "GET", "/api/v1/device/update", f"Bearer {token}")


def test_revocation_and_rate_limit_are_shared_by_the_nodes(start_nodes, admin_user):
    from rest_framework.authtoken.models import Token

    from devices import services

    a, b = start_nodes(THROTTLE_DEVICE=f"{LIMIT}/hour")
    _row, enrollment = services.create_enrollment_token(name="two-nodes", actor=admin_user)
    _device, revoked = services.enroll(enrollment, {"uid": "revoked-on-a"})
    assert (check_in(a, revoked), check_in(b, revoked)) == (204, 204)  # known to both

    operator = Token.objects.create(user=admin_user).key
    revoke = "/api/v1/devices/revoked-on-a/revoke/"
    assert request(a.port, "POST", revoke, f"Token {operator}") == 200
    assert check_in(b, revoked) == 401  # at once: no cache on node B still trusts it
    assert check_in(a, revoked) == 401

    for attempt in range(2):  # a second try only if the hour turned during the first
        window = int(time.time() // 3600)
        _device, token = services.enroll(enrollment, {"uid": f"counted-{attempt}"})
        statuses = [check_in(node, token) for _ in range(LIMIT) for node in (a, b)]
        if int(time.time() // 3600) == window:
            break
    # one count for the device across the nodes: LIMIT answered in all, not per node
    assert statuses.count(204) == LIMIT, statuses
    assert statuses.count(429) == LIMIT, statuses


@contextlib.contextmanager
def simulated_fleet(server: str, enrollment: str, tmp_path: Path):
    """devices.agent.simulate in a subprocess until the block ends (SIGTERM); the
    summary it prints (points acknowledged as `telemetry_sent`) lands in the dict."""
    out, err = tmp_path / "simulate.out", tmp_path / "simulate.err"
    args = ["--devices", str(DEVICES), "--uid-prefix", "two", "--hardware-profile", "rpi4"]
    args += ["--preinstalled", "digits:1"]
    args += ["--poll-interval-s", "5", "--telemetry-interval-s", "0.5", "--ramp-s", "1"]
    # a request the server stored but answered after the device gave up is resent
    # (harmless) but, if the run ends first, stored and not counted as sent
    args += ["--timeout-s", "60"]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            simulate_command(server, enrollment, tmp_path, *args),
            cwd=ROOT,
            env=agent_env(),
            stdout=stdout,
            stderr=stderr,
        )
    summary: dict = {}
    try:
        yield summary
    finally:
        proc.send_signal(signal.SIGTERM)  # ends the run like Ctrl-C: summary printed
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    text = out.read_text()
    assert proc.returncode == 0, err.read_text()[-3000:]
    summary.update(json.loads(text[text.index("{") :]))


def stored_seqs() -> dict[str, list[int]]:
    from devices.models import TelemetryPoint

    seqs: dict[str, list[int]] = {}
    for uid, seq in TelemetryPoint.objects.filter(device__uid__startswith="two-").values_list(
        "device__uid", "seq"
    ):
        seqs.setdefault(uid, []).append(seq)
    return {uid: sorted(values) for uid, values in seqs.items()}


def reporting_since(moment: float) -> int:
    """How many simulated devices stored a point stamped after `moment`."""
    from devices.models import TelemetryPoint

    return (
        TelemetryPoint.objects.filter(device__uid__startswith="two-", ts__gt=_aware(moment))
        .values("device")
        .distinct()
        .count()
    )


def _aware(epoch: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


def test_gated_rollout_and_a_killed_node_behind_nginx(start_nodes, admin_user, tmp_path):
    from django.apps import apps

    from devices import services as device_services
    from devices.models import Device, LogLine
    from ota import services
    from ota.choices import UpdateState
    from ota.models import Deployment

    # a transactional test's flush removed the migration's seed
    importlib.import_module("devices.migrations.0002_seed_hardware_profiles").seed(apps, None)
    a, b = start_nodes()
    upstreams = f"server 127.0.0.1:{a.port}; server 127.0.0.1:{b.port};"
    _row, enrollment = device_services.create_enrollment_token(name="two-nodes")
    with running_nginx(upstreams) as proxy_port:
        proxy = f"http://127.0.0.1:{proxy_port}"
        with simulated_fleet(proxy, enrollment, tmp_path) as summary:
            uids = [f"two-{i:05d}" for i in range(DEVICES)]
            wait_for(
                lambda: Device.objects.filter(uid__in=uids).count() == DEVICES, WAIT_S, "enrolled"
            )
            version = stored_version("digits", tiny_model_bytes(19), p95=1000.0)
            deployment = deploy(
                version,
                uids,
                admin_user,
                phases=[50, 100],
                gates={"max_latency_ratio": None, "min_successful": DEVICES // 2},
            )

            def states() -> list[str]:
                return sorted(deployment.updates.values_list("state", flat=True))

            # Phase 1 installs on half the devices; the rest wait for the gate.
            half = [UpdateState.QUEUED] * (DEVICES // 2) + [UpdateState.SUCCEEDED] * (DEVICES // 2)
            wait_for(lambda: states() == sorted(half), WAIT_S, "phase 1 installed")
            assert services.evaluate_deployments()[deployment.pk] == "advanced"
            deployment.refresh_from_db()
            assert deployment.current_phase == 1
            wait_for(
                lambda: states() == [UpdateState.SUCCEEDED] * DEVICES, WAIT_S, "phase 2 installed"
            )
            assert services.evaluate_deployments()[deployment.pk] == "completed"
            assert Deployment.objects.get(pk=deployment.pk).status == "completed"
            assert deployment.updates.values("device").distinct().count() == DEVICES

            # Node A dies mid-run: the devices carry on through node B.
            since = time.time()
            wait_for(lambda: reporting_since(since) == DEVICES, WAIT_S, "telemetry")
            assert a.served(TELEMETRY) and b.served(TELEMETRY)  # nginx spreads the load
            os.killpg(a.proc.pid, signal.SIGKILL)
            a.proc.wait(30)
            killed_at = time.time()
            wait_for(lambda: reporting_since(killed_at + 5) == DEVICES, WAIT_S, "carried on")

            # A real agent enrolls and reports through the proxy with node A down.
            root = tmp_path / "agent"
            enroll = ["enroll", "--server", proxy, "--token", enrollment, "--state-dir", str(root)]
            agent_cli(*enroll, timeout=WAIT_S)
            agent_cli("run", "--once", "--state-dir", str(root), timeout=WAIT_S)
            uid = State(root).uid
            assert LogLine.objects.filter(device__uid=uid, message__contains="starting").exists()
    # Every point acknowledged was stored once; per device the stored points are
    # 1..n in order (the unsent tail stays on the device).
    seqs = stored_seqs()
    assert sum(len(values) for values in seqs.values()) == summary["telemetry_sent"], summary
    assert all(values == list(range(1, len(values) + 1)) for values in seqs.values()), seqs
    assert len(seqs) == DEVICES
