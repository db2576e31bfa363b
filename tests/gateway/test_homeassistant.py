"""The Home Assistant bridge without Home Assistant (docs/protocol.md 14):
the discovery configs and values it makes (only of shared streams), the
commands it takes, checked before any reaches a device, Home Assistant's
broker account on a real Mosquitto, and the links an owner makes, on a
real gateway and SQLite, with a device played over the broker. Hostile
commands (for a device not linked, linked by another owner, malformed,
absurd) stop nothing and reach no device. tests/homeassistant/ runs the
bridge against a real Home Assistant."""

from __future__ import annotations

import asyncio
import json
import math
import queue
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import ha_bridge
from gateway import homeassistant as ha
from gateway.accounts import Accounts, new_claim_code
from gateway.broker import HA_USER
from gateway.errors import ConfigError
from gateway.provision import provision_into

from ..conftest import unique_id
from ..support.cli import permabeta, run_cli
from ..support.mosquitto import Mosquitto
from ..support.mqtt import TestClient
from ..support.wait import async_wait_for
from .conftest import Running, StartGateway

THERMOSTAT = {"thermostat": {"version": "1.0.0", "enabled": True, "running": True}}
CAPS = ["humidity", "relay", "temperature"]


# ---- what Home Assistant is shown ---------------------------------------------------


def _keys(model: str, withheld: dict[str, str], **hello: Any) -> list[str]:
    hello = {"features": THERMOSTAT, "caps": CAPS} | hello
    return [e.key for e in ha.entities(model, hello, withheld)]


def test_only_shared_streams_give_an_entity_and_a_value() -> None:
    assert _keys("thermostat", {}) == ["temperature", "humidity", "thermostat", "firmware"]
    assert _keys("thermostat", {"sensors.humidity": "local"}) == ["temperature", "thermostat", "firmware"]
    assert _keys("thermostat", {"features.thermostat.setpoint": "off"}) == [
        "temperature",
        "humidity",
        "firmware",
    ]
    assert _keys("thermostat", {}, features={}, caps=["temperature"]) == ["temperature", "firmware"]
    vent = {"vent": {"version": "1.0.1"}}
    assert _keys("shirt", {}, features=vent) == ["vent", "firmware"]
    assert _keys("shirt", {"features.vent.opening": "local"}, features=vent) == ["firmware"]
    assert _keys("kettle", {}) == []
    # the climate entity shows the room and the heater only where they are shared
    full = ha.discovery(ha.CLIMATE, "th-1", "thermostat", "0.2.0", {})
    assert full["current_temperature_topic"] == "pbha/th-1/temperature"
    assert full["action_topic"] == "pbha/th-1/action"
    held = {"sensors.temperature": "local", "features.thermostat.heating": "off"}
    kept = ha.discovery(ha.CLIMATE, "th-1", "thermostat", "0.2.0", held)
    assert "current_temperature_topic" not in kept and "action_topic" not in kept
    assert (kept["min_temp"], kept["max_temp"]) == (5.0, 30.0)
    assert ha.setpoint_range({"config": {"setpoint": {"min": 7, "max": 26}}}) == (7.0, 26.0)
    assert ha.setpoint_range({"config": {"setpoint": {"min": "x", "max": float("nan")}}}) == (5.0, 30.0)
    # every config names the device, its availability and a unique id; its topic is Home Assistant's
    for e in ha.ENTITIES["thermostat"]:
        c = ha.discovery(e, "th-1", "thermostat", None, {})
        assert (
            c["unique_id"] == f"permabeta_th-1_{e.key}"
            and c["availability_topic"] == "pbha/th-1/availability"
        )
        assert c["device"]["identifiers"] == ["permabeta_th-1"] and "sw_version" not in c["device"]
        assert e.config_topic("th-1") == f"homeassistant/{e.component}/pb_th-1/{e.key}/config"
        assert e.config_topic("th-1") in ha.all_config_topics("th-1")


def test_values_come_only_from_shared_streams_and_of_the_type_each_entity_reads() -> None:
    msg = {
        "sensors": {"temperature": 20.5, "humidity": 44},
        "features": {
            "thermostat": {"setpoint": 21.0, "mode": "heat", "heating": True},
            "vent": {"opening": 35},
        },
    }
    assert ha.state_values(msg, {}) == {
        "temperature": "20.5",
        "humidity": "44",
        "setpoint": "21",
        "mode": "heat",
        "action": "heating",
        "opening": "35",
    }
    held = {"sensors.humidity": "local", "features.thermostat.mode": "off", "features.vent.opening": "local"}
    assert ha.state_values(msg, held) == {"temperature": "20.5", "setpoint": "21"}
    off = {"features": {"thermostat": {"mode": "off", "heating": False}}}
    assert ha.state_values(off, {}) == {"mode": "off", "action": "off"}
    odd = {
        # (an integer of 400 digits, as JSON may bring one, raised OverflowError at each telemetry)
        "sensors": {"temperature": 10**400, "humidity": True},
        "features": {"thermostat": {"setpoint": float("nan"), "mode": "cool", "heating": 1}, "vent": []},
    }
    assert ha.state_values(odd, {}) == {}
    assert ha.state_values({"sensors": [], "features": "x"}, {}) == {}
    assert json.loads(ha.update_state("factory", None)) == {
        "installed_version": "factory",
        "latest_version": "factory",
    }


# ---- the commands it takes ---------------------------------------------------------


def test_a_bridge_command_is_checked_for_its_shape() -> None:
    assert ha.parse_command("pbha/th-1/set/setpoint", b" 22.5 ") == ha.Command("th-1", "setpoint", 22.5)
    assert ha.parse_command("pbha/th-1/set/mode", b"off") == ha.Command("th-1", "mode", "off")
    assert ha.parse_command("pbha/th-1/set/install", b"install") == ha.Command("th-1", "install", "install")
    for topic, payload in (
        ("pbha/th-1/set/setpoint/x", b"22"),
        ("pbha/th-1/setpoint", b"22"),
        ("pb/th-1/set/setpoint", b"22"),
        ("pbha/TH 1/set/setpoint", b"22"),
        ("pbha/" + "a" * 33 + "/set/setpoint", b"22"),
        ("pbha/th-1/set/reboot", b""),
        ("pbha/th-1/set/setpoint", b"nan"),
        ("pbha/th-1/set/setpoint", b"inf"),
        ("pbha/th-1/set/setpoint", b"1e999"),
        ("pbha/th-1/set/setpoint", b"twenty"),
        ("pbha/th-1/set/setpoint", b""),
        ("pbha/th-1/set/setpoint", b"2" * 65),
        ("pbha/th-1/set/setpoint", b"\xff\xfe"),
        ("pbha/th-1/set/mode", b"cool"),
        ("pbha/th-1/set/mode", b'{"mode": "off"}'),
        ("pbha/th-1/set/install", b"yes"),
    ):
        with pytest.raises(ha.CommandError):
            ha.parse_command(topic, payload)
    assert ha.checked_setpoint(22.46, (5.0, 30.0)) == 22.5
    for absurd in (4.9, 30.01, -273.15, 1e9):
        with pytest.raises(ha.CommandError, match="outside 5-30"):
            ha.checked_setpoint(absurd, (5.0, 30.0))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["pbha", "set", "th-1", "setpoint", "mode", "install", "+", "#", "", "x" * 40]),
        max_size=6,
    ),
    st.binary(max_size=80) | st.sampled_from([b"22", b"1e400", b"-0", b"heat", b"install", b"NaN"]),
)
def test_any_topic_and_payload_is_a_checked_command_or_refused(parts: list[str], payload: bytes) -> None:
    topic = "/".join(parts)
    try:
        cmd = ha.parse_command(topic, payload)
    except ha.CommandError:
        return
    assert topic == ha.command_topic(cmd.dev, cmd.command) and cmd.command in ha.COMMANDS
    if cmd.command == "setpoint":
        assert isinstance(cmd.value, float) and math.isfinite(cmd.value)
    else:
        assert cmd.value in (*ha.HVAC_MODES, ha.INSTALL)


def test_no_device_may_take_the_name_of_home_assistant_s_account(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with pytest.raises(ConfigError, match="reserved"):
        provision_into(tmp_path / "d", "thermostat", HA_USER, mosquitto.url, password="x" * 12)


# ---- Home Assistant's broker account -------------------------------------------------


def _all(client: TestClient) -> list[tuple[str, bytes, bool]]:
    """What a client receives until the broker has been quiet for a while."""
    got: list[tuple[str, bytes, bool]] = []
    while batch := client.messages(0.5):
        got += batch
    return got


def test_the_home_assistant_account_reads_the_bridge_and_writes_only_its_commands(
    own_mosquitto: Mosquitto,
) -> None:
    password = secrets.token_urlsafe(12)
    own_mosquitto.add_user(HA_USER, password)
    own_mosquitto.add_user("th-1", "device-pass")
    gw = TestClient(own_mosquitto, *own_mosquitto.operator())  # the gateway's rights
    device = TestClient(own_mosquitto, "th-1", "device-pass")
    hass = TestClient(own_mosquitto, HA_USER, password)
    try:
        gw.subscribe("#")
        device.subscribe("pb/th-1/cmd")
        hass.subscribe("#")
        # what Home Assistant may read: the discovery configs and the bridge, nothing of pb/
        device.publish("pb/th-1/telemetry", b'{"v":1}')
        gw.publish("pb/th-1/cmd", b'{"v":1,"id":"x","op":"ping"}')
        gw.publish("homeassistant/sensor/pb_th-1/temperature/config", b"{}")
        gw.publish("pbha/th-1/temperature", b"20.5")
        seen = {t for t, _, _ in _all(hass)}
        assert seen == {"homeassistant/sensor/pb_th-1/temperature/config", "pbha/th-1/temperature"}
        assert [t for t, _, _ in _all(device)] == ["pb/th-1/cmd"]  # (the gateway's does arrive)
        _all(gw)
        # what it may write: the bridge's commands, and nothing else
        cmd = b'{"v":1,"id":"ha00000000000001","op":"config.set","args":{"feature":"thermostat"}}'
        for topic in (
            "pb/th-1/cmd",
            "pb/homeassistant/hello",  # (the device patterns would give it this, but for its deny)
            "pb/homeassistant/telemetry",
            "homeassistant/sensor/pb_th-1/temperature/config",
            "pbha/th-1/temperature",
            "pbha/th-1/set/setpoint/deeper",
            "pbha/th-1/set/setpoint",
        ):
            hass.publish(topic, cmd)
        got = [t for t, _, _ in _all(gw)]
        assert got == ["pbha/th-1/set/setpoint"]
        assert _all(device) == []
    finally:
        for c in (gw, device, hass):
            c.close()


# ---- the bridge in a gateway ---------------------------------------------------------


class Thermostat:
    """A thermostat as the bridge sees it, played over the broker: its hello,
    its telemetry, and its answers to config.set; every command it gets is kept."""

    def __init__(self, broker: Mosquitto, dev: str) -> None:
        self.id = dev
        broker.add_user(dev, "device-pass")
        self.client = TestClient(broker, dev, "device-pass")
        self.client.subscribe(f"pb/{dev}/cmd")
        self.commands: list[dict[str, Any]] = []
        self.config = {"setpoint": 21.0, "hysteresis": 0.3, "mode": "heat", "schedule": []}

    def hello(self, streams: dict[str, str] | None = None) -> None:
        self.client.publish(f"pb/{self.id}/hello", self.hello_message(streams), retain=True)
        self.client.publish(f"pb/{self.id}/state", json.dumps({"v": 1, "dev": self.id, "state": "online"}))

    def hello_message(self, streams: dict[str, str] | None = None) -> str:
        msg = {
            "v": 1,
            "dev": self.id,
            "model": "thermostat",
            "board": "thermostat-v1",
            "runtime": "0.2.0",
            "api": 1,
            "features": THERMOSTAT,
            "caps": CAPS,
            "heap_free": 50000,
            "reset_cause": "power_on",
            "boot_count": 1,
            "keepalive": 30,
            "telemetry_s": 10,
            "streams": streams or {},
        }
        return json.dumps(msg)

    def close(self) -> None:
        """Gone, leaving no retained message for the gateways of later tests."""
        for kind in ("hello", "state"):
            self.client.publish(f"pb/{self.id}/{kind}", b"", retain=True)
        self.client.close()

    def telemetry(self, seq: int) -> None:
        msg = {
            "v": 1,
            "dev": self.id,
            "seq": seq,
            "ts": time.time(),
            "sensors": {"temperature": 20.5, "humidity": 44.0},
            "actuators": {"relay": True},
            "features": {
                "thermostat": {"setpoint": self.config["setpoint"], "heating": True, "mode": "heat"}
            },
        }
        self.client.publish(f"pb/{self.id}/telemetry", json.dumps(msg))

    def serve(self, seconds: float) -> list[dict[str, Any]]:
        """Answer the commands that come within seconds; those taken."""
        taken = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                _, payload, _ = self.client.received.get(timeout=left)
            except queue.Empty:
                break
            cmd = json.loads(payload)
            taken.append(cmd)
            self.commands.append(cmd)
            if cmd["op"] == "config.set":
                self.config |= cmd["args"]["values"]
            result = {"thermostat": dict(self.config)}
            reply = {"v": 1, "dev": self.id, "id": cmd["id"], "ok": True, "result": result}
            self.client.publish(f"pb/{self.id}/reply", json.dumps(reply))
        return taken


@dataclass
class Bridge:
    r: Running
    session: aiohttp.ClientSession
    tokens: dict[str, str]
    mosquitto: Mosquitto
    devices: list[Thermostat]

    async def call(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        async with self.session.request(method, self.r.url + path, headers=headers, json=body) as resp:
            return resp.status, await resp.json()

    async def link(self, who: str, dev: str, linked: bool = True) -> tuple[int, Any]:
        return await self.call(who, "PUT", f"/api/v1/devices/{dev}/homeassistant", {"linked": linked})

    def claim(self, who: str, dev: str) -> None:
        accounts, code = Accounts(self.r.store), new_claim_code()
        accounts.register_claim(dev, code, time.time())
        account = accounts.get(who)
        assert account is not None
        accounts.claim(account, code, time.time())

    async def device(self, owner: str) -> Thermostat:
        d = Thermostat(self.mosquitto, unique_id("th"))
        self.devices.append(d)
        d.hello()
        await async_wait_for(lambda: self.r.gw.is_online(d.id), 10, what=f"{d.id} online")
        self.claim(owner, d.id)
        return d

    def retained(self, *filters: str) -> dict[str, bytes]:
        """What the broker retains on these topics, as a new subscriber gets it."""
        c = TestClient(self.mosquitto, *self.mosquitto.operator())
        try:
            for f in filters:
                c.subscribe(f)
            return {t: p for t, p, retain in _all(c) if retain}
        finally:
            c.close()


@pytest.fixture
async def bridge(start_gateway: StartGateway, mosquitto: Mosquitto) -> AsyncIterator[Bridge]:
    r = await start_gateway()
    accounts = Accounts(r.store)
    tokens = {n: accounts.issue_token(accounts.create(n, role, None, 1.0), "t", 1.0) for n, role in
              (("ann", "owner"), ("bob", "owner"), ("mia", "maker"))}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        b = Bridge(r, session, tokens, mosquitto, [])
        yield b
    for d in b.devices:
        d.close()


@pytest.mark.long
async def test_linking_publishes_retained_configs_and_values_and_unlinking_clears_them(
    bridge: Bridge,
) -> None:
    th = await bridge.device("ann")
    # another owner is told there is no such device; a maker may not link it; a body must say linked
    for who, want in (("bob", (404, "unknown_device")), ("mia", (403, "forbidden"))):
        status, answer = await bridge.link(who, th.id)
        assert (status, answer["error"]["code"]) == want, who
    for body in ({}, {"linked": "yes"}, {"linked": True, "more": 1}, [True]):
        status, answer = await bridge.call("ann", "PUT", f"/api/v1/devices/{th.id}/homeassistant", body)
        assert (status, answer["error"]["code"]) == (400, "bad_request"), body
    status, link = await bridge.call("ann", "GET", f"/api/v1/devices/{th.id}/homeassistant")
    assert status == 200 and link["linked"] is False and link["since"] is None
    assert bridge.retained(f"homeassistant/+/pb_{th.id}/+/config") == {}

    status, link = await bridge.link("ann", th.id)
    assert status == 200 and link["linked"] is True and link["since"] > 0
    assert [e["key"] for e in link["entities"]] == ["temperature", "humidity", "thermostat", "firmware"]
    topics = {e.config_topic(th.id) for e in ha.ENTITIES["thermostat"]}
    configs = await async_wait_for(
        lambda: (
            (got := bridge.retained(f"homeassistant/+/pb_{th.id}/+/config")) and set(got) == topics and got
        ),
        10,
        what="the configs retained",
    )
    climate = json.loads(configs[ha.CLIMATE.config_topic(th.id)])
    assert (
        climate["unique_id"] == f"permabeta_{th.id}_thermostat" and climate["device"]["sw_version"] == "0.2.0"
    )
    update = json.loads(bridge.retained(f"pbha/{th.id}/update")[f"pbha/{th.id}/update"])
    assert update == {"installed_version": "factory", "latest_version": "factory"}
    th.telemetry(1)
    values = await async_wait_for(
        lambda: (got := bridge.retained(f"pbha/{th.id}/+")) and f"pbha/{th.id}/temperature" in got and got,
        10,
        what="the values retained",
    )
    assert values[f"pbha/{th.id}/temperature"] == b"20.5" and values[f"pbha/{th.id}/action"] == b"heating"
    assert values[f"pbha/{th.id}/availability"] == b"online"

    # the owner keeps the humidity back: its entity and value go, the others stay
    th.hello({"sensors.humidity": "local"})
    gone = ha.HUMIDITY.config_topic(th.id)
    await async_wait_for(lambda: gone not in bridge.retained(gone), 10, what="the humidity entity removed")
    assert f"pbha/{th.id}/humidity" not in bridge.retained(f"pbha/{th.id}/+")
    assert ha.CLIMATE.config_topic(th.id) in bridge.retained(f"homeassistant/+/pb_{th.id}/+/config")

    status, link = await bridge.link("ann", th.id, False)
    assert status == 200 and link["linked"] is False
    assert bridge.retained(f"homeassistant/+/pb_{th.id}/+/config", f"pbha/{th.id}/#") == {}
    assert bridge.r.gw.homeassistant.stats["published"] > 0


async def test_giving_a_device_up_or_forgetting_it_unlinks_it_and_clears_its_topics(bridge: Bridge) -> None:
    given, forgotten = await bridge.device("ann"), await bridge.device("ann")
    for th in (given, forgotten):
        assert (await bridge.link("ann", th.id))[0] == 200
        await async_wait_for(
            lambda t=th: bridge.retained(f"homeassistant/+/pb_{t.id}/+/config"), 10, what="linked"
        )
    status, _ = await bridge.call("ann", "DELETE", f"/api/v1/devices/{given.id}/owner")
    assert status == 200
    assert bridge.r.gw.homeassistant.links.get(given.id) is None
    assert bridge.retained(f"homeassistant/+/pb_{given.id}/+/config", f"pbha/{given.id}/#") == {}
    # the next owner finds it unlinked, and links it anew
    bridge.claim("bob", given.id)
    status, link = await bridge.call("bob", "GET", f"/api/v1/devices/{given.id}/homeassistant")
    assert status == 200 and link["linked"] is False
    status, answer = await bridge.call(
        "ann", "POST", f"/api/v1/devices/{forgotten.id}/forget", {"confirm": forgotten.id}
    )
    assert status == 200 and answer["retained_cleared"] is True and answer["removed"]["ha_links"] == 1
    assert bridge.retained(f"homeassistant/+/pb_{forgotten.id}/+/config", f"pbha/{forgotten.id}/#") == {}


async def test_an_unlink_holds_up_no_other_device_and_a_link_again_comes_after_its_clears(
    bridge: Bridge,
) -> None:
    """The values of a device unlinked are cleared CLEAR_GAP_S after its
    configs, beside the bridge's queue: another owner's device is not held
    up meanwhile (an owner unlinking in a loop would hold up every device),
    and the unlinked device linked again in the gap is shown after its
    values are cleared (not cleared after it is shown)."""
    a, b = await bridge.device("ann"), await bridge.device("bob")
    for who, th in (("ann", a), ("bob", b)):
        assert (await bridge.link(who, th.id))[0] == 200
    await async_wait_for(
        lambda: all(bridge.retained(f"homeassistant/+/pb_{t.id}/+/config") for t in (a, b)), 10, what="linked"
    )
    a.telemetry(1)
    await async_wait_for(lambda: bridge.retained(f"pbha/{a.id}/temperature"), 10, what="a's value retained")
    watch = TestClient(bridge.mosquitto, *bridge.mosquitto.operator())
    try:
        for f in (f"pbha/{a.id}/+", f"pbha/{b.id}/+", f"homeassistant/+/pb_{a.id}/+/config"):
            watch.subscribe(f)
        await asyncio.to_thread(_all, watch)  # (what is retained now)
        unlink = asyncio.create_task(bridge.link("ann", a.id, False))
        first = await asyncio.to_thread(watch.received.get, True, 10)
        assert first[0].endswith("/config") and first[1] == b"", first
        b.telemetry(1)
        assert (await bridge.link("ann", a.id))[0] == 200  # again, within the gap
        assert (await unlink)[0] == 200  # (it says linked: it is, again, when the answer is made)
        got = [first, *await asyncio.to_thread(_all, watch)]
    finally:
        watch.close()
    topics = [t for t, p, _ in got]
    b_value = topics.index(f"pbha/{b.id}/temperature")
    a_values = [i for i, (t, p, _) in enumerate(got) if t.startswith(f"pbha/{a.id}/") and p == b""]
    shown_again = [i for i, (t, p, _) in enumerate(got) if t.endswith("/config") and p]
    assert a_values and b_value < a_values[0], topics
    assert shown_again and shown_again[0] > a_values[-1], topics
    await async_wait_for(
        lambda: bridge.retained(f"homeassistant/+/pb_{a.id}/+/config"), 10, what="a shown again"
    )


def _let_through(t0: float) -> float:
    """The most link changes of one owner let through since t0 (from a full bucket)."""
    return ha_bridge.LINK_BURST + (time.monotonic() - t0) / ha_bridge.LINK_EVERY_S


async def test_an_owner_unlinking_in_a_flood_fills_nothing_and_another_owner_unlinks_and_gives_up(
    bridge: Bridge,
) -> None:
    """An unlink of a device being cleared adds nothing to the bridge's queue
    but a mark: before, each put the device's config clears in it again,
    1,200 at once filled it (2,000), another owner's unlink was answered 503
    and a device given up meanwhile stayed shown in Home Assistant for good."""
    ann, bob, gone = [await bridge.device(o) for o in ("ann", "bob", "bob")]
    for who, th in (("ann", ann), ("bob", bob), ("bob", gone)):
        assert (await bridge.link(who, th.id))[0] == 200
    await async_wait_for(
        lambda: all(bridge.retained(f"homeassistant/+/pb_{t.id}/+/config") for t in (ann, bob, gone)),
        10,
        what="linked",
    )
    hab, peak = bridge.r.gw.homeassistant, [0]

    def watch() -> None:
        peak[0] = max(peak[0], hab._out.qsize())
        asyncio.get_running_loop().call_later(0.005, watch)

    watch()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        url = f"{bridge.r.url}/api/v1/devices/{ann.id}/homeassistant"
        headers = {"Authorization": f"Bearer {bridge.tokens['ann']}"}

        async def unlink() -> int:
            async with s.put(url, headers=headers, json={"linked": False}) as resp:
                return resp.status

        t0 = time.monotonic()
        flood = [asyncio.create_task(unlink()) for _ in range(600)]
        await asyncio.sleep(0.2)
        assert (await bridge.link("bob", bob.id, False))[0] == 200
        assert (await bridge.call("bob", "DELETE", f"/api/v1/devices/{gone.id}/owner"))[0] == 200
        answers = await asyncio.gather(*flood)
    # (the first LINK_BURST are unlinks of the device being cleared; the rest are refused)
    assert set(answers) == {200, 429} and ha_bridge.LINK_BURST <= answers.count(200) <= _let_through(t0), (
        answers
    )
    assert peak[0] < 100, peak  # (the clears of three devices, the values)
    for th in (ann, bob, gone):
        assert bridge.retained(f"homeassistant/+/pb_{th.id}/+/config", f"pbha/{th.id}/#") == {}, th.id


async def test_an_owner_changing_links_in_a_loop_is_refused_past_the_burst_and_holds_up_no_other_owner(
    bridge: Bridge,
) -> None:
    """Each link change puts about 13 publishes in the bridge's one queue:
    an owner's many devices linked and unlinked in a loop filled it, and
    other owners' values were dropped (till the next refresh). An owner's
    changes go LINK_BURST at once, then one each LINK_EVERY_S; past that,
    429 with when to try again, and nothing of theirs is queued."""
    anns = [await bridge.device("ann") for _ in range(3)]
    bob = await bridge.device("bob")
    hab = bridge.r.gw.homeassistant
    answers: list[tuple[int, str | None]] = []

    async def change(dev: str, linked: bool) -> None:
        headers = {"Authorization": f"Bearer {bridge.tokens['ann']}"}
        url = f"{bridge.r.url}/api/v1/devices/{dev}/homeassistant"
        async with bridge.session.put(url, headers=headers, json={"linked": linked}) as resp:
            body = await resp.json()
            answers.append((resp.status, resp.headers.get("Retry-After")))
            if resp.status == 429:
                assert body["error"]["code"] == "rate_limited" and "try again in" in body["error"]["message"]

    published = hab.stats["published"]
    t0 = time.monotonic()
    await asyncio.gather(*(change(t.id, i % 2 == 0) for i in range(200) for t in anns))
    ok = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 429]
    assert ha_bridge.LINK_BURST <= len(ok) <= _let_through(t0) and len(ok) + len(refused) == 600, answers
    assert {int(r[1] or 0) for r in refused} <= {1, 2}, refused  # (Retry-After: seconds, whole)
    # another owner is not held up: his link's configs and his value go at once
    assert (await bridge.link("bob", bob.id))[0] == 200
    bob.telemetry(1)
    await async_wait_for(lambda: bridge.retained(f"pbha/{bob.id}/temperature"), 5, what="bob's value")
    # (at most a show or a clear of each change let through, and bob's)
    assert hab.stats["published"] - published < 20 * (len(ok) + 2), hab.stats
    assert hab.stats["dropped"] == 0, hab.stats
    # ann may change a link again once the time it was told has passed
    await asyncio.sleep(int(refused[-1][1] or 2))
    assert (await bridge.link("ann", anns[0].id))[0] == 200


async def test_a_linked_device_flooding_hellos_and_telemetry_loses_no_other_owner_s_value(
    bridge: Bridge,
) -> None:
    """With one device's credentials: hellos that change its entities each
    time (a stream kept back, then shared) and telemetry of a new value each
    time, as fast as it can. Each put its topics in the bridge's one queue
    again: 3,000 hellos filled it, and another owner's value, dropped, was
    gone until his next telemetry. A topic now waits in the queue once."""
    rogue, bob = await bridge.device("ann"), await bridge.device("bob")
    for who, th in (("ann", rogue), ("bob", bob)):
        assert (await bridge.link(who, th.id))[0] == 200
    hab = bridge.r.gw.homeassistant
    await async_wait_for(
        lambda: hab._out.qsize() == 0 and bridge.retained(f"homeassistant/+/pb_{bob.id}/+/config"),
        10,
        what="shown",
    )
    peak = [0]

    def watch() -> None:
        peak[0] = max(peak[0], hab._out.qsize())
        asyncio.get_running_loop().call_later(0.002, watch)

    watch()
    dropped = hab.stats["dropped"]
    kept_back = {"sensors.temperature": "local", "features.thermostat.setpoint": "off"}

    def flood() -> None:
        base = json.loads(rogue.hello_message())
        for i in range(3000):
            hello = base | {"runtime": f"0.2.{i % 2}", "streams": {} if i % 2 else kept_back}
            rogue.client.publish(f"pb/{rogue.id}/hello", json.dumps(hello), qos=0)
            msg = {
                "v": 1,
                "dev": rogue.id,
                "seq": i + 1,
                "ts": time.time(),
                "sensors": {"temperature": i / 10},
                "actuators": {},
                "features": {},
            }
            rogue.client.publish(f"pb/{rogue.id}/telemetry", json.dumps(msg), qos=0)
            if i == 1500:
                bob.telemetry(7)  # another owner's value, in the middle of it

    await asyncio.to_thread(flood)
    # the gateway takes the flood at its store's pace (PostgreSQL's slower): until it settles
    gw, taken = bridge.r.gw, [-1]

    def settled() -> bool:
        n, taken[0] = taken[0], gw.counters["accepted"] + gw.counters["rejected"]
        return n == taken[0] and hab._out.qsize() == 0

    await async_wait_for(settled, 120, interval=1.0, what="the flood taken")
    await async_wait_for(lambda: bridge.retained(f"pbha/{bob.id}/temperature"), 10, what="bob's value")
    assert hab.stats["dropped"] == dropped, hab.stats
    assert peak[0] < 100, peak  # (each of the rogue's topics once, bob's)
    # what stays shown of the rogue is what it said last: streams shared, its last value
    assert bridge.retained(f"pbha/{rogue.id}/temperature") == {f"pbha/{rogue.id}/temperature": b"299.9"}


@pytest.mark.parametrize("burst,every", [(3, 2.0), (30, 0.5)])
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.floats(0, 5, allow_nan=False)), min_size=1, max_size=120))
def test_an_owner_s_link_changes_keep_within_the_burst_and_the_rate(
    burst: int, every: float, steps: list[tuple[int, float]]
) -> None:
    """Over any run of changes by any owners at any gaps: each owner is let
    through at most `burst` plus one each `every` seconds since its first
    change, a refused change is told a wait within (0, every], and an owner
    quiet for burst times `every` may make `burst` changes at once."""
    changes, now = ha_bridge.LinkChanges(burst, every), 0.0
    granted: dict[int, list[float]] = {}
    for account, gap in steps:
        now += gap
        wait = changes.wait(account, now)
        if wait == 0:
            granted.setdefault(account, []).append(now)
        else:
            assert 0 < wait <= every + 1e-9
    for times in granted.values():
        for i, t0 in enumerate(times):
            for j in range(i, len(times)):
                assert j - i + 1 <= burst + (times[j] - t0) / every + 1e-6
    now += burst * every
    assert all(changes.wait(1, now) == 0 for _ in range(burst)) and changes.wait(1, now) > 0


@pytest.mark.long
async def test_hostile_bridge_commands_stop_nothing_and_reach_no_device(bridge: Bridge) -> None:
    gw = bridge.r.gw
    linked, unlinked, bobs = (
        await bridge.device("ann"),
        await bridge.device("ann"),
        await bridge.device("bob"),
    )
    assert (await bridge.link("ann", linked.id))[0] == 200
    assert (await bridge.link("bob", bobs.id))[0] == 200
    # bob's link of his device, as if ann owned it now without its say having gone (a link of another owner)
    bridge.r.store.db.execute(
        "UPDATE device_owners SET account = (SELECT id FROM accounts WHERE name = 'ann') WHERE device = ?",
        (bobs.id,),
    )
    hostile = [
        (f"pbha/{unlinked.id}/set/setpoint", b"22"),  # not linked
        (f"pbha/{bobs.id}/set/mode", b"off"),  # linked by an owner who no longer owns it
        ("pbha/nobody-1/set/setpoint", b"22"),  # no such device
        (f"pbha/{linked.id}/set/setpoint", b"1e9"),  # absurd
        (f"pbha/{linked.id}/set/setpoint", b"-40"),
        (f"pbha/{linked.id}/set/setpoint", b"NaN"),
        (f"pbha/{linked.id}/set/setpoint", b"-inf"),
        (f"pbha/{linked.id}/set/setpoint", b"22" * 40),
        (f"pbha/{linked.id}/set/setpoint", b"\xc0\xaf"),
        (f"pbha/{linked.id}/set/mode", b"cool"),
        (f"pbha/{linked.id}/set/mode", b""),
        (f"pbha/{linked.id}/set/install", b"install"),  # nothing waits for it
        (f"pbha/{linked.id}/set/reboot", b"now"),
        (f"pbha/{linked.id}/set", b"22"),
        (f"pbha/{linked.id}/set/setpoint/x", b"22"),
        ("pbha/+/set/setpoint", b"22"),
    ]
    for topic, payload in hostile:
        gw.handle(topic, payload, False)
    gw.handle(f"pbha/{linked.id}/set/setpoint", b"22", True)  # retained: it would act at every connection
    # and through the broker, as Home Assistant's account
    password = secrets.token_urlsafe(12)
    bridge.mosquitto.add_user(HA_USER, password)
    hass = TestClient(bridge.mosquitto, HA_USER, password)
    try:
        for topic, payload in hostile[:6]:
            hass.publish(topic, payload)
        await async_wait_for(
            lambda: gw.homeassistant.stats["refused"] >= len(hostile) + 1 + 6,
            10,
            what="every command refused",
        )
        taken = await asyncio.gather(*(asyncio.to_thread(d.serve, 1.0) for d in (linked, unlinked, bobs)))
        assert taken == [[], [], []]
        assert gw.homeassistant.stats["commands"] == 0
        # the gateway goes on, and a good command does reach the device
        assert not bridge.r.task.done() and gw.connected.is_set()
        hass.publish(f"pbha/{linked.id}/set/setpoint", b"22.46")
        (cmd,) = await asyncio.to_thread(linked.serve, 3.0)
        assert (cmd["op"], cmd["args"]) == (
            "config.set",
            {"feature": "thermostat", "values": {"setpoint": 22.5}},
        )
        await async_wait_for(
            lambda: (
                bridge.retained(f"pbha/{linked.id}/setpoint").get(f"pbha/{linked.id}/setpoint") == b"22.5"
            ),
            10,
            what="the new setpoint shown",
        )
        assert gw.homeassistant.stats["commands"] == 1
    finally:
        hass.close()


async def test_the_owner_links_and_unlinks_from_the_command_line(bridge: Bridge, tmp_path: Path) -> None:
    accounts = Accounts(bridge.r.store)
    accounts.create("cleo", "owner", "cleo-password-1", 1.0)
    th = await bridge.device("cleo")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}

    async def cli(*words: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_cli, *words, stdin=stdin, env=env)

    done = await cli("login", bridge.r.url, "--name", "cleo", "--password-stdin", stdin="cleo-password-1\n")
    assert done.returncode == 0, done.stderr
    done = await cli("devices", "link-ha", th.id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{th.id}: linked to Home Assistant")
    assert "climate.thermostat" in done.stdout
    assert bridge.r.gw.homeassistant.links.valid(th.id) is not None
    done = await cli("devices", "unlink-ha", th.id, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["linked"] is False
    assert bridge.r.gw.homeassistant.links.get(th.id) is None
    # the gateway's own token (an admin's) is not the owner's
    done = await asyncio.to_thread(permabeta, bridge.r.store.where, "devices", "link-ha", th.id)
    assert done.returncode != 0 and "only the device's owner" in done.stderr
    assert bridge.r.gw.homeassistant.links.get(th.id) is None
