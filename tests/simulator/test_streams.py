"""The owners' data choices end to end (docs/protocol.md 12): virtual
thermostats and shirts running the firmware's own runtime on the session's
Mosquitto, a gateway with its API in this loop, two owners choosing per
device and stream. A client of its own, subscribed to the whole broker,
sees nothing a device's owner keeps back; the gateway stores none of it;
only the owner changes the choices; an update's new streams start local."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.settings import SettingsTable, changed
from ota.keys import Keys
from ota.release import build

from ..gateway.conftest import StartGateway, start_gateway  # noqa: F401 (the fixture, used here too)
from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import FEATURES, MakeDevice, Rig, copy_feature, rig  # noqa: F401 (the fixture)
from .test_owners_say import Owners, owners  # noqa: F401 (the fixture)


def carried(msg: dict[str, Any]) -> set[str]:
    """The streams a telemetry message (or a status reply's result) carries."""
    out = {f"sensors.{k}" for k in msg.get("sensors", {})} | {
        f"actuators.{k}" for k in msg.get("actuators", {})
    }
    for name, report in (msg.get("features") or {}).items():
        if isinstance(report, dict):
            out |= {f"features.{name}.{k}" for k in report}
    return out


async def _watch(mosquitto: Mosquitto, seconds: float) -> list[tuple[str, dict[str, Any], float]]:
    """Every message on the broker's device topics for a while, as another
    client of the broker sees them: (topic, message, when received)."""
    user, password = mosquitto.operator()
    got: list[tuple[str, dict[str, Any], float]] = []
    async with aiomqtt.Client(
        "127.0.0.1",
        mosquitto.port,
        identifier=f"watch-{secrets.token_hex(4)}",
        username=user,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:
        await client.subscribe("pb/#", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                async for m in client.messages:
                    try:
                        got.append((str(m.topic), json.loads(bytes(m.payload)), time.monotonic()))  # type: ignore[arg-type]
                    except ValueError:
                        pass  # (an update's chunks: not JSON)
    return got


@pytest.mark.long
async def test_nothing_an_owner_keeps_back_reaches_the_broker_or_the_store(
    owners: Owners,  # noqa: F811
    make_device: MakeDevice,
    mosquitto: Mosquitto,
) -> None:
    gw = owners.gw
    devices = [await make_device(m) for m in ("thermostat", "shirt") * 4]
    for i, dev in enumerate(devices):
        owners.claim("ann" if i % 2 else "bob", dev.id)
        await async_wait_for(lambda d=dev: gw.is_online(d.id), 10, what=f"{dev.id} online")
    rng = random.Random(7)
    withheld: dict[str, set[str]] = {}
    for i, dev in enumerate(devices):
        who = "ann" if i % 2 else "bob"
        status, shown = await owners.call(who, "GET", f"/api/v1/devices/{dev.id}/streams")
        assert status == 200, shown
        choosable = [s for s in shown["streams"] if not s["needed"]]
        assert all(s["doc"] and s["sensitivity"] in ("low", "personal", "sensitive") for s in choosable)
        asked = {}
        for s in rng.sample(choosable, k=rng.randint(1, len(choosable) - 1)):
            asked[s["path"]] = rng.choice(["local", "off"] if s["kind"] != "actuator" else ["local", "share"])
        status, after = await owners.call(who, "PUT", f"/api/v1/devices/{dev.id}/streams", {"streams": asked})
        assert status == 200, after
        defaults_local = {s["path"] for s in choosable if s["default"] == "local" and s["path"] not in asked}
        withheld[dev.id] = {p for p, c in asked.items() if c != "share"} | defaults_local
        assert {s["path"] for s in after["streams"] if s["choice"] != "share"} == withheld[dev.id]
    chosen = time.time()
    seen = await _watch(mosquitto, 4.0)
    telemetry = [(t.split("/")[1], m) for t, m, _ in seen if t.endswith("/telemetry")]
    assert len({d for d, _ in telemetry}) == len(devices)  # every device spoke meanwhile
    leaks = [(d, carried(m) & withheld[d]) for d, m in telemetry if carried(m) & withheld[d]]
    assert not leaks
    shared = set().union(*(carried(m) for _, m in telemetry))
    assert {"sensors.humidity", "sensors.temperature", "actuators.relay"} & shared  # not a silent fleet
    # a status reply leaves out the same
    for dev in devices:
        reply = await gw.send_command(dev.id, "status")
        assert not carried(reply["result"]) & withheld[dev.id]
    # and what the gateway stored since says nothing of them
    for dev in devices:
        rows = [r for r in gw.store.telemetry(dev.id, 500) if r.received > chosen]
        assert rows and not any(carried(r.data) & withheld[dev.id] for r in rows)


async def _online(home: Owners, make_device: MakeDevice) -> Any:
    dev = await make_device("thermostat")
    await async_wait_for(lambda: home.gw.is_online(dev.id), 10, what="online")
    return dev


async def test_only_the_owner_changes_the_choices_and_bad_ones_change_nothing(
    owners: Owners,  # noqa: F811
    make_device: MakeDevice,
) -> None:
    gw, dev = owners.gw, await _online(owners, make_device)
    path = f"/api/v1/devices/{dev.id}/streams"
    # nobody has claimed it: its maker sets it up
    status, _ = await owners.call("mia", "PUT", path, {"streams": {"sensors.humidity": "local"}})
    assert status == 200
    owners.claim("ann", dev.id)
    for who, body, code in (
        ("mia", {"streams": {"sensors.humidity": "share"}}, "forbidden"),
        ("bob", {"streams": {"sensors.humidity": "share"}}, "unknown_device"),
        ("ann", {"streams": {"sensors.pressure": "local"}}, "bad_choice"),
        ("ann", {"streams": {"hello": "local"}}, "bad_choice"),
        ("ann", {"streams": {"actuators.relay": "off"}}, "bad_choice"),
        ("ann", {"streams": {"sensors.temperature": "secret"}}, "bad_choice"),
        ("ann", {"streams": {}}, "bad_choice"),
        ("ann", {"choices": {}}, "bad_request"),
        ("ann", ["sensors.humidity"], "bad_request"),
    ):
        status, answer = await owners.call(who, "PUT", path, body)
        assert answer["error"]["code"] == code, (who, body, answer)
    # nor around the route: a command is refused whoever sends it
    for who in ("mia", "ann"):
        status, answer = await owners.call(
            who,
            "POST",
            f"/api/v1/devices/{dev.id}/commands",
            {"op": "streams.set", "args": {"streams": {"sensors.humidity": "share"}}},
        )
        assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, shown = await owners.call("ann", "GET", path)
    choice = {s["path"]: s for s in shown["streams"]}
    assert choice["sensors.humidity"]["choice"] == "local"
    assert choice["sensors.temperature"]["choice"] == "share"
    # what keeping the room's temperature back would cost
    costs = choice["sensors.temperature"]["costs"]
    assert any("twin preview" in c for c in costs["local"])
    assert any("thermostat.setpoint_error" in c for c in costs["local"])
    assert any("thermostat cannot work" in c for c in costs["off"])
    status, shown = await owners.call("ann", "PUT", path, {"streams": {"sensors.humidity": "share"}})
    assert status == 200 and {s["path"]: s["choice"] for s in shown["streams"]}["sensors.humidity"] == "share"
    dev.stop()
    await async_wait_for(lambda: not gw.is_online(dev.id), 10, what="offline")
    status, answer = await owners.call("ann", "PUT", path, {"streams": {"sensors.humidity": "local"}})
    assert (status, answer["error"]["code"]) == (409, "offline")


async def test_the_choices_outlive_an_update_whose_new_streams_start_local(
    rig: Rig,  # noqa: F811
    make_device: MakeDevice,
    eco_release: Path,
) -> None:
    dev = await make_device("thermostat")
    await async_wait_for(lambda: rig.gw.is_online(dev.id), 10, what="online")
    reply = await rig.gw.send_command(dev.id, "streams.set", {"streams": {"sensors.humidity": "off"}})
    assert reply["ok"], reply
    u = await rig.update(dev, rig.publish(eco_release))
    assert u.state == "committed", u
    d = rig.gw.store.device(dev.id)
    assert d is not None and set(d.features) == {"thermostat", "eco"}
    new = {"features.eco.boost", "features.eco.price", "features.eco.cheap"}
    kept = {"sensors.humidity": "off"}
    assert d.hello["streams"] == kept | dict.fromkeys(new, "local")
    reply = await rig.gw.send_command(dev.id, "streams.get")
    assert reply["result"]["streams"]["sensors.humidity"] == "off"


async def test_a_new_operational_stream_is_shared_only_where_the_owner_takes_updates_as_they_come(
    rig: Rig,  # noqa: F811
    make_device: MakeDevice,
    keys: Keys,
    tmp_path: Path,
) -> None:
    eco = copy_feature("eco", tmp_path / "src")
    manifest = json.loads((eco / "manifest.json").read_text())
    manifest["streams"]["boost"]["operational"] = True
    (eco / "manifest.json").write_text(json.dumps(manifest))
    release = build("thermostat", [FEATURES / "thermostat", eco], "2.1.0", tmp_path / "r", 2, keys=keys)
    stored = rig.publish(release.path)
    auto, asks = await make_device("thermostat"), await make_device("thermostat")
    table = SettingsTable(rig.gw.store)
    table.save(changed(table.get(asks.id), policy="ask"), time.time())
    for dev in (auto, asks):
        u = await rig.update(dev, stored)
        assert u.state == "committed", u
    await async_wait_for(lambda: rig.gw.new_streams.shared == 1, 10, what="the new operational stream shared")
    held = {d.id: rig.gw.store.device(d.id).hello["streams"] for d in (auto, asks)}  # type: ignore[union-attr]
    kept = ("features.eco.price", "features.eco.cheap")
    assert held[auto.id] == dict.fromkeys(kept, "local")
    assert held[asks.id] == dict.fromkeys(
        ("features.eco.boost", "features.eco.price", "features.eco.cheap"), "local"
    )


async def test_the_gateway_keeps_what_a_device_shares_as_long_as_its_owner_says(
    owners: Owners,  # noqa: F811
    make_device: MakeDevice,
) -> None:
    gw, dev = owners.gw, await _online(owners, make_device)
    owners.claim("ann", dev.id)
    path = f"/api/v1/devices/{dev.id}/streams"
    for body in (
        {"retention_days": 0},
        {"retention_days": -1},
        {"retention_days": "30"},
        {"retention_days": True},
    ):
        status, answer = await owners.call("ann", "PUT", path, body)
        assert (status, answer["error"]["code"]) == (422, "bad_retention"), body
    status, answer = await owners.call("mia", "PUT", path, {"retention_days": 1})
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, answer = await owners.call("ann", "PUT", path, {"retention_days": 1})
    assert status == 200 and answer["retention_days"] == 1
    await async_wait_for(lambda: len(gw.store.telemetry(dev.id, 10)) >= 2, 10, what="telemetry stored")
    kept = len(gw.store.telemetry(dev.id, 10000))
    # a day and a minute later, the job deletes all that was shared a day ago, and only that
    assert gw.store.expire_shared(time.time() + 86460) >= kept
    assert not [r for r in gw.store.telemetry(dev.id, 10000) if r.received < time.time() - 30]
    status, answer = await owners.call("ann", "PUT", path, {"retention_days": None})
    assert status == 200 and answer["retention_days"] is None
    assert gw.store.expire_shared(time.time() + 10 * 86400) == 0  # no limit: nothing goes
    # the period is the owner's say: it goes with the device when the owner gives it up
    await owners.call("ann", "PUT", path, {"retention_days": 7})
    status, _ = await owners.call("ann", "DELETE", f"/api/v1/devices/{dev.id}/owner")
    assert status == 200 and gw.store.retention(dev.id) is None
