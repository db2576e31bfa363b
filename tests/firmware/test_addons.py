"""Add-on modules on the device (docs/protocol.md 13): the board finds them
at boot and while it runs; a feature whose hardware is missing is installed
and waits, starts when its add-on is plugged in, and stops cleanly when it
is pulled out; the hello says what is plugged in and what waits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from firmware.pb.runtime import Device
from gateway.paths import firmware_dir

from .test_runtime import make_device, restarted

SETPOINT, HYSTERESIS = 21.0, 0.3


def with_weather(tmp_path: Path) -> Device:
    """A thermostat whose feature set holds weather (installed by an update)."""
    dev = make_device(tmp_path)
    shutil.copytree(firmware_dir() / "features" / "weather", Path(dev.features.root) / "weather")
    return dev


def events(dev: Device) -> list[dict[str, Any]]:
    """The events dev publishes from now on."""
    out: list[dict[str, Any]] = []
    publish = dev.client.publish

    def keep(topic: str, data: bytes, qos: int = 0, retain: bool = False) -> bool:
        if topic.endswith("/event"):
            out.append(json.loads(data))
        return bool(publish(topic, data, qos, retain))

    dev.client.publish = keep  # type: ignore[method-assign]
    return out


def readings(dev: Any, **values: float) -> None:
    """The sensor file as the board's sensors (and add-ons) read now (dev: a device or its HAL)."""
    root = dev.hal.root if isinstance(dev, Device) else dev.root
    (Path(root) / "hal" / "sensors.json").write_text(json.dumps(values))


def test_a_feature_whose_addon_is_missing_is_installed_and_waits(tmp_path: Path) -> None:
    dev = with_weather(tmp_path)
    readings(dev, temperature=20.0, humidity=40.0)
    dev.boot()
    status = dev.features.status()
    assert status["weather"] == {
        "version": "1.0.0",
        "enabled": True,
        "running": False,
        "waiting": ["outdoor_temperature"],
    }
    assert "error" not in status["weather"] and status["thermostat"]["running"]
    hello = json.loads(dev.hello())
    assert hello["addons"] == [] and "outdoor_temperature" not in hello["caps"]
    assert hello["features"]["weather"]["waiting"] == ["outdoor_temperature"]
    # enabling it again does not fail: it waits, as before
    reply = dev.execute("feature.enable", {"feature": "weather"})
    assert reply["ok"], reply
    assert dev.features.status()["weather"]["waiting"] == ["outdoor_temperature"]


def test_plugging_the_probe_in_starts_the_feature_and_pulling_it_out_stops_it(tmp_path: Path) -> None:
    dev = with_weather(tmp_path)
    readings(dev, temperature=20.0, humidity=40.0)
    dev.boot()
    said = events(dev)
    # plugged in: the next look finds it, weather starts and the hello says so
    readings(dev, temperature=20.0, humidity=40.0, outdoor_temperature=-5.0)
    dev.look_for_addons()
    assert dev.hal.plugged == ("outdoor_temperature",)
    assert dev.features.status()["weather"] == {"version": "1.0.0", "enabled": True, "running": True}
    assert [(e["kind"], e.get("feature")) for e in said] == [("addon", None), ("feature_started", "weather")]
    assert "outdoor temperature probe" in said[0]["message"]
    assert dev._hello_due is not None  # a new hello is due (sent once connected)
    hello = json.loads(dev.hello())
    assert hello["addons"] == ["outdoor_temperature"] and "outdoor_temperature" in hello["caps"]
    # it anticipates: 25 degrees colder outside, the heater goes on 0.45 C early (the lead at
    # most 1.5 hysteresis, within weather's max_lead 0.5): at 20.9 it heats already
    readings(dev, temperature=SETPOINT + HYSTERESIS + 0.2, humidity=40.0, outdoor_temperature=-5.0)
    dev.sample()
    assert dev.features.reports["weather"] == {"lead": 0.5} and dev.actuators["relay"] is False
    # (inside the band: without the lead the heater would stay off)
    readings(dev, temperature=SETPOINT - HYSTERESIS + 0.1, humidity=40.0, outdoor_temperature=-5.0)
    dev.sample()
    assert dev.actuators["relay"] is True
    assert dev.features.reports["thermostat"]["heating"] is True
    # pulled out: weather stops cleanly (no error), the thermostat's lead goes with it
    said.clear()
    readings(dev, temperature=SETPOINT + 0.2, humidity=40.0)
    dev.look_for_addons()
    dev.sample()
    status = dev.features.status()["weather"]
    assert status == {
        "version": "1.0.0",
        "enabled": True,
        "running": False,
        "waiting": ["outdoor_temperature"],
    }
    assert [(e["kind"], e.get("feature")) for e in said] == [("addon", None), ("feature_waiting", "weather")]
    assert "unplugged" in said[0]["message"] and not [e for e in said if e["kind"].endswith("_error")]
    assert "outdoor_temperature" not in dev.features.readings and "weather" not in dev.features.reports
    assert dev.features.running["thermostat"].lead == 0
    assert dev.features.status()["thermostat"]["running"]
    # and in again
    readings(dev, temperature=SETPOINT, humidity=40.0, outdoor_temperature=10.0)
    dev.look_for_addons()
    assert dev.features.status()["weather"]["running"]


def test_what_is_plugged_in_at_boot_runs_from_the_start(tmp_path: Path) -> None:
    dev = with_weather(tmp_path)
    readings(dev, temperature=20.0, humidity=40.0, outdoor_temperature=3.0)
    dev.boot()
    assert dev.hal.plugged == ("outdoor_temperature",)
    assert dev.features.status()["weather"]["running"]
    dev.sample()
    assert dev.features.readings["outdoor_temperature"] == 3.0
    # a reset keeps nothing of it in RAM: the board looks again
    readings(dev, temperature=20.0, humidity=40.0)
    again = restarted(dev, tmp_path)
    assert again.hal.plugged == () and not again.features.status()["weather"]["running"]


def test_a_disabled_feature_does_not_start_when_its_addon_comes(tmp_path: Path) -> None:
    dev = with_weather(tmp_path)
    readings(dev, temperature=20.0, humidity=40.0)
    dev.boot()
    assert dev.execute("feature.disable", {"feature": "weather"})["ok"]
    readings(dev, temperature=20.0, humidity=40.0, outdoor_temperature=3.0)
    dev.look_for_addons()
    assert dev.features.status()["weather"] == {"version": "1.0.0", "enabled": False, "running": False}


def test_an_unreadable_sensor_file_changes_nothing_plugged_in(tmp_path: Path) -> None:
    dev = with_weather(tmp_path)
    readings(dev, temperature=20.0, humidity=40.0, outdoor_temperature=3.0)
    dev.boot()
    (Path(dev.hal.root) / "hal" / "sensors.json").write_text("{not json")
    dev.look_for_addons()
    assert dev.hal.plugged == ("outdoor_temperature",) and dev.features.status()["weather"]["running"]


def test_a_part_the_board_has_no_place_for_is_not_found(tmp_path: Path) -> None:
    dev = with_weather(tmp_path)
    readings(dev, temperature=20.0, humidity=40.0, vent2=True, pressure=1013.0)
    dev.boot()
    assert dev.hal.plugged == () and "vent2" not in dev.hal.caps


def test_the_weather_leads_by_the_gap_to_outdoors() -> None:
    from firmware.features.weather import lead_for

    assert lead_for(20.0, 0.0, 0.02, 0.5) == 0.4
    assert lead_for(20.0, -20.0, 0.02, 0.5) == 0.5  # at most max_lead
    assert lead_for(20.0, 25.0, 0.02, 0.5) == 0  # warmer outside: no lead
    assert lead_for(None, 0.0, 0.02, 0.5) == 0 and lead_for(20.0, None, 0.02, 0.5) == 0


def test_on_a_board_the_addons_capabilities_come_from_the_board_file(tmp_path: Path) -> None:
    """The HAL keeps only where each add-on answers; once one is plugged in,
    its capability is read from the board file (a board's RAM is small)."""
    from firmware.pb.addons import plug
    from firmware.pb.hal.host import HostHal

    path = firmware_dir() / "boards" / "thermostat-v1.json"
    hal = HostHal(json.loads(path.read_text()), str(tmp_path), str(path))
    assert hal.addons == {"outdoor_temperature": (True, 22, 21, 68)}
    readings(hal, outdoor_temperature=-4.5)
    assert hal.scan() == ["outdoor_temperature"] and plug(hal, hal.scan())
    assert hal.plugged == ("outdoor_temperature",)
    assert hal.caps["outdoor_temperature"]["part"] == "outdoor temperature probe"
    assert hal.read("outdoor_temperature") == -4.5
    missing = HostHal(json.loads(path.read_text()), str(tmp_path), str(tmp_path / "gone.json"))
    # unreadable now: the next look tries again
    assert not plug(missing, ["outdoor_temperature"]) and missing.plugged == ()


class _Bus:
    """An I2C bus of the ESP32 (machine.I2C): what answers where, and what was written."""

    def __init__(self, answering: list[int]) -> None:
        self.answering = answering
        self.writes: list[tuple[int, int, bytes]] = []

    def scan(self) -> list[int]:
        return list(self.answering)

    def writeto_mem(self, addr: int, reg: int, data: bytes) -> None:
        self.writes.append((addr, reg, bytes(data)))


def test_on_the_esp32_an_addon_is_found_where_it_answers_on_its_bus(tmp_path: Path, monkeypatch: Any) -> None:
    """The ESP32 backend's bus scan against the board's table of parts (the
    board's I2C peripheral stands in: no ESP32 here); a second vent's servo
    driver, once found, drives its channel."""
    import sys
    import types

    from firmware.pb.addons import plug
    from firmware.pb.hal.esp32 import Esp32Hal

    bus = _Bus([0x40])
    machine = types.ModuleType("machine")
    machine.Pin = lambda n, *a: n  # type: ignore[attr-defined]
    machine.I2C = lambda i, scl, sda: bus  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "machine", machine)
    import time

    monkeypatch.setattr(time, "sleep_ms", lambda ms: None, raising=False)  # (MicroPython's)
    path = firmware_dir() / "boards" / "shirt-v1.json"
    hal = Esp32Hal(json.loads(path.read_text()), str(tmp_path), str(path))
    assert hal.scan() == ["vent2"] and plug(hal, hal.scan()) and "vent2" in hal.actuators()
    hal.write("vent2", 50)
    # PCA9685 at 0x40: the prescaler for 50 Hz, then channel 0's off count for 1.5 ms
    assert (0x40, 0xFE, bytes([121])) in bus.writes
    assert bus.writes[-1] == (0x40, 0x06, bytes([0, 0, 307 & 0xFF, 307 >> 8]))
    bus.answering = []
    assert hal.scan() == []  # pulled out: its driver starts afresh when it is back
    assert "vent2" not in hal._drivers
