"""Energy per inference from what the board exposes; nothing when it exposes nothing.

Sensors, first found wins (every reader takes the filesystem root, so tests
point it at a fake sysfs tree):

- Intel RAPL package counters, `/sys/class/powercap/intel-rapl:N/energy_uj`
  (top-level packages only, their sub-zones are inside them), wrapping at
  `max_energy_range_uj`: exact energy between two readings.
- Power monitors (INA219/INA226/INA3221 class, Jetson rails, Pi power HATs)
  through hwmon, `power*_input` in µW or `curr*_input` (mA) × `in*_input`
  (mV) per channel, or through iio, `in_power*_input` (mW) or
  `in_current*_input` × `in_voltage*_input`: power, sampled during the window.
- A discharging battery, `/sys/class/power_supply/*/power_now` (µW) or
  `current_now` (µA) × `voltage_now` (µV): power, sampled.

The figure is the whole package's or board's energy over the measured window
divided by the inferences run in it, so it includes what else the device did
meanwhile. No sensor: `find_sensor` returns None and no field is reported.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

SAMPLE_EVERY_S = 0.1


def _int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class Rapl:
    """Cumulative package energy counters (µJ), with wraparound."""

    kind = "rapl"
    counter = True

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.ranges = [_int(zone / "max_energy_range_uj") for zone in zones]

    @classmethod
    def find(cls, root: Path) -> Rapl | None:
        base = root / "sys/class/powercap"
        zones = [
            z
            for z in sorted(base.glob("intel-rapl:*"))
            if z.name.count(":") == 1 and _int(z / "energy_uj") is not None
        ]
        return cls(zones) if zones else None

    def read(self) -> list[int | None]:
        return [_int(zone / "energy_uj") for zone in self.zones]

    def joules(self, before: list[int | None], after: list[int | None]) -> float | None:
        total = 0
        for start, end, span in zip(before, after, self.ranges, strict=True):
            if start is None or end is None:
                return None
            delta = end - start
            if delta < 0:  # the counter wrapped once in the window
                if not span:
                    return None
                delta += span
            total += delta
        return total / 1e6


class PowerMonitor:
    """Sum of the channels of hwmon / iio power monitors, in W."""

    counter = False

    def __init__(self, kind: str, channels: list[tuple[Path, ...]], scale: float):
        self.kind = kind
        self.channels = channels  # (power,) or (current, voltage)
        self.scale = scale  # to W: µW 1e-6 (hwmon power), mA*mV 1e-6, mW 1e-3 (iio)

    @classmethod
    def find(cls, root: Path) -> PowerMonitor | None:
        for device in sorted((root / "sys/class/hwmon").glob("hwmon*")):
            power = sorted(device.glob("power*_input"))
            if power:
                return cls(
                    f"hwmon:{_text(device / 'name') or device.name}", [(p,) for p in power], 1e-6
                )
            pairs = _pairs(device, "curr", "in", "_input")
            if pairs:
                return cls(f"hwmon:{_text(device / 'name') or device.name}", pairs, 1e-6)
        for device in sorted((root / "sys/bus/iio/devices").glob("iio:device*")):
            power = sorted(device.glob("in_power*_input"))
            name = f"iio:{_text(device / 'name') or device.name}"
            if power:
                return cls(name, [(p,) for p in power], 1e-3)
            pairs = _pairs(device, "in_current", "in_voltage", "_input")
            if pairs:
                return cls(name, pairs, 1e-6)
        return None

    def power_w(self) -> float | None:
        total = 0.0
        for channel in self.channels:
            values = [_int(path) for path in channel]
            if any(v is None for v in values):
                return None
            product = values[0] if len(values) == 1 else values[0] * values[1]
            total += product * self.scale
        return total


def _pairs(device: Path, current: str, voltage: str, suffix: str) -> list[tuple[Path, Path]]:
    out = []
    for path in sorted(device.glob(f"{current}*{suffix}")):
        index = path.name[len(current) : -len(suffix)]
        if not index.isdigit():
            continue
        partner = device / f"{voltage}{index}{suffix}"
        if partner.exists():
            out.append((path, partner))
    return out


class Battery:
    """A battery's discharge power in W; None while it is not discharging."""

    counter = False

    def __init__(self, supply: Path):
        self.supply = supply
        self.kind = f"battery:{supply.name}"

    @classmethod
    def find(cls, root: Path) -> Battery | None:
        for supply in sorted((root / "sys/class/power_supply").glob("*")):
            if _text(supply / "type") != "Battery":
                continue
            if (supply / "power_now").exists() or (
                (supply / "current_now").exists() and (supply / "voltage_now").exists()
            ):
                return cls(supply)
        return None

    def power_w(self) -> float | None:
        if _text(self.supply / "status") not in {"Discharging", None}:
            return None  # on a charger the battery's flow says nothing about the load
        power = _int(self.supply / "power_now")
        if power is not None:
            return abs(power) / 1e6
        current, voltage = _int(self.supply / "current_now"), _int(self.supply / "voltage_now")
        if current is None or voltage is None:
            return None
        return abs(current) * voltage / 1e12


def find_sensor(root: str | Path = "/"):
    """The best power sensor the board exposes, or None."""
    root = Path(root)
    for reader in (Rapl, PowerMonitor, Battery):
        with contextlib.suppress(OSError):
            found = reader.find(root)
            if found is not None:
                return found
    return None


class EnergyMeter:
    """Energy over a window of inferences: begin(), tick() while running, end(n)."""

    def __init__(self, sensor, clock=time.monotonic):
        self.sensor = sensor
        self.clock = clock
        self._start: float | None = None
        self._counter = None
        self._samples: list[float] = []
        self._last_sample = 0.0

    def begin(self) -> None:
        if self.sensor is None:
            return
        self._start = self.clock()
        self._samples = []
        if self.sensor.counter:
            self._counter = self.sensor.read()
        else:
            self._sample(force=True)

    def tick(self) -> None:
        if self.sensor is not None and not self.sensor.counter and self._start is not None:
            self._sample()

    def _sample(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_sample < SAMPLE_EVERY_S:
            return
        self._last_sample = now
        value = self.sensor.power_w()
        if value is not None:
            self._samples.append(value)

    def end(self, inferences: int) -> dict | None:
        """{"energy_mj", "avg_power_w", "sensor"} for the window, or None without a
        sensor, a reading or an inference. `energy_mj` is per inference."""
        if self.sensor is None or self._start is None:
            return None
        elapsed = self.clock() - self._start
        self._start = None
        if self.sensor.counter:
            joules = self.sensor.joules(self._counter, self.sensor.read())
            watts = joules / elapsed if joules is not None and elapsed > 0 else None
        else:
            self._sample(force=True)
            watts = sum(self._samples) / len(self._samples) if self._samples else None
            joules = watts * elapsed if watts is not None else None
        if joules is None or watts is None or inferences <= 0 or elapsed <= 0:
            return None
        return {
            "energy_mj": round(1000.0 * joules / inferences, 4),
            "avg_power_w": round(watts, 3),
            "sensor": self.sensor.kind,
        }
