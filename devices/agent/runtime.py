"""Run the active model continuously and measure it; read local signals.

Latency p50/p95, throughput, process memory (RSS) and CPU % come from the
inference loop; temperature and battery/power from `/sys/class/thermal` and
`/sys/class/power_supply` when the OS exposes them (else None, never a guess).
The release's switching policy (`manifest.choose_variant`) picks the variant
to run from those signals; the choice is reported with every telemetry point.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from . import manifest as mf
from .drift import DriftMonitor
from .energy import EnergyMeter, find_sensor
from .state import State

THERMAL = Path("/sys/class/thermal")
POWER = Path("/sys/class/power_supply")


# --- local signals ----------------------------------------------------------------------
def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_temperature(root: Path = THERMAL) -> float | None:
    """Hottest thermal zone in °C, or None when there is none."""
    values = []
    for zone in sorted(root.glob("thermal_zone*")):
        raw = _read(zone / "temp")
        with contextlib.suppress(TypeError, ValueError):
            values.append(int(raw) / 1000.0)
    return max(values) if values else None


def read_power(root: Path = POWER) -> dict:
    """{"battery_pct", "on_ac", "power_w"}: each None when the OS does not say."""
    battery = on_ac = power = None
    for supply in sorted(root.glob("*")):
        kind = _read(supply / "type")
        if kind == "Battery":
            with contextlib.suppress(TypeError, ValueError):
                battery = float(_read(supply / "capacity"))
            with contextlib.suppress(TypeError, ValueError):
                power = int(_read(supply / "power_now")) / 1e6
            if power is None:
                with contextlib.suppress(TypeError, ValueError):
                    power = (
                        int(_read(supply / "current_now")) * int(_read(supply / "voltage_now"))
                    ) / 1e12
        elif kind in {"Mains", "USB", "USB_C", "USB_PD"}:
            online = _read(supply / "online")
            if online is not None:
                on_ac = bool(on_ac) or online == "1"
    return {"battery_pct": battery, "on_ac": on_ac, "power_w": power}


class ProcessMeter:
    """RSS (MB) and CPU % of this process since the previous sample."""

    def __init__(self):
        self._last = (time.monotonic(), _cpu_seconds())

    def sample(self) -> dict:
        now, cpu = time.monotonic(), _cpu_seconds()
        wall = now - self._last[0]
        pct = 100.0 * (cpu - self._last[1]) / wall if wall > 0 else 0.0
        self._last = (now, cpu)
        return {"mem_mb": rss_mb(), "cpu_pct": round(pct, 1)}


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def rss_mb() -> float | None:
    status = _read(Path("/proc/self/status")) or ""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    except ImportError:
        return None


def mem_free_mb() -> float | None:
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    return None


def signals(cpu_pct: float | None = None) -> dict:
    """What a switching policy may look at (docs/manifest.md)."""
    power = read_power()
    return {
        "battery_pct": power["battery_pct"],
        "on_ac": power["on_ac"],
        "temp_c": read_temperature(),
        "cpu_pct": cpu_pct,
        "mem_free_mb": mem_free_mb(),
        "power_w": power["power_w"],
    }


def hardware_facts(hardware_profile: str | None = None) -> dict:
    """Inventory as the server's `PUT /api/v1/device/inventory` takes it."""
    facts = {
        "arch": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "agent_version": __version__,
    }
    total = next(
        (
            int(line.split()[1]) // 1024
            for line in (_read(Path("/proc/meminfo")) or "").splitlines()
            if line.startswith("MemTotal:")
        ),
        None,
    )
    if total:
        facts["ram_mb"] = total
    facts.update(onnxruntime_facts())
    with contextlib.suppress(OSError):
        facts["disk_free_mb"] = shutil.disk_usage("/").free // (1024 * 1024)
    if hardware_profile:
        facts["hardware_profile"] = hardware_profile
    return facts


_ORT_PROBE = (
    "import json, onnxruntime as o; print(json.dumps([o.__version__, o.get_available_providers()]))"
)


@functools.cache
def _probe_onnxruntime() -> tuple[str, tuple[str, ...]] | None:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _ORT_PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "ORT_DISABLE_TELEMETRY": "1"},
        )
        version, providers = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return version, tuple(providers)


def onnxruntime_facts() -> dict:
    """onnxruntime's version and execution providers. An agent with no model loaded
    does not load onnxruntime (some 30 MB resident) just to say this: a child
    process asks once, unless this process has it already."""
    ort = sys.modules.get("onnxruntime")
    if ort is not None:
        return {
            "onnxruntime": ort.__version__,
            "execution_providers": list(ort.get_available_providers()),
        }
    probed = _probe_onnxruntime()
    if probed is None:
        return {}
    return {"onnxruntime": probed[0], "execution_providers": list(probed[1])}


def _cpu_model() -> str:
    text = _read(Path("/proc/cpuinfo")) or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or sys.platform


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


# --- inference --------------------------------------------------------------------------
class Inputs:
    """Samples from a folder of .npy/.npz files (cycled), else generated."""

    def __init__(self, folder: str | Path | None = None):
        self.files = (
            sorted(p for p in Path(folder).iterdir() if p.suffix in {".npy", ".npz"})
            if folder
            else []
        )
        self._next = 0

    def feeds(self, session) -> dict:
        from .health import sample_inputs

        if not self.files:
            return sample_inputs(session)
        import numpy as np

        path = self.files[self._next % len(self.files)]
        self._next += 1
        names = [i.name for i in session.get_inputs()]
        if path.suffix == ".npz":
            with np.load(path) as data:
                return {
                    n: data[n] if n in data else data[data.files[k]] for k, n in enumerate(names)
                }
        return {names[0]: np.load(path)}


@dataclass
class Active:
    slot: str
    variant: str
    model_version: str
    sha256: str
    manifest_version: int
    session: object = None
    latencies: list[float] = field(default_factory=list)
    inferences: int = 0
    errors: int = 0
    busy_s: float = 0.0
    drift: DriftMonitor | None = None  # against the manifest's calibration statistics


def _input_stats(pointer: dict, variant: str) -> dict:
    for artifact in (pointer.get("manifest") or {}).get("artifacts") or []:
        if artifact.get("name") == variant and isinstance(artifact.get("input_stats"), dict):
            return artifact["input_stats"]
    return {}


class Runtime:
    """One session per slot on its active variant; switches on policy."""

    def __init__(
        self,
        state: State,
        *,
        inputs: Inputs | None = None,
        threads: int | None = None,
        power_root: str | Path = "/",
    ):
        self.state = state
        self.inputs = inputs or Inputs()
        self.threads = threads
        self.active: dict[str, Active] = {}
        self.meter = ProcessMeter()
        # Energy over each telemetry window, when the board has a power sensor.
        self.energy = EnergyMeter(find_sensor(power_root))
        self.energy.begin()
        self.last_cpu: float | None = None
        self.switches: list[tuple[str, str, str]] = []  # (slot, from, to)

    def refresh(self) -> None:
        """Follow the pointers and the switching policy; reload what changed."""
        local = signals(self.last_cpu)
        for slot in self.state.slot_names():
            pointer = self.state.pointer(slot)
            if not pointer:
                self.active.pop(slot, None)
                continue
            variant = mf.choose_variant(pointer["manifest"], local)
            if variant not in pointer["variants"]:
                variant = pointer["active"]
            info = pointer["variants"][variant]
            current = self.active.get(slot)
            if current and current.sha256 == info["sha256"]:
                continue
            from .health import open_session

            session = open_session(str(self.state.model_dir(slot) / info["path"]), self.threads)
            if current:
                self.switches.append((slot, current.variant, variant))
            self.active[slot] = Active(
                slot,
                variant,
                str(info.get("model_version") or ""),
                info["sha256"],
                pointer["version"],
                session,
                drift=DriftMonitor(_input_stats(pointer, variant)),
            )

    def run_for(self, seconds: float, *, max_inferences: int | None = None) -> None:
        deadline = time.monotonic() + seconds
        done = 0
        while self.active and time.monotonic() < deadline:
            for item in list(self.active.values()):
                feeds = self.inputs.feeds(item.session)
                if item.drift:
                    item.drift.observe(feeds)
                started = time.perf_counter()
                try:
                    item.session.run(None, feeds)
                except Exception:  # a failing inference is counted, not fatal
                    item.errors += 1
                    continue
                elapsed = time.perf_counter() - started
                item.latencies.append(elapsed * 1000.0)
                item.inferences += 1
                item.busy_s += elapsed
                done += 1
                self.energy.tick()
            if max_inferences is not None and done >= max_inferences:
                break
        if not self.active:
            time.sleep(max(0.0, deadline - time.monotonic()))

    def points(self) -> list[dict]:
        """One telemetry point per slot for the window since the previous call."""
        process = self.meter.sample()
        self.last_cpu = process["cpu_pct"]
        local = signals(self.last_cpu)
        energy = self.energy.end(sum(item.inferences for item in self.active.values()))
        self.energy.begin()
        out = []
        for item in self.active.values():
            p50, p95 = percentile(item.latencies, 50), percentile(item.latencies, 95)
            out.append(
                {
                    "ts": time.time(),
                    "model_version": item.model_version,
                    "latency_ms": round(p50, 3) if p50 is not None else None,
                    "throughput": round(item.inferences / item.busy_s, 2) if item.busy_s else None,
                    "mem_mb": process["mem_mb"],
                    "cpu_pct": process["cpu_pct"],
                    "temp_c": local["temp_c"],
                    "battery_pct": local["battery_pct"],
                    "power_w": local["power_w"],
                    "inferences": item.inferences,
                    "errors": item.errors,
                    "extra": {
                        "slot": item.slot,
                        "variant": item.variant,
                        "sha256": item.sha256,
                        "manifest_version": item.manifest_version,
                        "latency_p95_ms": round(p95, 3) if p95 is not None else None,
                        "on_ac": local["on_ac"],
                    },
                }
            )
            drift = item.drift.report() if item.drift else None
            if drift:
                out[-1]["extra"].update(drift)
            if energy:  # no sensor: no field (the UI says "no power sensor")
                out[-1]["power_w"] = energy["avg_power_w"]
                out[-1]["extra"].update(
                    energy_mj=energy["energy_mj"], power_sensor=energy["sensor"]
                )
            item.latencies, item.inferences, item.errors, item.busy_s = [], 0, 0, 0.0
        return out
