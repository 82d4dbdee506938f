"""N1: the agent (and its health-check child) connects to its server and nowhere else,
even while an onnxruntime session is open for several seconds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from devices.agent.agent import Agent
from devices.agent.state import State
agent = Agent(State(sys.argv[1]))
agent.run(once=True)
agent.step(window_s=6.0)
agent.close()
"""


def test_n1_agent_connects_only_to_its_server(peer, state, good_model, tmp_path):
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    peer.add_artifact(good_model)
    peer.offer(peer.manifest([("fp32", good_model)]))
    trace = tmp_path / "trace"
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=connect,sendto,sendmsg",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            SCRIPT,
            str(state.root),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    if "ptrace" in proc.stderr and proc.returncode != 0:
        pytest.skip(f"strace not permitted here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert peer.statuses[-1]["state"] == "succeeded"  # the session really ran
    port = peer.url.rsplit(":", 1)[1]
    inet = re.findall(
        r"sin6?_port=htons\((\d+)\).*?(?:inet_addr\(\"([^\"]+)\"\)|"
        r"inet_pton\(AF_INET6, \"([^\"]+)\")",
        trace.read_text(),
    )
    assert inet, "the trace shows no connection at all: strace did not see the agent"
    others = {
        (p, a or b) for p, a, b in inet if (p, a or b) not in {(port, "127.0.0.1"), (port, "::1")}
    }
    assert others == set()
