"""The owner's data choices on the device (firmware/pb/streams.py): what is
not shared never leaves it, whatever the owner chose and in what order,
and the choices outlive a reset; a stream an update brings starts local."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.pb.runtime import Device
from firmware.pb.streams import NEEDED

from .test_runtime import make_device, restarted, sense

THERMOSTAT_STREAMS = {
    "sensors.temperature",
    "sensors.humidity",
    "actuators.relay",
    "features.thermostat.setpoint",
    "features.thermostat.heating",
    "features.thermostat.mode",
    "features.thermostat.offset",
}
# the streams of the add-ons it may be given: known, plugged in or not
ADDON_STREAMS = {"sensors.outdoor_temperature"}


def sent(dev: Device) -> list[tuple[str, dict[str, Any]]]:
    """What dev publishes from now on: (topic, message)."""
    out: list[tuple[str, dict[str, Any]]] = []

    def publish(topic: str, data: bytes, qos: int = 0, retain: bool = False) -> bool:
        out.append((topic, json.loads(data)))
        return True

    dev.client.publish = publish  # type: ignore[method-assign]
    return out


def withheld(dev: Device) -> dict[str, str]:
    """What the device keeps back now."""
    return dict(dev.hide[0]) if dev.hide is not None else {}


def provisioned(tmp_path: Path, choices: dict[str, str] | None = None) -> Device:
    """A thermostat whose flash holds a streams record (as provisioning writes one)."""
    dev = make_device(tmp_path)
    every = {p: "share" for p in THERMOSTAT_STREAMS | ADDON_STREAMS} | (choices or {})
    dev.store.save("streams", {"choices": every})
    return dev


def paths(msg: dict[str, Any]) -> set[str]:
    """The streams a telemetry message carries."""
    out = {f"sensors.{k}" for k in msg["sensors"]} | {f"actuators.{k}" for k in msg["actuators"]}
    for name, report in msg["features"].items():
        out |= {f"features.{name}.{k}" for k in report}
    return out


def test_without_a_record_every_stream_is_shared(tmp_path: Path) -> None:
    dev = make_device(tmp_path)
    dev.boot()
    out = sent(dev)
    sense(dev, temperature=19.0, humidity=40.0)
    dev.publish_telemetry()
    assert paths(out[-1][1]) == THERMOSTAT_STREAMS
    reply = dev.execute("streams.get", {})
    assert reply["ok"] and set(reply["result"]["streams"]) == THERMOSTAT_STREAMS | ADDON_STREAMS
    assert set(reply["result"]["streams"].values()) == {"share"} and "hello" in reply["result"]["needed"]


def test_a_local_stream_feeds_the_features_and_never_leaves(tmp_path: Path) -> None:
    dev = provisioned(tmp_path, {"sensors.temperature": "local", "features.thermostat.heating": "local"})
    dev.boot()
    out = sent(dev)
    sense(dev, temperature=15.0, humidity=40.0)
    assert dev.actuators["relay"] is True  # the thermostat read the room and heats
    dev.publish_telemetry()
    msg = out[-1][1]
    assert "temperature" not in msg["sensors"] and msg["sensors"]["humidity"] == 40.0
    assert "heating" not in msg["features"]["thermostat"] and msg["actuators"] == {"relay": True}
    status = dev.execute("status", {})["result"]
    assert "temperature" not in status["sensors"] and status["sensors"]["humidity"] == 40.0
    assert dev.features.readings["temperature"] == 15.0  # kept on the device


def test_an_off_sensor_is_not_read_at_all(tmp_path: Path) -> None:
    dev = provisioned(tmp_path, {"sensors.humidity": "off"})
    dev.boot()
    sense(dev, temperature=19.0, humidity=40.0)
    assert "humidity" not in dev.features.readings
    # turned off while it ran: the last reading goes too
    dev = provisioned(tmp_path / "b")
    dev.boot()
    sense(dev, temperature=19.0, humidity=40.0)
    assert dev.execute("streams.set", {"streams": {"sensors.humidity": "off"}})["ok"]
    assert "humidity" not in dev.features.readings
    sense(dev, temperature=19.0, humidity=41.0)
    assert "humidity" not in dev.features.readings and dev.features.readings["temperature"] == 19.0


def test_an_off_field_is_not_kept(tmp_path: Path) -> None:
    dev = provisioned(tmp_path, {"features.thermostat.setpoint": "off"})
    dev.boot()
    sense(dev, temperature=19.0, humidity=40.0)
    assert "setpoint" not in dev.features.reports["thermostat"]
    assert dev.features.reports["thermostat"]["heating"] is True


def test_choices_outlive_a_reset_and_reach_the_hello(tmp_path: Path) -> None:
    dev = provisioned(tmp_path)
    dev.boot()
    reply = dev.execute("streams.set", {"streams": {"sensors.humidity": "local", "actuators.relay": "local"}})
    assert reply["ok"], reply
    assert reply["result"]["streams"]["sensors.humidity"] == "local"
    assert dev._hello_due is not None  # a new hello is due (sent once connected)
    assert json.loads(dev.hello())["streams"] == {"sensors.humidity": "local", "actuators.relay": "local"}
    again = restarted(dev, tmp_path)
    assert withheld(again) == {"sensors.humidity": "local", "actuators.relay": "local"}
    out = sent(again)
    sense(again, temperature=15.0, humidity=40.0)
    again.publish_telemetry()
    assert paths(out[-1][1]) == THERMOSTAT_STREAMS - {"sensors.humidity", "actuators.relay"}


def test_a_stream_an_update_brings_starts_local(tmp_path: Path) -> None:
    dev = provisioned(tmp_path)
    dev.boot()
    # the update: eco comes, with what it publishes
    from gateway.paths import firmware_dir

    shutil.copytree(firmware_dir() / "features" / "eco", Path(dev.features.root) / "eco")
    again = restarted(dev, tmp_path)
    eco = json.loads((firmware_dir() / "features" / "eco" / "manifest.json").read_text())
    new = {f"features.eco.{f}" for f in eco["permissions"]["publishes"]}
    assert new and withheld(again) == {p: "local" for p in new}
    shared = {p: "share" for p in THERMOSTAT_STREAMS | ADDON_STREAMS}
    assert again.store.load("streams", None)["choices"] == shared | {p: "local" for p in new}


def test_an_unreadable_record_keeps_every_stream_local(tmp_path: Path) -> None:
    dev = make_device(tmp_path)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "streams.json").write_bytes(b"\x00not json")
    dev.boot()
    assert withheld(dev) == {p: "local" for p in THERMOSTAT_STREAMS | ADDON_STREAMS}


def test_bad_choices_are_refused_and_change_nothing(tmp_path: Path) -> None:
    dev = provisioned(tmp_path, {"sensors.humidity": "local"})
    dev.boot()
    before = withheld(dev)
    for args, says in (
        ({"streams": {"sensors.pressure": "local"}}, "no stream 'sensors.pressure'"),
        ({"streams": {"sensors.temperature": "hidden"}}, "not one of share, local, off"),
        ({"streams": {"hello": "local"}}, "needed to operate"),
        ({"streams": {"actuators.relay": "off"}}, "cannot be off"),
        ({"streams": {"sensors.temperature": "local", "sensors.x": "local"}}, "no stream 'sensors.x'"),
        ({"streams": {}}, "non-empty object"),
        ({"streams": ["sensors.humidity"]}, "non-empty object"),
        ({}, "non-empty object"),
    ):
        reply = dev.execute("streams.set", args)
        assert not reply["ok"] and reply["error"]["code"] == "bad_config", args
        assert says in reply["error"]["message"], (args, reply)
        assert withheld(dev) == before
    assert dev.store.load("streams", None)["choices"]["sensors.temperature"] == "share"


CHOICE = st.sampled_from(["share", "local", "off"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rounds=st.lists(
        st.dictionaries(st.sampled_from(sorted(THERMOSTAT_STREAMS)), CHOICE, min_size=1),
        min_size=1,
        max_size=4,
    ),
    temperature=st.floats(5.0, 30.0),
)
def test_nothing_withheld_ever_leaves(
    tmp_path_factory: Any, rounds: list[dict[str, str]], temperature: float
) -> None:
    tmp = tmp_path_factory.mktemp("dev")
    dev = provisioned(tmp)
    dev.boot()
    out = sent(dev)
    chosen = {p: "share" for p in THERMOSTAT_STREAMS}
    for asked in rounds:
        reply = dev.execute("streams.set", {"streams": asked})
        if "actuators.relay" in asked and asked["actuators.relay"] == "off":
            assert not reply["ok"]
            continue
        assert reply["ok"], reply
        chosen |= asked
        sense(dev, temperature=temperature, humidity=40.0)
        dev.publish_telemetry()
        status = dev.execute("status", {})["result"]
        withheld = {p for p, c in chosen.items() if c != "share"}
        assert not paths(out[-1][1]) & withheld
        assert not {f"sensors.{k}" for k in status["sensors"]} & withheld
        assert not {f"actuators.{k}" for k in status["actuators"]} & withheld
        for p, c in chosen.items():
            if c == "off" and p.startswith("sensors."):
                assert p[8:] not in dev.features.readings
    assert set(NEEDED) >= {"hello", "state"}
