"""Energy readers on fake sysfs trees: RAPL counters (with wraparound), hwmon and iio
power monitors, a discharging battery; no sensor -> no figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.agent.energy import Battery, EnergyMeter, PowerMonitor, Rapl, find_sensor


def write(root: Path, rel: str, value) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")
    return path


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_sensor_means_no_figure(tmp_path):
    write(tmp_path, "sys/class/power_supply/AC/type", "Mains")
    write(tmp_path, "sys/class/hwmon/hwmon0/temp1_input", 41000)  # a thermometer only
    assert find_sensor(tmp_path) is None
    meter = EnergyMeter(None)
    meter.begin()
    meter.tick()
    assert meter.end(100) is None


def test_rapl_packages_only_and_wraparound(tmp_path):
    zone = "sys/class/powercap/intel-rapl:0"
    energy = write(tmp_path, f"{zone}/energy_uj", 999_000_000)
    write(tmp_path, f"{zone}/max_energy_range_uj", 1_000_000_000)
    # A sub-zone (core) is inside its package: counting it too would double the energy.
    write(tmp_path, "sys/class/powercap/intel-rapl:0:0/energy_uj", 5)
    sensor = find_sensor(tmp_path)
    assert isinstance(sensor, Rapl) and len(sensor.zones) == 1
    clock = Clock()
    meter = EnergyMeter(sensor, clock=clock)
    meter.begin()
    energy.write_text("1000000\n")  # wrapped: 1 J to the top, then 1 J more
    clock.now += 2.0
    result = meter.end(inferences=400)
    assert result == {"energy_mj": 5.0, "avg_power_w": 1.0, "sensor": "rapl"}


def test_rapl_two_packages_add_up(tmp_path):
    a = write(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", 0)
    b = write(tmp_path, "sys/class/powercap/intel-rapl:1/energy_uj", 10)
    clock = Clock()
    meter = EnergyMeter(find_sensor(tmp_path), clock=clock)
    meter.begin()
    a.write_text("3000000")
    b.write_text("1000010")
    clock.now += 4.0
    assert meter.end(1000) == {"energy_mj": 4.0, "avg_power_w": 1.0, "sensor": "rapl"}


def test_hwmon_power_input_in_microwatts(tmp_path):
    write(tmp_path, "sys/class/hwmon/hwmon0/name", "coretemp")
    write(tmp_path, "sys/class/hwmon/hwmon0/temp1_input", 50000)
    write(tmp_path, "sys/class/hwmon/hwmon1/name", "ina219")
    power = write(tmp_path, "sys/class/hwmon/hwmon1/power1_input", 2_000_000)  # 2 W
    sensor = find_sensor(tmp_path)
    assert isinstance(sensor, PowerMonitor) and sensor.kind == "hwmon:ina219"
    clock = Clock()
    meter = EnergyMeter(sensor, clock=clock)
    meter.begin()
    clock.now += 1.0
    power.write_text("4000000")  # 4 W halfway
    meter.tick()
    clock.now += 1.0
    result = meter.end(inferences=100)
    # samples 2, 4, 4 W over 2 s -> 3.333 W, 6.667 J / 100 inferences
    assert result["avg_power_w"] == pytest.approx(3.333, abs=1e-3)
    assert result["energy_mj"] == pytest.approx(66.667, abs=1e-3)


def test_ina3221_channels_current_times_voltage(tmp_path):
    base = "sys/class/hwmon/hwmon2"
    write(tmp_path, f"{base}/name", "ina3221")
    for ch, (ma, mv) in enumerate([(500, 5000), (100, 3300), (0, 1800)], start=1):
        write(tmp_path, f"{base}/curr{ch}_input", ma)
        write(tmp_path, f"{base}/in{ch}_input", mv)
    write(tmp_path, f"{base}/in7_input", 1200)  # a voltage without a current: ignored
    sensor = find_sensor(tmp_path)
    assert sensor.kind == "hwmon:ina3221"
    assert sensor.power_w() == pytest.approx(2.5 + 0.33)


def test_iio_power_monitor(tmp_path):
    write(tmp_path, "sys/bus/iio/devices/iio:device0/name", "ina3221x")
    write(tmp_path, "sys/bus/iio/devices/iio:device0/in_power0_input", 1500)  # mW
    write(tmp_path, "sys/bus/iio/devices/iio:device0/in_power1_input", 500)
    sensor = find_sensor(tmp_path)
    assert sensor.kind == "iio:ina3221x" and sensor.power_w() == pytest.approx(2.0)
    write(tmp_path, "sys/bus/iio/devices/iio:device1/name", "pm")
    other = PowerMonitor.find(tmp_path / "nothing")
    assert other is None


def test_iio_current_and_voltage(tmp_path):
    base = "sys/bus/iio/devices/iio:device0"
    write(tmp_path, f"{base}/in_current0_input", 200)
    write(tmp_path, f"{base}/in_voltage0_input", 5000)
    assert find_sensor(tmp_path).power_w() == pytest.approx(1.0)


def test_battery_while_discharging_only(tmp_path):
    bat = "sys/class/power_supply/BAT0"
    write(tmp_path, f"{bat}/type", "Battery")
    status = write(tmp_path, f"{bat}/status", "Discharging")
    write(tmp_path, f"{bat}/current_now", 1_000_000)  # 1 A
    write(tmp_path, f"{bat}/voltage_now", 7_400_000)  # 7.4 V
    sensor = find_sensor(tmp_path)
    assert isinstance(sensor, Battery) and sensor.power_w() == pytest.approx(7.4)
    write(tmp_path, f"{bat}/power_now", 6_000_000)
    assert sensor.power_w() == pytest.approx(6.0)
    status.write_text("Charging")
    assert sensor.power_w() is None
    meter = EnergyMeter(sensor)
    meter.begin()
    assert meter.end(10) is None  # no reading while charging: no figure, never a guess


def test_rapl_wins_over_a_battery(tmp_path):
    write(tmp_path, "sys/class/power_supply/BAT0/type", "Battery")
    write(tmp_path, "sys/class/power_supply/BAT0/power_now", 1)
    write(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", 1)
    assert find_sensor(tmp_path).kind == "rapl"


def test_unreadable_counter_gives_no_figure(tmp_path):
    energy = write(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", 10)
    meter = EnergyMeter(find_sensor(tmp_path))
    meter.begin()
    energy.write_text("garbage")
    assert meter.end(10) is None
