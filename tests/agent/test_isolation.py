"""The agent imports no Django and no project code outside devices/agent (docs/architecture.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json, pkgutil, sys
import devices.agent
names = ["devices.agent." + m.name for m in pkgutil.iter_modules(devices.agent.__path__)
         if m.name != "__main__"]
for name in names:
    importlib.import_module(name)
import os
forbidden = sorted(m for m in sys.modules
                   if m.split(".")[0] in {"django", "rest_framework", "fleet", "compression", "ota"}
                   or (m.startswith("devices.") and not m.startswith("devices.agent")))
print(json.dumps({"modules": names, "forbidden": forbidden,
                  "ort_telemetry": os.environ.get("ORT_DISABLE_TELEMETRY")}))
"""


def test_agent_modules_load_no_django_or_project_code():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {
        "devices.agent.cli",
        "devices.agent.updater",
        "devices.agent.simulate",
        "devices.agent.buffer",
        "devices.agent.runtime",
    } <= set(result["modules"])
    assert result["forbidden"] == []
    assert result["ort_telemetry"] == "1"
