"""The device runtime under CPython, without a network: boot, sensing,
features, isolation of a failing feature, commands. The same code runs on
the MicroPython unix port in tests/system."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from firmware.pb.hal.host import HostHal
from firmware.pb.runtime import Device
from firmware.pb.store import Store
from gateway.broker import BrokerUrl
from gateway.paths import firmware_dir
from gateway.provision import board_for, make_config
from simulator.loader import import_feature


def make_device(tmp_path: Path, model: str = "thermostat", extra: dict[str, str] | None = None) -> Device:
    """A device whose features folder holds the model's features plus
    `extra` ({name: source of __init__.py}, each with a permissive manifest)."""
    board = board_for(model)
    features = tmp_path / "features"
    for name in board["features"]:
        shutil.copytree(firmware_dir() / "features" / name, features / name)
    for name, source in (extra or {}).items():
        (features / name).mkdir(parents=True)
        (features / name / "__init__.py").write_text(source)
        caps = list(board["capabilities"])
        manifest = {
            "name": name,
            "version": "0.0.1",
            "api": 1,
            "requires": caps,
            "permissions": {"reads": [c for c in caps if board["capabilities"][c]["kind"] == "sensor"]},
        }
        (features / name / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "boards").mkdir(exist_ok=True)
    config = make_config("dev-1", board, BrokerUrl("127.0.0.1", 1), "pw")
    hal = HostHal(board, str(tmp_path))
    return Device(
        config, hal, Store(str(tmp_path / "data")), str(features), importer=import_feature, log=quiet
    )


def quiet(dev: str, msg: str) -> None:
    pass


def restarted(dev: Device, tmp_path: Path) -> Device:
    """The same device after a reset: a new runtime over the same flash."""
    again = Device(
        dev.config,
        dev.hal,
        Store(str(tmp_path / "data")),
        dev.features.root,
        importer=import_feature,
        log=quiet,
    )
    again.boot()
    return again


def sense(dev: Device, **values: float) -> None:
    (Path(dev.hal.root) / "hal" / "sensors.json").write_text(json.dumps(values))
    dev.sample()


def relay(dev: Device) -> Any:
    return dev.actuators.get("relay")


def test_thermostat_hysteresis_band(tmp_path: Path) -> None:
    dev = make_device(tmp_path)
    dev.boot()
    sp, h = 21.0, 0.3
    steps = [
        (20.0, True),
        (20.9, True),
        (21.2, True),
        (21.31, False),
        (21.0, False),
        (20.71, False),
        (20.69, True),
    ]
    for temp, expected in steps:
        sense(dev, temperature=temp, humidity=40)
        assert relay(dev) is expected, f"at {temp} C (setpoint {sp}, hysteresis {h})"
    report = dev.features.reports["thermostat"]
    assert report == {"setpoint": 21.0, "heating": True, "mode": "heat", "offset": 0}


def test_thermostat_schedule_changes_the_setpoint(tmp_path: Path) -> None:
    from firmware.features.thermostat import parse_schedule, scheduled

    sched = parse_schedule([["22:00", 17], ["06:30", 21.5]])
    assert sched == [(390, 21.5), (1320, 17)]
    assert scheduled(sched, 0, 20) == 17  # before the first entry: yesterday's last
    assert scheduled(sched, 390, 20) == 21.5
    assert scheduled(sched, 1319, 20) == 21.5
    assert scheduled([], 600, 20) == 20
    for bad in (["25:00", 20], ["06:30"], ["06:30", True], ["0630", 20], ["ab:cd", 20], "06:30"):
        with pytest.raises(ValueError):
            parse_schedule([bad])


def test_config_set_is_validated_stored_and_applied(tmp_path: Path) -> None:
    dev = make_device(tmp_path)
    dev.boot()
    sense(dev, temperature=20.0, humidity=40)
    assert relay(dev) is True
    reply = dev.execute("config.set", {"feature": "thermostat", "values": {"setpoint": 18}})
    assert reply["ok"] and reply["result"]["thermostat"]["setpoint"] == 18
    assert relay(dev) is False  # applied at once, not at the next reading
    for values, message in [
        ({"setpoint": 99}, "at most 30"),
        ({"setpoint": "warm"}, "must be a number"),
        ({"setpoint": True}, "must be a number"),
        ({"mode": "cool"}, "one of heat, off"),
        ({"colour": "red"}, "no setting 'colour'"),
    ]:
        bad = dev.execute("config.set", {"feature": "thermostat", "values": values})
        assert bad["ok"] is False and bad["error"]["code"] == "bad_config"
        assert message in bad["error"]["message"]
    # a reboot keeps the stored value
    dev2 = restarted(dev, tmp_path)
    assert dev2.features.config("thermostat")["setpoint"] == 18


def test_vent_settings_invalid_together_are_refused(tmp_path: Path) -> None:
    dev = make_device(tmp_path, "shirt")
    dev.boot()
    bad = dev.execute("config.set", {"feature": "vent", "values": {"open_at": 50, "close_at": 60}})
    assert bad["ok"] is False and "close_at < open_at" in bad["error"]["message"]
    assert dev.features.config("vent")["open_at"] == 65  # nothing stored
    assert "vent" in dev.features.running


def test_vent_opens_with_humidity_and_closes_with_hysteresis(tmp_path: Path) -> None:
    dev = make_device(tmp_path, "shirt")
    dev.boot()
    openings = []
    for h in (50, 64, 66, 72, 80, 90, 60, 56, 54, 60):
        sense(dev, humidity=h, skin_temperature=33)
        openings.append(dev.actuators["vent"])
    # closed below open_at=65; opens at 66; full at 80; stays open down to close_at=55
    assert openings[:2] == [0, 0]
    assert 20 <= openings[2] < openings[3] < openings[4] == openings[5] == 100
    assert openings[6] > 0 and openings[7] > 0
    assert openings[8] == 0 and openings[9] == 0


def test_a_failing_feature_is_disabled_and_reported_and_the_device_keeps_running(tmp_path: Path) -> None:
    crashy = """
class Crashy:
    def __init__(self, ctx):
        self.n = 0
        ctx.on("sensor.temperature", self.on_temp)
    def on_temp(self, t):
        self.n += 1
        if self.n == 2:
            raise ZeroDivisionError("division by zero in crashy")

def start(ctx):
    return Crashy(ctx)
"""
    dev = make_device(tmp_path, extra={"crashy": crashy})
    events: list[tuple[str, Any, str]] = []
    dev.emit_event = lambda kind, feature, message: events.append((kind, feature, message))  # type: ignore[method-assign]
    dev.features.rt = dev
    dev.boot()
    assert set(dev.features.running) == {"crashy", "thermostat"}
    sense(dev, temperature=20.0, humidity=40)
    sense(dev, temperature=20.0, humidity=40)  # crashy raises here
    assert "crashy" not in dev.features.running
    status = dev.features.status()["crashy"]
    assert status["running"] is False and "ZeroDivisionError" in status["error"]
    assert ("feature_error", "crashy", "ZeroDivisionError: division by zero in crashy") in events
    # the thermostat still controls the heater
    sense(dev, temperature=22.0, humidity=40)
    assert relay(dev) is False
    # and the failure is remembered across a restart: it does not crash-loop
    dev2 = restarted(dev, tmp_path)
    assert "crashy" not in dev2.features.running and "thermostat" in dev2.features.running
    # until the owner enables it again
    assert dev2.execute("feature.enable", {"feature": "crashy"})["ok"]
    assert "crashy" in dev2.features.running


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("def start(ctx):\n    ctx.on('sensor.pressure', print)\n", "may not read 'pressure'"),
        ("def start(ctx):\n    ctx.drive('relay', True)\n", "may not drive 'relay'"),
        ("def start(ctx):\n    ctx.report({'secret': 1})\n", "may not publish 'secret'"),
        ("def start(ctx):\n    ctx.on('network', print)\n", "unknown event 'network'"),
        ("import nonexistent_module\n", "No module named 'nonexistent_module'"),
        ("def start(ctx):\n    raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ],
)
def test_permissions_are_enforced_and_bad_features_do_not_start(
    tmp_path: Path, source: str, error: str
) -> None:
    dev = make_device(tmp_path, extra={"bad": source})
    dev.boot()
    assert "bad" not in dev.features.running
    assert error in dev.features.status()["bad"]["error"]
    assert "thermostat" in dev.features.running


def test_bad_manifests_are_reported_not_fatal(tmp_path: Path) -> None:
    dev = make_device(tmp_path, extra={"odd": "def start(ctx):\n    pass\n"})
    manifest = Path(dev.features.root) / "odd" / "manifest.json"
    manifest.write_text('{"name": "odd", "version": "1", "api": 1}')
    dev.boot()
    assert "semver" in dev.features.status()["odd"]["error"]
    assert "thermostat" in dev.features.running


def test_commands_answer_with_specific_errors(tmp_path: Path) -> None:
    dev = make_device(tmp_path)
    dev.boot()
    assert dev.execute("fly", {})["error"]["code"] == "unknown_op"
    assert dev.execute("feature.enable", {"feature": "jetpack"})["error"]["code"] == "unknown_feature"
    assert dev.execute("feature.enable", {})["error"]["code"] == "bad_args"
    assert dev.execute("config.set", {"feature": "thermostat", "values": {}})["error"]["code"] == "bad_config"
    ping = dev.execute("ping", {})
    assert ping["ok"] and set(ping["result"]) == {"uptime_s", "heap_free"}


def test_a_command_without_ram_is_answered_no_ram_and_the_device_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heap with no block for a command's code (config.set loads the
    settings' module beside a TLS session at 128 KB): the reply says no_ram,
    nothing is lost, and the next command is carried out."""
    dev = make_device(tmp_path)
    dev.boot()
    before = dev.execute("config.get", {"feature": "thermostat"})["result"]["thermostat"]
    set_config = dev.features.set_config

    def short_of_ram(name: str, values: Any) -> Any:
        raise MemoryError("memory allocation failed, allocating 592 bytes")

    monkeypatch.setattr(dev.features, "set_config", short_of_ram)
    reply = dev.execute("config.set", {"feature": "thermostat", "values": {"setpoint": 30.0}}, "c1")
    assert reply["ok"] is False and reply["error"] == {
        "code": "no_ram",
        "message": "not enough RAM for config.set now",
    }, reply
    assert dev.execute("config.get", {"feature": "thermostat"})["result"]["thermostat"] == before
    monkeypatch.setattr(dev.features, "set_config", set_config)
    values = {"setpoint": before["setpoint"] + 1.5}
    reply = dev.execute("config.set", {"feature": "thermostat", "values": values}, "c2")
    assert reply["ok"] and reply["result"]["thermostat"]["setpoint"] == values["setpoint"], reply


def test_a_reply_without_ram_is_sent_as_no_ram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply's text finds no block: a short no_ram in its place, on a
    collected heap; the device answers, it does not crash."""
    from firmware.pb import commands
    from firmware.pb.net import wire

    dev = make_device(tmp_path)
    dev.boot()
    sent: list[tuple[str, bytes]] = []
    monkeypatch.setattr(dev.client, "publish", lambda t, p, q, r: sent.append((t, p)) or True)
    dumps, misses = wire.dumps, [0]

    def short_of_ram(kind: str, msg: Any) -> bytes:
        if misses[0] > 0:
            misses[0] -= 1
            raise MemoryError("memory allocation failed, allocating 464 bytes")
        return dumps(kind, msg)

    monkeypatch.setattr(wire, "dumps", short_of_ram)
    for cmd_id, n, want in (("c1", 0, True), ("c2", 1, False)):
        misses[0] = n
        commands.handle(dev, json.dumps({"v": 1, "id": cmd_id, "op": "status"}).encode())
        reply = json.loads(sent[-1][1])
        assert sent[-1][0] == dev.topic("reply") and reply["id"] == cmd_id and reply["ok"] is want, reply
    assert reply == {
        "v": 1,
        "dev": dev.id,
        "id": "c2",
        "ok": False,
        "error": {"code": "no_ram", "message": "not enough RAM for the reply now"},
    }
    # and no block even for that: unanswered, logged, and the device goes on (before, it
    # raised, and the device restarted and lost the command on a clean session)

    logged: list[str] = []
    monkeypatch.setattr(dev, "log", logged.append)
    misses[0], before = 2, len(sent)
    commands.handle(dev, json.dumps({"v": 1, "id": "c3", "op": "status"}).encode())
    assert len(sent) == before and logged == ["no RAM to answer a command"]
    commands.handle(dev, json.dumps({"v": 1, "id": "c4", "op": "status"}).encode())
    assert json.loads(sent[-1][1])["ok"] is True


def test_duplicate_command_is_answered_again_not_executed_twice(tmp_path: Path) -> None:
    dev = make_device(tmp_path)
    dev.boot()
    sent: list[bytes] = []
    dev.client.publish = lambda topic, payload, qos=0, retain=False, first=False: sent.append(payload) or True  # type: ignore[method-assign]
    calls = []
    original = dev.features.enable
    dev.features.enable = lambda name, on: calls.append("feature.disable") or original(name, on)  # type: ignore[method-assign]
    cmd = json.dumps(
        {"v": 1, "id": "abc", "op": "feature.disable", "args": {"feature": "thermostat"}}
    ).encode()
    dev._on_message("pb/dev-1/cmd", cmd, False)
    dev._on_message("pb/dev-1/cmd", cmd, False)
    assert calls == ["feature.disable"]
    replies = [json.loads(p) for p in sent if b'"id":"abc"' in p]
    assert len(replies) == 2 and replies[0] == replies[1] and replies[0]["ok"]


def test_messages_on_foreign_topics_and_retained_commands_are_ignored(tmp_path: Path) -> None:
    dev = make_device(tmp_path)
    dev.boot()
    sent: list[bytes] = []
    dev.client.publish = lambda topic, payload, qos=0, retain=False, first=False: sent.append(payload) or True  # type: ignore[method-assign]
    cmd = json.dumps({"v": 1, "id": "x1", "op": "reboot"}).encode()
    dev._on_message("pb/other/cmd", cmd, False)
    dev._on_message("pb/dev-1/cmd", cmd, True)
    assert sent == []


def test_garbage_command_with_an_id_gets_an_error_reply(tmp_path: Path) -> None:
    dev = make_device(tmp_path)
    dev.boot()
    sent: list[bytes] = []
    dev.client.publish = lambda topic, payload, qos=0, retain=False, first=False: sent.append(payload) or True  # type: ignore[method-assign]
    dev._on_message("pb/dev-1/cmd", b'{"v": 1, "id": "q", "op": 5}', False)
    reply = json.loads(sent[-1])
    assert reply["id"] == "q" and reply["error"]["code"] == "bad_type"


def test_a_schedule_the_thermostat_cannot_follow_is_refused(tmp_path: Path) -> None:
    dev = make_device(tmp_path)
    dev.boot()
    bad = dev.execute("config.set", {"feature": "thermostat", "values": {"schedule": [["25:00", 20]]}})
    assert bad["ok"] is False and bad["error"]["code"] == "bad_config" and "25:00" in bad["error"]["message"]
    assert "thermostat" in dev.features.running
    assert restarted(dev, tmp_path).features.config("thermostat")["schedule"] == []


def test_settings_a_feature_fails_on_are_rolled_back(tmp_path: Path) -> None:
    picky = """
class Picky:
    def __init__(self, ctx):
        if ctx.config["level"] == 3:
            raise ValueError("level 3 breaks me")

def start(ctx):
    return Picky(ctx)
"""
    dev = make_device(tmp_path, extra={"picky": picky})
    manifest_path = Path(dev.features.root) / "picky" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"] = {"level": {"type": "integer", "default": 1, "min": 0, "max": 5}}
    manifest_path.write_text(json.dumps(manifest))
    dev.boot()
    assert dev.execute("config.set", {"feature": "picky", "values": {"level": 2}})["ok"]
    bad = dev.execute("config.set", {"feature": "picky", "values": {"level": 3}})
    assert bad["ok"] is False and "level 3 breaks me" in bad["error"]["message"]
    assert "picky" in dev.features.running and dev.features.config("picky")["level"] == 2
    assert "error" not in dev.features.status()["picky"]
    again = restarted(dev, tmp_path)
    assert again.features.config("picky")["level"] == 2 and "picky" in again.features.running


def test_a_failing_sensor_leaves_no_stale_value(tmp_path: Path) -> None:
    dev = make_device(tmp_path)
    dev.boot()
    sense(dev, temperature=20.0, humidity=40)
    assert dev.features.readings["temperature"] == 20.0
    sense(dev, temperature=500.0, humidity=40)  # outside the sensor's range: a broken sensor
    assert "temperature" not in dev.features.readings
    assert dev.sensor_errors["temperature"] == 1


@pytest.mark.parametrize("kind", ["hello", "telemetry"])
def test_a_message_without_ram_waits_then_a_restart_gives_a_fresh_heap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A heap too fragmented for a message: a changed hello is tried again by
    the sampler, a telemetry report skipped (its seq goes to the next one),
    not a crash; after 15 s of that while connected the device restarts
    (offline reason memory), and the next boot says it from a fresh heap."""
    import firmware.pb.runtime as runtime

    clock = [1000]
    monkeypatch.setattr(runtime, "ticks_ms", lambda: clock[0])
    dev = make_device(tmp_path)
    dev.boot()
    sent: list[tuple[str, bytes]] = []
    out_of_ram = [True]

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        if out_of_ram[0]:
            raise MemoryError("memory allocation failed, allocating 536 bytes")
        sent.append((topic, payload))
        return True

    monkeypatch.setattr(dev.client, "publish", publish)
    dev.client.up = True
    say = dev.republish_hello if kind == "hello" else dev.publish_telemetry
    say()
    clock[0] += 14000
    say()  # (as the sampler does)
    assert dev._exit is None and not sent
    out_of_ram[0] = False  # the RAM came back in time: said, nothing more
    say()
    assert [t for t, _ in sent] == [dev.topic(kind)] and dev._exit is None
    if kind == "telemetry":
        assert json.loads(sent[0][1])["seq"] == 1  # no gap for the skipped ones
    out_of_ram[0] = True
    say()
    clock[0] += 15001
    say()
    assert dev._exit == "memory"


def test_a_reading_without_ram_ends_the_sample_not_the_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sensor read that finds no block of RAM (the host board parses its
    file for it) ends that sample with the last values kept; only 15 s of it
    while connected restarts the device on a fresh heap."""
    import firmware.pb.runtime as runtime

    clock = [1000]
    monkeypatch.setattr(runtime, "ticks_ms", lambda: clock[0])
    dev = make_device(tmp_path)
    dev.boot()
    sense(dev, temperature=20.0, humidity=40)
    dev.client.up = True

    def no_ram(name: str) -> float:
        raise MemoryError("memory allocation failed, allocating 256 bytes")

    monkeypatch.setattr(dev.hal, "read", no_ram)
    dev.sample()
    clock[0] += 14000
    dev.sample()
    assert dev._exit is None and dev.features.readings["temperature"] == 20.0
    assert dev.sensor_errors["temperature"] == 0  # not the sensor's fault
    clock[0] += 1001
    dev.sample()
    assert dev._exit == "memory"


def test_a_birth_without_ram_for_the_hello_still_says_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connect goes on without the hello (the broker keeps the last one);
    the sampler says the new one once it can."""
    dev = make_device(tmp_path)
    dev.boot()

    def no_ram(keep: bool = False) -> bytes:
        raise MemoryError("memory allocation failed, allocating 456 bytes")

    monkeypatch.setattr(dev, "hello", no_ram)
    topics = [t for t, *_ in dev._birth()]
    assert topics[0] == dev.topic("state") and dev.topic("hello") not in topics
    assert dev._hello_due is not None
    monkeypatch.undo()
    assert [t for t, *_ in dev._birth()][:2] == [dev.topic("hello"), dev.topic("state")]
    assert dev._hello_due is None
