"""The Home Assistant bridge against a real Home Assistant (docs/protocol.md
14): virtual thermostats and shirts on the project's Mosquitto, a gateway
with its API in this loop, Home Assistant's MQTT integration on its own
broker account. The owner links the devices; Home Assistant registers
their entities and shows live values; its climate and update services
change the device and record the owner's yes; a stream kept back loses its
entity; an unlink removes them all; Home Assistant's account cannot reach a
device; and its log holds no error of MQTT or discovery."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import HA_USER
from gateway.decisions import DecisionTable
from ota.keys import Keys
from ota.release import build

from ..simulator.conftest import FEATURES, MakeDevice
from ..simulator.test_owners_say import Owners
from ..support.mosquitto import Mosquitto
from ..support.mqtt import TestClient
from ..support.wait import async_wait_for
from .hass import HomeAssistant

pytestmark = pytest.mark.homeassistant


async def _config(owners: Owners, dev: str) -> dict[str, Any]:
    """The thermostat's settings as the device itself answers them."""
    reply = await owners.gw.send_command(dev, "config.get", {"feature": "thermostat"})
    assert reply["ok"], reply
    return dict(reply["result"]["thermostat"])


async def _entities(hass: HomeAssistant, dev: str) -> dict[str, str]:
    """The device's entities in Home Assistant's registry: key -> entity id."""
    prefix = f"permabeta_{dev}_"
    return {
        e["unique_id"].removeprefix(prefix): e["entity_id"]
        for e in await hass.registry()
        if e["platform"] == "mqtt" and str(e["unique_id"]).startswith(prefix)
    }


def _number(state: dict[str, Any] | None) -> float | None:
    try:
        return float(state["state"]) if state is not None else None
    except ValueError:
        return None


async def test_linked_devices_live_in_home_assistant_and_leave_it_when_unlinked(
    hass: HomeAssistant,
    owners: Owners,
    make_device: MakeDevice,
    mosquitto: Mosquitto,
    keys: Keys,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    gw = owners.gw
    eco = build(
        "thermostat", [FEATURES / "thermostat", FEATURES / "eco"], "2.0.0", tmp_path / "r2", 2, keys=keys
    )
    two, _ = gw.ota.releases.add(eco.path, time.time())
    th, shirt = await make_device("thermostat"), await make_device("shirt")
    for dev in (th, shirt):
        owners.claim("ann", dev.id)
        await async_wait_for(lambda d=dev: gw.is_online(d.id), 10, what=f"{dev.id} online")
    status, _ = await owners.call("ann", "PATCH", f"/api/v1/devices/{th.id}/settings", {"policy": "ask"})
    assert status == 200

    # Home Assistant's own broker account, and its MQTT integration set up as a person does
    ha_password = secrets.token_urlsafe(12)
    mosquitto.add_user(HA_USER, ha_password)
    await hass.set_up_mqtt(mosquitto.port, HA_USER, ha_password)
    # (the log is where Home Assistant says a discovery config is bad: a bad one is seen there)
    control = TestClient(mosquitto, *mosquitto.operator())
    try:
        bad = b'{"name": "bad", "min_temp": "cold"}'
        control.publish("homeassistant/climate/pb_control/bad/config", bad, retain=True)
        await async_wait_for(lambda: [x for x in hass.bad_lines() if "pb_control" in x], 30, what="logged")
        control.publish("homeassistant/climate/pb_control/bad/config", b"", retain=True)
    finally:
        control.close()

    # only the owner links: another owner is told there is no such device, a maker may not
    for who, want in (("bob", (404, "unknown_device")), ("mia", (403, "forbidden"))):
        status, answer = await owners.call(
            who, "PUT", f"/api/v1/devices/{th.id}/homeassistant", {"linked": True}
        )
        assert (status, answer["error"]["code"]) == want, who
    for dev in (th, shirt):
        status, link = await owners.call(
            "ann", "PUT", f"/api/v1/devices/{dev.id}/homeassistant", {"linked": True}
        )
        assert status == 200 and link["linked"] is True, link

    # registered, with live values
    want = {th.id: {"temperature", "humidity", "thermostat", "firmware"}, shirt.id: {"vent", "firmware"}}
    ids: dict[str, dict[str, str]] = {}
    for dev, keys_wanted in want.items():
        ids[dev] = await async_wait_for(
            lambda d=dev, k=keys_wanted: _keys_are(_entities(hass, d), k),
            60,
            what=f"{dev}'s entities registered",
        )
    t, s = ids[th.id], ids[shirt.id]

    async def states_ready() -> dict[str, dict[str, Any]] | None:
        states = await hass.states()
        room, humid = _number(states.get(t["temperature"])), _number(states.get(t["humidity"]))
        climate, vent = states.get(t["thermostat"]), _number(states.get(s["vent"]))
        if room is None or humid is None or vent is None or climate is None:
            return None
        if climate["state"] != "heat" or climate["attributes"].get("current_temperature") is None:
            return None
        return states

    states = await async_wait_for(states_ready, 60, what="live values in Home Assistant")
    assert 0 < _number(states[t["temperature"]]) < 50  # type: ignore[operator]
    assert 0 <= _number(states[t["humidity"]]) <= 100  # type: ignore[operator]
    assert 0 <= _number(states[s["vent"]]) <= 100  # type: ignore[operator]
    assert states[t["temperature"]]["attributes"]["unit_of_measurement"] == "°C"
    climate = states[t["thermostat"]]["attributes"]
    assert climate["temperature"] == 21.0 and climate["min_temp"] == 5 and climate["max_temp"] == 30
    assert climate["hvac_modes"] == ["heat", "off"]
    for dev in (th, shirt):
        update = states[ids[dev.id]["firmware"]]
        assert update["state"] == "off" and update["attributes"]["installed_version"] == "factory"
    values_at = time.monotonic()

    # the owner's setpoint and mode from Home Assistant reach the device's config
    status, _ = await hass.service(
        "climate", "set_temperature", {"entity_id": t["thermostat"], "temperature": 23.5}
    )
    assert status == 200
    await async_wait_for(
        lambda: _has(_config(owners, th.id), setpoint=23.5), 20, what="the setpoint on the device"
    )
    status, _ = await hass.service(
        "climate", "set_hvac_mode", {"entity_id": t["thermostat"], "hvac_mode": "off"}
    )
    assert status == 200
    await async_wait_for(lambda: _has(_config(owners, th.id), mode="off"), 20, what="the mode on the device")

    async def climate_is(**attrs: Any) -> bool:
        c = (await hass.states())[t["thermostat"]]
        return c["state"] == attrs.pop("state", c["state"]) and all(
            c["attributes"].get(k) == v for k, v in attrs.items()
        )

    await async_wait_for(
        lambda: climate_is(state="off", temperature=23.5), 20, what="Home Assistant shows it"
    )

    # a release that waits for the owner's say shows as an update; install is the owner's yes
    roll = gw.rollouts.create("thermostat@2", f"id={th.id}", stages=(1.0,), no_revert=True, seed=1)

    async def update_is(state: str, latest: str) -> bool:
        u = (await hass.states())[t["firmware"]]
        return u["state"] == state and u["attributes"].get("latest_version") == latest

    await async_wait_for(lambda: update_is("on", "2.0.0"), 30, what="the waiting release shown")
    assert DecisionTable(gw.store).get(th.id, two.id) is None and gw.ota.active(th.id) is None
    status, _ = await hass.service("update", "install", {"entity_id": t["firmware"]})
    assert status == 200
    decision = await async_wait_for(
        lambda: DecisionTable(gw.store).get(th.id, two.id), 20, what="the owner's yes"
    )
    assert decision.decision == "now" and decision.until is None
    # the rollout offers it as its plan says, and the device installs it
    member = await async_wait_for(
        lambda: (m := gw.rollouts.table.member(roll.id, th.id)) is not None and m.update_id and m,
        20,
        what="offered",
    )
    await async_wait_for(lambda: gw.ota.get(member.update_id).state == "committed", 60, what="committed")
    await async_wait_for(lambda: update_is("off", "2.0.0"), 30, what="Home Assistant shows it installed")
    assert (await hass.states())[t["firmware"]]["attributes"]["installed_version"] == "2.0.0"

    # a stream the owner keeps back loses its entity
    body = {"streams": {"sensors.humidity": "local"}}
    status, answer = await owners.call("ann", "PUT", f"/api/v1/devices/{th.id}/streams", body)
    assert status == 200, answer
    await async_wait_for(
        lambda: _lacks(_entities(hass, th.id), "humidity"), 40, what="the humidity entity gone"
    )
    assert t["humidity"] not in await hass.states()

    # unlinked: the thermostat's entities go, the shirt's stay
    status, link = await owners.call(
        "ann", "PUT", f"/api/v1/devices/{th.id}/homeassistant", {"linked": False}
    )
    assert status == 200 and link["linked"] is False
    await async_wait_for(lambda: _none_of(_entities(hass, th.id)), 30, what="the thermostat's entities gone")
    states = await hass.states()
    assert not any(e in states for e in t.values()) and s["vent"] in states
    assert set(await _entities(hass, shirt.id)) == want[shirt.id]
    assert [line for line in hass.bad_lines() if "pb_control" not in line] == []
    linked_at = time.monotonic()
    await hass.stop()

    # nothing retained of the thermostat for Home Assistant any more
    watcher = TestClient(mosquitto, *mosquitto.operator())
    try:
        watcher.subscribe(f"homeassistant/+/pb_{th.id}/#")
        watcher.subscribe(f"pbha/{th.id}/#")
        assert [m for m in watcher.messages(1.0) if m[1]] == []
        watcher.subscribe(f"pb/{th.id}/cmd")
        watcher.subscribe(f"pbha/{shirt.id}/vent")
        # Home Assistant's account cannot command a device, nor the bridge for an unlinked one
        refused = gw.homeassistant.stats["refused"]
        ha = TestClient(mosquitto, HA_USER, ha_password)
        try:
            cmd = {"v": 1, "id": "ha0000000000cafe", "op": "config.set",
                   "args": {"feature": "thermostat", "values": {"setpoint": 29.5}}}  # fmt: skip
            ha.publish(f"pb/{th.id}/cmd", json.dumps(cmd))
            ha.publish(f"pbha/{th.id}/set/setpoint", "29.5")
            ha.publish(f"pbha/{th.id}/set/mode", "heat")
        finally:
            ha.close()
        await async_wait_for(lambda: gw.homeassistant.stats["refused"] >= refused + 2, 10, what="refused")
        assert [m for m in watcher.messages(1.5) if m[0] == f"pb/{th.id}/cmd"] == []
        config = await _config(owners, th.id)
        assert (config["setpoint"], config["mode"]) == (23.5, "off")
        # (what the gateway's own account sends there does arrive: the watcher would see it)
        gw_cmd = asyncio.ensure_future(owners.gw.send_command(th.id, "ping"))
        assert any(m[0] == f"pb/{th.id}/cmd" for m in await asyncio.to_thread(watcher.messages, 3.0))
        assert (await gw_cmd)["ok"]
    finally:
        watcher.close()
    print(
        f"\nHome Assistant test: values live {values_at - started:.1f}s after start, "
        f"linked part {linked_at - started:.1f}s, all {time.monotonic() - started:.1f}s"
    )


async def _keys_are(entities: Awaitable[dict[str, str]], keys: set[str]) -> dict[str, str] | None:
    got = await entities
    return got if set(got) == keys else None


async def _has(config: Awaitable[dict[str, Any]], **values: Any) -> bool:
    got = await config
    return all(got.get(k) == v for k, v in values.items())


async def _lacks(entities: Awaitable[dict[str, str]], key: str) -> bool:
    return key not in await entities


async def _none_of(entities: Awaitable[dict[str, str]]) -> bool:
    return not await entities
