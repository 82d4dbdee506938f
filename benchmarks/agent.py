"""The standalone agent on a device's budget: `python -m benchmarks.agent`.

Builds the `edgefleet-agent` wheel, installs it into a fresh venv with no index the
way devices/agent/README.md recommends (`--install` picks another way; the dependency
wheels are fetched first, pinned to this environment's versions),
and measures the installed agent against a small real HTTP server playing the
device API (`tests/agent/peer.py`, which signs manifests like the server):

- the venv's size on disk, onnxruntime and numpy included, after running too;
- the agent's resident memory (RSS, VmHWM) idle with no model, and running the
  demo model (digits-cnn) continuously after installing it over the air;
- CPU per check-in + telemetry upload cycle (process CPU time / cycles).

Targets: venv <= 150 MB, RSS <= 60 MB idle and <= 120 MB running, cycle <= 5 ms.
The same packages are also sized for a device's platform (`--device-platform`,
default aarch64, from the wheels' contents): wheel sizes differ by platform.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AGENT_SOURCE = ROOT / "devices" / "agent"
DEMO_MODEL = ROOT / "compression" / "fixtures" / "digits_cnn.onnx"
RUNTIME_DEPS = ("onnxruntime", "numpy", "cryptography")
SERVER_ONLY = {
    "django",
    "djangorestframework",
    "celery",
    "boto3",
    "botocore",
    "psycopg2",
    "psycopg2-binary",
    "redis",
    "kombu",
    "gunicorn",
    "onnx",
    "psutil",
}


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, check=False, **kwargs
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:4]} failed: {proc.stdout[-1500:]}{proc.stderr[-2500:]}")
    return proc


def build_wheel(workdir: Path) -> Path:
    """The agent's wheel, built from a copy of devices/agent (the checkout stays clean)."""
    source = workdir / "agent-src"
    shutil.copytree(AGENT_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__"))
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", workdir / "dist", source)
    (wheel,) = (workdir / "dist").glob("edgefleet_agent-*-py3-none-any.whl")
    return wheel


def wheelhouse(workdir: Path) -> Path:
    """The runtime dependencies as wheels, at the versions this environment runs."""
    house = workdir / "wheelhouse"
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME_DEPS]
    _run(sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", house, *pins)
    return house


def device_platform_mb(workdir: Path, wheel: Path, names: set[str], platform: str) -> float:
    """What the same packages (same versions) take installed on `platform` (e.g. a
    Raspberry Pi's manylinux aarch64): the wheels' uncompressed contents, which is what
    pip writes with --no-compile. Not installed: this machine cannot run them."""
    import zipfile

    house = workdir / f"wheels-{platform}"
    python = "{}.{}".format(*sys.version_info[:2])
    pins = [
        f"{name}=={importlib.metadata.version(name)}"
        for name in sorted(names - {"edgefleet-agent", "pip", "setuptools"})
    ]
    _run(
        sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
        "--implementation", "cp", "--python-version", python,
        "--platform", f"manylinux_2_28_{platform}", "--platform", f"manylinux2014_{platform}",
        "-d", house, *pins,
    )  # fmt: skip
    wheels = [wheel, *house.glob("*.whl")]
    return sum(i.file_size for w in wheels for i in zipfile.ZipFile(w).infolist()) / 1e6


# How the venv is made (devices/agent/README.md, "Install"):
# - recommended: a venv without pip/setuptools, filled by the host's pip (`pip --python`)
#   with --no-compile; the agent runs with PYTHONDONTWRITEBYTECODE=1, so no bytecode is
#   ever written (imports compile in memory: slower start, see the README);
# - minimal: the same, but only the packages the agent imports at run time (--no-deps:
#   onnxruntime's protobuf, flatbuffers and packaging serve its offline tools only);
# - default: `python -m venv` + the venv's own pip, which also byte-compiles everything.
INSTALLS = ("recommended", "minimal", "default")
MINIMAL = ("onnxruntime", "numpy", "cryptography", "cffi", "pycparser")
RUN_ENV = {"ORT_DISABLE_TELEMETRY": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def install_agent(workdir: Path, how: str = "recommended") -> Path:
    """A fresh venv with only the agent wheel and what it declares; returns the venv."""
    wheel = build_wheel(workdir)
    house = wheelhouse(workdir)
    venv = workdir / "agent-venv"
    sources = ["--no-index", "--find-links", wheel.parent, "--find-links", house]
    if how == "default":
        _run(sys.executable, "-m", "venv", venv)
        _run(venv / "bin" / "python", "-m", "pip", "install", "-q", *sources, wheel)
        return venv
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    only = ["--no-deps", *MINIMAL] if how == "minimal" else []
    _run(
        *_host_pip(venv),
        "install",
        "-q",
        "--no-compile",
        *sources,
        wheel,
        *only,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    return venv


def _host_pip(venv: Path) -> list:
    """This interpreter's pip acting on the venv (pip >= 22.3): no pip inside it."""
    return [sys.executable, "-m", "pip", "--python", venv / "bin" / "python"]


def installed(venv: Path) -> set[str]:
    listed = _run(*_host_pip(venv), "list", "--format=freeze").stdout
    return {line.split("==")[0].lower() for line in listed.split()}


def dir_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 1e6


def site_breakdown(venv: Path) -> dict[str, float]:
    """MB per top-level entry of the venv's site-packages (the largest first)."""
    (site,) = (venv / "lib").glob("python3*/site-packages")
    sizes = {p.name: dir_mb(p) if p.is_dir() else p.stat().st_size / 1e6 for p in site.iterdir()}
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            out[key] = int(value.split()[0])
    return out


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _enrolled_state(peer, root: Path):
    from devices.agent.state import State
    from tests.agent.peer import DEVICE_TOKEN, DEVICE_UID

    state = State(root).ensure()
    state.save_config({"server": peer.url, "uid": DEVICE_UID})
    state.save_credential(DEVICE_UID, DEVICE_TOKEN)
    state.pin_key(peer.public_b64)
    return state


def memory(venv: Path, workdir: Path, settle_s: float) -> dict[str, float]:
    """RSS of `edgefleet-agent run`: idle, then with the demo model running."""
    from tests.agent.peer import Peer

    with Peer() as peer:
        state = _enrolled_state(peer, workdir / "mem-state")
        settings = workdir / "agent.json"
        settings.write_text(
            json.dumps({"telemetry_interval_s": 2, "poll_interval_s": 1, "threads": 1})
        )
        env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(workdir), **RUN_ENV}
        proc = subprocess.Popen(
            [
                venv / "bin" / "edgefleet-agent",
                "run",
                "--state-dir",
                state.root,
                "--config",
                settings,
            ],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait(
                lambda: len(peer.telemetry) + len(peer.seen("GET", "/api/v1/device/update")) >= 2,
                120,
                "the idle agent never checked in",
            )
            time.sleep(settle_s)
            idle = _status_kb(proc.pid)
            model = DEMO_MODEL.read_bytes()
            peer.add_artifact(model)
            peer.offer(peer.manifest([("fp32", model)], version=1))
            _wait(
                lambda: any(s.get("state") == "succeeded" for s in peer.statuses),
                180,
                "the demo model was never installed",
            )
            _wait(
                lambda: any(p.get("inferences") for b in peer.telemetry for p in b["batch"]),
                120,
                "no inference reported",
            )
            time.sleep(settle_s)
            running = _status_kb(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "idle_rss_mb": idle["VmRSS"] / 1024,
        "idle_hwm_mb": idle["VmHWM"] / 1024,
        "model_rss_mb": running["VmRSS"] / 1024,
        "model_hwm_mb": running["VmHWM"] / 1024,
    }


CYCLE_PROBE = """
import json, os, sys, time
from edgefleet_agent.agent import Agent
from edgefleet_agent.state import State
state = State(sys.argv[1])
agent = Agent(state, {"poll_interval_s": 0})
cycles = int(sys.argv[2])
for _ in range(3):  # warm up: connections, imports, sqlite pages
    agent.check_in(); agent.outbox.add("telemetry", {"ts": time.time()}); agent.deliver()
start = os.times()
for i in range(cycles):
    agent.check_in()
    agent.outbox.add("telemetry", {"ts": time.time(), "model_version": "1", "latency_ms": 1.5,
                                   "inferences": 100, "extra": {"slot": "classifier"}})
    agent.deliver()
end = os.times()
cpu = (end.user - start.user) + (end.system - start.system)
print(json.dumps({"cycles": cycles, "cpu_ms": 1000 * cpu / cycles}))
"""


def cycle_cpu(venv: Path, workdir: Path, cycles: int) -> dict[str, float]:
    """CPU per check-in (signed 204 with a timestamp statement) + telemetry upload."""
    from tests.agent.peer import Peer

    with Peer() as peer:
        state = _enrolled_state(peer, workdir / f"cycle-state-{time.monotonic_ns()}")
        proc = _run(
            venv / "bin" / "python",
            "-c",
            CYCLE_PROBE,
            state.root,
            cycles,
            env={"PATH": "/usr/bin:/bin", **RUN_ENV},
            cwd=workdir,
        )
        sent = sum(len(b["batch"]) for b in peer.telemetry)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if sent < cycles:
        raise RuntimeError(f"only {sent} of {cycles} telemetry points arrived")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.agent")
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--install", choices=INSTALLS, default="recommended")
    parser.add_argument(
        "--device-platform",
        default="aarch64",
        help="also size the same packages for this manylinux platform ('' to skip)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        workdir = Path(tmp)
        venv = install_agent(workdir, args.install)
        names = installed(venv)
        leaked = sorted(names & SERVER_ONLY)
        installed_mb = dir_mb(venv)
        parts = site_breakdown(venv)
        pycache = sum(dir_mb(p) for p in venv.rglob("__pycache__"))
        tests = sum(dir_mb(p) for p in venv.rglob("tests") if p.is_dir())
        mem = memory(venv, workdir, args.settle_s)
        cycles = sorted(cycle_cpu(venv, workdir, args.cycles)["cpu_ms"] for _ in range(args.repeat))
        size = max(installed_mb, dir_mb(venv))  # after running: nothing may have grown it
        device_mb = None
        if args.device_platform:
            (wheel,) = (workdir / "dist").glob("edgefleet_agent-*.whl")
            device_mb = device_platform_mb(workdir, wheel, names, args.device_platform)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (2 cores shared)")
    print(
        f"install: {args.install}; venv {installed_mb:.1f} MB installed, "
        f"{size:.1f} MB after running"
    )
    print(f"of which __pycache__ {pycache:.1f} MB, packages' tests {tests:.1f} MB")
    print(f"installed: {', '.join(sorted(names - {'pip', 'setuptools'}))}")
    print(f"server packages in the agent venv: {leaked or 'none'}")
    print("site-packages, MB: " + ", ".join(f"{k} {v:.1f}" for k, v in list(parts.items())[:8]))
    print()
    print("| measure | value | target | met |")
    print("|---|---:|---:|---|")
    rows = [
        ("venv size, MB", size, 150),
        ("RSS idle, no model, MB", mem["idle_rss_mb"], 60),
        ("RSS running digits-cnn, MB", mem["model_rss_mb"], 120),
        ("peak RSS (VmHWM) running, MB", mem["model_hwm_mb"], 120),
        ("CPU per check-in + telemetry, ms (median)", cycles[len(cycles) // 2], 5),
    ]
    if device_mb is not None:
        rows.insert(1, (f"packages on {args.device_platform} (same versions), MB", device_mb, 150))
    for name, value, target in rows:
        print(f"| {name} | {value:.1f} | {target} | {'yes' if value <= target else 'NO'} |")
    print(
        f"\nCPU per cycle over {args.repeat} runs of {args.cycles}: "
        + ", ".join(f"{c:.2f}" for c in cycles)
        + " ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
