"""End to end: a provisioned device on the real MicroPython unix port (and,
the same files, under CPython), a real Mosquitto with per-device
credentials and ACLs, and the gateway and CLI as a user runs them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from gateway.store import Store

from ..conftest import DbAt, MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.processes import SMALL_HEAP, GatewayProcess
from ..support.wait import wait_for

pytestmark = pytest.mark.slow


def listed(gw: GatewayProcess, dev: str) -> dict | None:
    return next((d for d in gw.devices() if d["id"] == dev), None)


def telemetry_count(db: Path | str, dev: str) -> int:
    with Store(db, readonly=True) as store:
        return store.telemetry_count(dev)


def test_device_appears_with_model_and_features(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice, interpreter: str
) -> None:
    dev = make_device(mosquitto, "thermostat", interpreter).start()
    entry = wait_for(lambda: listed(gateway_process, dev.id), 20, what=f"{dev.id} in devices list")
    assert entry["model"] == "thermostat"
    assert entry["board"] == "thermostat-v1"
    assert entry["features"] == {"thermostat": "1.1.0"}
    shown = wait_for(lambda: (d := gateway_process.device(dev.id))["online"] and d, 10, what="online")
    assert shown["platform"] == ("micropython" if interpreter == "micropython" else "cpython")
    assert shown["reset_cause"] == "power_on"
    assert shown["boot_count"] == 1


def test_telemetry_is_stored(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice, interpreter: str
) -> None:
    dev = make_device(mosquitto, "shirt", interpreter)
    dev.set_sensors(humidity=72.0)
    dev.start()
    wait_for(lambda: telemetry_count(gateway_process.db, dev.id) >= 3, 20, what="three telemetry rows")
    with Store(gateway_process.db, readonly=True) as store:
        rows = store.telemetry(dev.id)
    last = rows[-1].data
    assert last["sensors"]["humidity"] == 72.0
    # the vent feature reacted to the humidity and says so
    assert last["features"]["vent"]["venting"] is True
    assert last["actuators"]["vent"] == last["features"]["vent"]["opening"] > 0
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)


def test_config_change_changes_behaviour(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice, interpreter: str
) -> None:
    dev = make_device(mosquitto, "thermostat", interpreter)
    dev.set_sensors(temperature=20.0)
    dev.start()
    wait_for(lambda: gateway_process.device(dev.id)["online"], 20, what="device online")
    # default setpoint 21 C with the room at 20 C: the heater runs
    wait_for(lambda: dev.actuators().get("relay") is True, 10, what="relay on at setpoint 21")

    out = gateway_process.cli("devices", "send", dev.id, "config", "set", "thermostat.setpoint=18")
    assert json.loads(out.stdout)["thermostat"]["setpoint"] == 18
    wait_for(lambda: dev.actuators().get("relay") is False, 10, what="relay off at setpoint 18")

    gateway_process.cli("devices", "send", dev.id, "config", "set", "thermostat.setpoint=23.5")
    wait_for(lambda: dev.actuators().get("relay") is True, 10, what="relay on at setpoint 23.5")

    # a value out of range is refused by the device, with its reason
    bad = gateway_process.cli(
        "devices", "send", dev.id, "config", "set", "thermostat.setpoint=99", check=False
    )
    assert bad.returncode == 1
    assert "at most 30" in bad.stderr
    # and the device kept its setting
    status = json.loads(gateway_process.cli("devices", "send", dev.id, "status").stdout)
    assert status["config"]["thermostat"]["setpoint"] == 23.5


def test_feature_disable_enable_and_reboot(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice
) -> None:
    dev = make_device(mosquitto, "thermostat")
    dev.set_sensors(temperature=15.0)
    dev.start()
    wait_for(lambda: dev.actuators().get("relay") is True, 20, what="heating")
    gateway_process.cli("devices", "send", dev.id, "feature", "disable", "thermostat")
    # a stopped feature leaves its actuator in the board's safe state
    wait_for(lambda: dev.actuators().get("relay") is False, 10, what="relay safe after disable")
    shown = wait_for(
        lambda: (d := gateway_process.device(dev.id))["features"]["thermostat"]["enabled"] is False and d, 10
    )
    assert shown["features"]["thermostat"]["running"] is False

    gateway_process.cli("devices", "send", dev.id, "feature", "enable", "thermostat")
    wait_for(lambda: dev.actuators().get("relay") is True, 10, what="heating again")

    reply = json.loads(gateway_process.cli("devices", "send", dev.id, "reboot", "--json").stdout)
    assert reply["ok"] and reply["result"] == {"rebooting": True}
    rebooted = wait_for(
        lambda: (d := gateway_process.device(dev.id))["boot_count"] == 2 and d["online"] and d,
        20,
        what="reboot",
    )
    assert rebooted["reset_cause"] == "soft"
    # the setting survived the reboot
    status = json.loads(gateway_process.cli("devices", "send", dev.id, "status").stdout)
    assert status["features"]["thermostat"]["enabled"] is True


def test_killed_device_is_marked_offline(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice, interpreter: str
) -> None:
    dev = make_device(mosquitto, "shirt", interpreter).start()
    wait_for(lambda: gateway_process.device(dev.id)["online"], 20, what="online")
    dev.kill(signal.SIGKILL)
    shown = wait_for(
        lambda: (d := gateway_process.device(dev.id))["online"] is False and d, 15, what="offline"
    )
    assert shown["state_reason"] == "lost"  # the last will, published by the broker
    # a command to an offline device is refused at once, with the reason
    out = gateway_process.cli("devices", "send", dev.id, "ping", check=False)
    assert out.returncode == 1 and "offline" in out.stderr


def children(pid: int) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_the_supervisor_takes_the_device_down(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice, sig: int
) -> None:
    """On the unix port `micropython main.py` is the board's power: the device
    process it runs goes with it, and the broker says the device is lost."""
    dev = make_device(mosquitto, "thermostat").start()
    wait_for(lambda: gateway_process.device(dev.id)["online"], 20, what="online")
    assert dev.proc is not None
    child = wait_for(lambda: children(dev.proc.pid), 10, what="the device process")[0]
    os.kill(dev.proc.pid, sig)  # the supervisor alone, not its process group
    dev.proc.wait(10)
    wait_for(lambda: not alive(child), 10, what="the device process to end with its supervisor")
    shown = wait_for(
        lambda: (d := gateway_process.device(dev.id))["online"] is False and d, 15, what="offline"
    )
    assert shown["state_reason"] == "lost"


@pytest.mark.long  # (make long: make test stays within 10 minutes)
def test_broker_restart_everyone_reconnects_nothing_lost(
    own_mosquitto: Mosquitto, tmp_path: Path, make_device: MakeDevice, interpreter: str
) -> None:
    gw = GatewayProcess(own_mosquitto.gateway_url, tmp_path / "gw.db", tmp_path / "gw.log").start()
    try:
        dev = make_device(own_mosquitto, "thermostat", interpreter).start()
        wait_for(lambda: telemetry_count(gw.db, dev.id) >= 3, 20, what="telemetry before the restart")
        with Store(gw.db, readonly=True) as store:
            before = [(r.seq, r.received) for r in store.telemetry(dev.id, 1000)]

        own_mosquitto.restart(down_for=2.0)

        # both reconnect by themselves: new telemetry arrives, the device is online again
        n = len(before)
        wait_for(lambda: telemetry_count(gw.db, dev.id) >= n + 3, 40, what="telemetry after the restart")
        wait_for(lambda: gw.device(dev.id)["online"], 20, what="online after the restart")
        with Store(gw.db, readonly=True) as store:
            after = [(r.seq, r.received) for r in store.telemetry(dev.id, 1000)]
        assert after[: len(before)] == before  # nothing stored was lost
        # and commands flow again
        out = gw.cli("devices", "send", dev.id, "ping", "--json")
        assert json.loads(out.stdout)["ok"] is True
    finally:
        gw.stop()


@pytest.mark.long
def test_gateway_restart_keeps_the_registry(
    mosquitto: Mosquitto, tmp_path: Path, make_device: MakeDevice, db_at: DbAt
) -> None:
    """On SQLite and on PostgreSQL (`--db postgresql://...`): the gateway and the CLI."""
    gw = GatewayProcess(mosquitto.gateway_url, db_at(), tmp_path / "gw.log").start()
    dev = make_device(mosquitto, "shirt").start()
    try:
        wait_for(lambda: listed(gw, dev.id), 20, what="registered")
        wait_for(lambda: telemetry_count(gw.db, dev.id) >= 2, 20)
        # a command, and its reply kept
        out = gw.cli("devices", "send", dev.id, "status", "--json")
        assert json.loads(out.stdout)["result"]["boot_count"] == 1
        gw.stop()
        # the registry is readable while no gateway runs
        first = gw.device(dev.id)
        stored = telemetry_count(gw.db, dev.id)
        assert first["model"] == "shirt"
        gw.start()
        wait_for(lambda: telemetry_count(gw.db, dev.id) > stored, 20, what="telemetry after gateway restart")
        again = gw.device(dev.id)
        assert again["first_seen"] == first["first_seen"]
        assert again["online"] is True
    finally:
        gw.stop()


def test_runs_in_128k_heap_and_reports_free_heap(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice, record_property
) -> None:
    dev = make_device(mosquitto, "thermostat", "micropython")
    dev.heap = SMALL_HEAP
    assert (dev.path / "pb" / "runtime.mpy").exists()
    dev.start()
    shown = wait_for(lambda: (d := gateway_process.device(dev.id))["online"] and d, 20, what="online")
    first = shown["heap_free"]
    record_property("heap_free_after_first_start", first)
    print(f"\nfree heap after the first start (config.json checked) under -X heapsize=128K: {first} bytes")
    assert first > 8 * 1024, f"only {first} bytes left of a 128 KB heap"
    # every start after (the config known to have passed)
    dev.kill()
    dev.start()
    shown = wait_for(
        lambda: (d := gateway_process.device(dev.id))["online"] and d["boot_count"] == 2 and d,
        20,
        what="boot 2",
    )
    heap = shown["heap_free"]
    record_property("heap_free_after_start", heap)
    print(f"free heap after start under -X heapsize=128K: {heap} bytes")
    assert heap > 8 * 1024, f"only {heap} bytes left of a 128 KB heap"
    # and it keeps running: a status reply after some telemetry
    time.sleep(2)
    out = gateway_process.cli("devices", "send", dev.id, "status", "--json")
    status_heap = json.loads(out.stdout)["result"]["heap_free"]
    print(f"free heap while it answers a status command: {status_heap} bytes")
    assert status_heap > 8 * 1024, f"only {status_heap} bytes left while it answers a command"
    # and takes a setting, the command a user sends most
    gateway_process.cli("devices", "send", dev.id, "config", "set", "thermostat.setpoint=18")
    wait_for(lambda: dev.actuators().get("relay") is False, 10, what="relay off at 18 C")


CRASHY = """
class Crashy:
    def __init__(self, ctx):
        self.n = 0
        ctx.on("tick", self.tick)

    def tick(self, now):
        self.n += 1
        if self.n == 3:
            return [][1]


def start(ctx):
    return Crashy(ctx)
"""


def test_a_feature_that_raises_is_disabled_reported_and_the_device_runs_on(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice, interpreter: str
) -> None:
    dev = make_device(mosquitto, "thermostat", interpreter)
    folder = dev.path / "features" / "crashy"
    folder.mkdir()
    (folder / "__init__.py").write_text(CRASHY)
    (folder / "manifest.json").write_text(json.dumps({"name": "crashy", "version": "0.1.0", "api": 1}))
    dev.set_sensors(temperature=25.0)
    dev.start()
    shown = wait_for(
        lambda: (d := gateway_process.device(dev.id))["features"].get("crashy", {}).get("error") and d,
        20,
        what="crashy reported failed",
    )
    assert "IndexError" in shown["features"]["crashy"]["error"]
    assert shown["features"]["thermostat"]["running"] is True
    assert any(e["kind"] == "feature_error" and e["feature"] == "crashy" for e in shown["events"])
    # the thermostat still works: a colder room turns the heater on
    assert dev.actuators()["relay"] is False
    dev.set_sensors(temperature=15.0)
    wait_for(lambda: dev.actuators().get("relay") is True, 10, what="heater on")
    assert dev.running


def test_source_device_runs_too(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice
) -> None:
    # .py modules are compiled on the device at import: that needs more RAM
    # at start than shipping .mpy, so this runs with a larger heap
    dev = make_device(mosquitto, "shirt", "micropython", compile_mpy=False)
    dev.heap = "256K"
    assert (dev.path / "pb" / "runtime.py").exists()
    dev.start()
    shown = wait_for(lambda: (d := gateway_process.device(dev.id))["online"] and d, 20, what="online")
    assert shown["features"]["vent"]["running"] is True


@pytest.mark.parametrize("interpreter", ["micropython", "python"])
def test_a_config_outside_its_schema_stops_the_boot_naming_the_key(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice, interpreter: str
) -> None:
    dev = make_device(mosquitto, "thermostat", interpreter)
    dev.heap = SMALL_HEAP
    cfg = json.loads((dev.path / "config.json").read_text())
    dev.start()
    try:
        wait_for(lambda: gateway_process.device(dev.id)["online"], 20, what="online")
    finally:
        dev.kill()
    # the config that passed is known by its digest: a changed one is checked again
    assert (dev.path / "data" / "config.ok").stat().st_size == 32
    (dev.path / "config.json").write_text(json.dumps({**cfg, "ota_chunk": 8192}))
    dev.start()
    try:
        wait_for(
            lambda: "config: 'ota_chunk' must be an integer within 64..4096, not 8192" in dev.output(),
            15,
            what="the config error",
        )
        assert dev.output().count("booted") == 1
    finally:
        dev.kill()
    # put right, the same device boots
    (dev.path / "config.json").write_text(json.dumps(cfg))
    dev.start()
    wait_for(lambda: dev.output().count("booted") == 2, 20, what="booted again")
    dev.kill()
