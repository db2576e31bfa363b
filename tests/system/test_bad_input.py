"""Bad input reaches a running gateway through a real Mosquitto: each kind is
rejected with its reason and counted, nothing crashes, nothing stored is
lost. And the broker's ACLs keep each device inside its own subtree."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import ApiClient
from gateway.store import Store

from ..conftest import MakeDevice, unique_id
from ..support.mosquitto import Mosquitto
from ..support.mqtt import TestClient
from ..support.processes import DeviceProcess, GatewayProcess
from ..support.wait import wait_for

pytestmark = pytest.mark.slow


def stats(gw: GatewayProcess) -> dict[str, Any]:
    return dict(ApiClient.from_db(gw.db).request("GET", "/api/v1/stats"))


def rejected(gw: GatewayProcess, reason: str) -> int:
    return int(stats(gw)["rejects"].get(reason, 0))


def telemetry(dev: str, **over: Any) -> bytes:
    msg = {"v": 1, "dev": dev, "seq": 1, "ts": time.time(), "sensors": {}, "actuators": {}, "features": {}}
    msg.update(over)
    return json.dumps(msg).encode()


class Rogue:
    """A device's own credentials in another hand (a compromised or buggy
    device). One account is one connection: each publish connects, which
    throws the device off the broker until it reconnects, and leaves."""

    def __init__(self, mosquitto: Mosquitto, dev: DeviceProcess) -> None:
        self.mosquitto = mosquitto
        self.dev = dev

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        # (the device, thrown off, reconnects after 0.5 s or so: on a loaded machine it may
        # throw the rogue off before its publish goes, and the rogue tries again)
        for attempt in range(5):
            c = TestClient(self.mosquitto, self.dev.id, self.dev.password, client_id=f"{self.dev.id}-rogue")
            try:
                c.publish(topic, payload, retain=retain)
                return
            except RuntimeError as exc:  # (paho: "The client is not currently connected.")
                if "not currently connected" not in str(exc) or attempt == 4:
                    raise
            finally:
                c.close()


@pytest.fixture
def running(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, make_device: MakeDevice
) -> Iterator[tuple[DeviceProcess, Rogue]]:
    """A registered device, and its credentials in another hand."""
    dev = make_device(mosquitto, "thermostat").start()
    wait_for(lambda: gateway_process.device(dev.id)["online"], 20, what="device online")
    wait_for(lambda: telemetry_count(gateway_process, dev.id) >= 1, 10)
    yield dev, Rogue(mosquitto, dev)


def telemetry_count(gw: GatewayProcess, dev: str) -> int:
    with Store(gw.db, readonly=True) as store:
        return store.telemetry_count(dev)


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        ("telemetry", b"{not json", "bad_json"),
        ("telemetry", b"\xff\xfe\x00", "bad_json"),
        ("telemetry", b"[1, 2, 3]", "not_object"),
        ("telemetry", None, "bad_type"),  # seq as a string
        ("telemetry", None, "missing_field"),  # no sensors
        ("telemetry", None, "unsupported_version"),
        ("telemetry", None, "too_large"),
        ("telemetry", None, "spoofed"),  # claims to be another device
        ("hello", b'{"v": 1}', "missing_field"),
        ("state", None, "bad_value"),
        # the ACL keeps devices off unknown topics; a client with wider rights can still send one
        ("nonsense", b"{}", "unknown_topic"),
    ],
)
def test_bad_message_is_rejected_counted_and_harmless(
    mosquitto: Mosquitto,
    gateway_process: GatewayProcess,
    running: tuple[DeviceProcess, Rogue],
    kind: str,
    payload: bytes | None,
    reason: str,
) -> None:
    dev, rogue = running
    if payload is None:
        payload = {
            "bad_type": telemetry(dev.id, seq="7"),
            "missing_field": json.dumps({"v": 1, "dev": dev.id, "seq": 1, "ts": 1}).encode(),
            "unsupported_version": telemetry(dev.id, v=2),
            "too_large": telemetry(dev.id, sensors={f"s{i}": i for i in range(2000)}),
            "spoofed": telemetry("someone-else"),
            "bad_value": json.dumps({"v": 1, "dev": dev.id, "state": "sleeping"}).encode(),
        }[reason]
    before_rows = telemetry_count(gateway_process, dev.id)
    before_device = gateway_process.device(dev.id)
    before = rejected(gateway_process, reason)

    if reason == "unknown_topic":
        admin = TestClient(mosquitto, *mosquitto.operator())
        admin.publish(f"pb/{dev.id}/{kind}", payload)
        admin.close()
    else:
        rogue.publish(f"pb/{dev.id}/{kind}", payload)

    wait_for(lambda: rejected(gateway_process, reason) == before + 1, 10, what=f"{reason} counted")
    assert gateway_process.proc is not None and gateway_process.proc.poll() is None
    assert f"{reason}" in gateway_process.log.read_text()
    # nothing stored was lost or changed by it, and the device still reports
    after_device = gateway_process.device(dev.id)
    for key in ("model", "board", "features", "first_seen", "boot_count"):
        assert after_device[key] == before_device[key]
    assert telemetry_count(gateway_process, dev.id) >= before_rows
    wait_for(
        lambda: telemetry_count(gateway_process, dev.id) > before_rows, 10, what="good telemetry continues"
    )


def test_telemetry_from_a_device_that_never_said_hello(
    mosquitto: Mosquitto, gateway_process: GatewayProcess
) -> None:
    stranger = unique_id("xx")
    mosquitto.add_user(stranger, "pw")
    client = TestClient(mosquitto, stranger, "pw")
    try:
        before = rejected(gateway_process, "unknown_device")
        client.publish(f"pb/{stranger}/telemetry", telemetry(stranger))
        wait_for(lambda: rejected(gateway_process, "unknown_device") == before + 1, 10)
        assert all(d["id"] != stranger for d in gateway_process.devices())
    finally:
        client.close()


def test_device_cannot_publish_as_another_device(
    mosquitto: Mosquitto,
    gateway_process: GatewayProcess,
    make_device: MakeDevice,
    running: tuple[DeviceProcess, Rogue],
) -> None:
    victim, _rogue = running
    watcher = TestClient(mosquitto, *mosquitto.operator())
    watcher.subscribe(f"pb/{victim.id}/#")
    other = make_device(mosquitto, "shirt")
    intruder = TestClient(mosquitto, other.id, other.password)
    try:
        watcher.messages(0.5)  # drain retained birth messages
        before = gateway_process.device(victim.id)
        # with its own credentials, another device writes into the victim's subtree
        intruder.publish(f"pb/{victim.id}/state", json.dumps({"v": 1, "dev": victim.id, "state": "offline"}))
        intruder.publish(f"pb/{victim.id}/telemetry", telemetry(victim.id, sensors={"temperature": 99.0}))
        intruder.publish(f"pb/{victim.id}/hello", b"{}", retain=True)
        got = [t for t, p, r in watcher.messages(1.0) if b"99.0" in p or p in (b"{}",) or b'"offline"' in p]
        assert got == [], f"the broker let another device write into {victim.id}'s subtree: {got}"
        after = gateway_process.device(victim.id)
        assert after["online"] is True
        assert after["model"] == before["model"]
    finally:
        intruder.close()
        watcher.close()


def test_device_cannot_read_another_devices_commands(
    mosquitto: Mosquitto,
    gateway_process: GatewayProcess,
    make_device: MakeDevice,
    running: tuple[DeviceProcess, Rogue],
) -> None:
    victim, _ = running
    other = make_device(mosquitto, "shirt")
    spy = TestClient(mosquitto, other.id, other.password)
    try:
        # Mosquitto grants the SUBSCRIBE, then filters delivery: check what arrives
        spy.subscribe(f"pb/{victim.id}/#")
        spy.subscribe("pb/#")
        spy.messages(0.5)
        gateway_process.cli("devices", "send", victim.id, "ping")
        leaked = [t for t, _, _ in spy.messages(1.0) if t.startswith(f"pb/{victim.id}/")]
        assert leaked == []
    finally:
        spy.close()


def test_wrong_password_is_refused(mosquitto: Mosquitto, make_device: MakeDevice) -> None:
    dev = make_device(mosquitto, "thermostat")
    assert mosquitto.try_connect(dev.id, dev.password) == 0
    assert mosquitto.try_connect(dev.id, "guess") == 5  # not authorized
    assert mosquitto.try_connect(None, None) == 5


def test_retained_telemetry_with_seq_2_63_does_not_stop_the_gateway_process_across_a_restart(
    mosquitto: Mosquitto, gateway_process: GatewayProcess, running: tuple[DeviceProcess, TestClient]
) -> None:
    """Once, SQLite's OverflowError took the gateway down, and the broker's
    retained copy took it down again at every start."""
    dev, _ = running
    rogue_id = unique_id("th")
    mosquitto.add_user(rogue_id, "rogue-pw")
    rogue = TestClient(mosquitto, rogue_id, "rogue-pw", client_id=rogue_id)
    hello = {
        "v": 1, "dev": rogue_id, "model": "thermostat", "board": "thermostat-v1", "runtime": "0.1.0",
        "api": 1, "features": {}, "caps": [], "heap_free": 1, "reset_cause": "power_on",
        "boot_count": 1, "keepalive": 30, "telemetry_s": 10.0,
    }  # fmt: skip
    topic = f"pb/{rogue_id}/telemetry"
    try:
        rogue.publish(f"pb/{rogue_id}/hello", json.dumps(hello), retain=True)
        wait_for(
            lambda: any(d["id"] == rogue_id for d in gateway_process.devices()), 10, what="rogue registered"
        )
        before = rejected(gateway_process, "bad_value")
        rogue.publish(topic, telemetry(rogue_id, seq=2**63), retain=True)
        wait_for(lambda: rejected(gateway_process, "bad_value") == before + 1, 10, what="seq 2**63 rejected")
        gateway_process.stop()
        gateway_process.start()
        # the broker hands the retained copy to the new gateway: rejected again, and nothing stops
        wait_for(
            lambda: rejected(gateway_process, "bad_value") >= before + 2, 10, what="rejected after restart"
        )
        rows = telemetry_count(gateway_process, dev.id)
        wait_for(
            lambda: telemetry_count(gateway_process, dev.id) > rows, 10, what="the device's telemetry lands"
        )
        assert gateway_process.proc is not None and gateway_process.proc.poll() is None
        assert "OverflowError" not in gateway_process.log.read_text()
        assert telemetry_count(gateway_process, rogue_id) == 0
    finally:
        rogue.publish(topic, b"", retain=True)
        rogue.publish(f"pb/{rogue_id}/hello", b"", retain=True)
        rogue.close()
