"""Add-on hardware end to end (docs/protocol.md 13): virtual thermostats,
one with an outdoor probe plugged in, the gateway with keys and a release
that brings the weather feature. The gateway lists what each could gain;
the owner of the one with the probe asks for weather and it runs; the
release installs on the other too, where weather waits, and starts once a
probe is plugged in, and stops cleanly when it is pulled out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cli_gains import gains_lines
from ota.keys import Keys
from ota.release import build

from ..gateway.conftest import start_gateway  # noqa: F401 (the fixture, used here too)
from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import FEATURES, MakeDevice, Rig, unix_port_board
from .test_owners_say import Owners, owners  # noqa: F401 (the fixture, used here too)

PROBE = "outdoor temperature probe (outdoor_temperature)"


def features_of(o: Owners, dev: str) -> dict[str, Any]:
    d = o.gw.store.device(dev)
    return dict(d.features) if d is not None else {}


def events(o: Owners, dev: str) -> list[tuple[str, str | None, str | None]]:
    return [(e["kind"], e["feature"], e["message"]) for e in o.gw.store.events(dev, 50)]


async def test_an_outdoor_probe_lets_the_weather_feature_run(
    owners: Owners,  # noqa: F811
    make_device: MakeDevice,
    keys: Keys,
    tmp_path: Path,
) -> None:
    gw = owners.gw
    config = {"scan_ms": 400}  # (a look every other sample: 0.2 s)
    probed = await make_device(addons=["outdoor_temperature"], config=config)  # its owner is asked
    asks = await make_device(config=config)  # its owner is asked, and it has no probe
    bare = await make_device(config=config)  # it takes updates as they come, and has no probe
    outsider = await make_device(addons=["outdoor_temperature"], config=config)  # not in the rollout
    for dev in (probed, asks, bare, outsider):
        owners.claim("ann", dev.id)
        await async_wait_for(lambda d=dev: gw.is_online(d.id), 10, what=f"{dev.id} online")
    for dev in (probed, asks):
        status, _ = await owners.call("ann", "PATCH", f"/api/v1/devices/{dev.id}/settings", {"policy": "ask"})
        assert status == 200
    for dev in (probed, asks, bare):
        # (the heater off: a rollout's offer waits while a thermostat heats, docs/ota.md 4.3)
        done = await gw.send_command(
            dev.id, "config.set", {"feature": "thermostat", "values": {"mode": "off"}}, 5
        )
        assert done.get("ok"), done
    stored = gw.store.device(probed.id)
    assert stored is not None and stored.hello["addons"] == ["outdoor_temperature"]
    assert "outdoor_temperature" in stored.hello["caps"]
    counter = int(time.time())
    features = [FEATURES / "thermostat", FEATURES / "weather"]
    rel = build("thermostat", features, "2.1.0", tmp_path / "r", counter, keys=keys)
    gw.ota.releases.add(rel.path, time.time())
    ref = f"thermostat@{counter}"

    # a release its maker only stored offers nothing to gain, and none is installed by asking
    status, shown = await owners.call("ann", "GET", f"/api/v1/devices/{probed.id}/gains")
    assert status == 200 and shown["gains"] == [] and shown["with_addons"] == []
    status, answer = await owners.call(
        "ann", "POST", f"/api/v1/devices/{probed.id}/gains", {"feature": "weather"}
    )
    assert (status, answer["error"]["code"]) == (409, "no_gain"), answer

    # the maker rolls it out: bare installs it, and weather waits there for a probe
    roll = gw.rollouts.create(
        ref,
        f"id={probed.id} or id={asks.id} or id={bare.id}",
        stages=(1.0,),
        soak_s=5,
        no_revert=True,
        seed=1,
    )
    await async_wait_for(
        lambda: features_of(owners, bare.id).get("weather", {}).get("waiting") == ["outdoor_temperature"],
        40,
        what="weather installed on bare, waiting",
    )
    assert "error" not in features_of(owners, bare.id)["weather"]
    status, shown = await owners.call("ann", "GET", f"/api/v1/devices/{bare.id}/gains")
    assert status == 200 and [w["text"] for w in shown["waiting"]] == [
        f"weather is installed and waits for {PROBE}"
    ]

    # what each of the others could gain: weather where the probe is, a probe's worth where not
    status, shown = await owners.call("ann", "GET", f"/api/v1/devices/{probed.id}/gains")
    assert status == 200, shown
    (gain,) = shown["gains"]
    assert (gain["feature"], gain["release"]["ref"], gain["addons"]) == (
        "weather",
        ref,
        ["outdoor_temperature"],
    )
    assert gain["text"] == f"{PROBE} was plugged in: the weather feature can now run"
    # (as `permabeta devices gains` and `devices show` print it)
    assert gains_lines(shown) == [f"  could gain weather 1.0.0 ({ref}): {gain['text']}"]
    status, shown = await owners.call("ann", "GET", f"/api/v1/devices/{asks.id}/gains")
    assert status == 200 and shown["gains"] == [] and shown["waiting"] == []
    (could,) = shown["with_addons"]
    assert could["needs"] == ["outdoor_temperature"] and could["text"].startswith(f"plug in {PROBE}")

    # what is refused, and says why: nothing is started
    for who, dev, body, want in (
        ("ann", asks.id, {"feature": "weather"}, (409, "lacks_hardware")),
        ("ann", outsider.id, {"feature": "weather"}, (409, "not_offered")),
        ("ann", probed.id, {"feature": "thermostat"}, (409, "installed")),
        ("ann", probed.id, {"feature": "radar"}, (409, "no_gain")),
        ("ann", probed.id, {"feature": 5}, (400, "bad_request")),
        ("ann", probed.id, {"feature": "weather", "now": True}, (400, "bad_request")),
        ("bob", probed.id, {"feature": "weather"}, (404, "unknown_device")),
    ):
        status, answer = await owners.call(who, "POST", f"/api/v1/devices/{dev}/gains", body)
        assert (status, answer["error"]["code"]) == want, (body, answer)
    assert all(gw.ota.active(d.id) is None for d in (probed, asks, outsider))

    # the owner asks: the owner's yes, and the rollout offers it; weather runs
    status, yes = await owners.call(
        "ann", "POST", f"/api/v1/devices/{probed.id}/gains", {"feature": "weather"}
    )
    assert status == 202 and yes["ref"] == ref and yes["rollout"] == roll.id and yes["decision"] == "now", yes
    row = await async_wait_for(
        lambda: (m := gw.rollouts.table.member(roll.id, probed.id)) is not None and m.update_id and m,
        20,
        what="offered",
    )
    await async_wait_for(lambda: gw.ota.get(row.update_id).state == "committed", 40, what="committed")
    await async_wait_for(lambda: probed.running() == ["thermostat", "weather"], 10, what="weather running")
    await async_wait_for(
        lambda: features_of(owners, probed.id).get("weather", {}).get("running") is True, 10, what="said"
    )
    await async_wait_for(
        lambda: any("outdoor_temperature" in t.data["sensors"] for t in gw.store.telemetry(probed.id, 5)),
        10,
        what="the probe's readings in telemetry (shared by its default)",
    )

    # plugged in: weather starts, and the device says so
    bare.plug("outdoor_temperature")
    await async_wait_for(
        lambda: features_of(owners, bare.id).get("weather", {}).get("running") is True,
        10,
        what="weather started",
    )
    await async_wait_for(
        lambda: ("addon", None, f"plugged in: {PROBE}") in events(owners, bare.id), 5, what="addon event"
    )
    assert (
        "feature_started",
        "weather",
        "its hardware is there: temperature, outdoor_temperature",
    ) in events(owners, bare.id)
    # pulled out: stopped cleanly, waiting again, the thermostat runs on
    bare.plug("outdoor_temperature", plugged=False)
    await async_wait_for(
        lambda: features_of(owners, bare.id).get("weather", {}).get("waiting") == ["outdoor_temperature"],
        10,
        what="weather waiting again",
    )
    assert features_of(owners, bare.id)["thermostat"]["running"] is True
    await async_wait_for(
        lambda: any(k == "feature_waiting" for k, _, _ in events(owners, bare.id)), 5, what="said so"
    )
    assert not [e for e in events(owners, bare.id) if e[0].endswith("_error")]


@pytest.mark.long
async def test_on_the_unix_port_weather_waits_then_runs_once_the_probe_is_plugged_in(
    rig: Rig, mosquitto: Mosquitto, keys: Keys, tmp_path: Path
) -> None:
    """The same on MicroPython (128 KB heap): the release installs without the
    probe and commits, weather waiting; plugged in, the board finds it at its
    next look (the sensor file names it: pb/hal/host.py) and weather runs."""
    rel = build(
        "thermostat", [FEATURES / "thermostat", FEATURES / "weather"], "2.1.0", tmp_path / "r", 2, keys=keys
    )
    stored = rig.publish(rel.path)
    board = unix_port_board(mosquitto, tmp_path, keys.root_bytes)
    task = asyncio.create_task(board.run(), name="board")
    try:
        await async_wait_for(lambda: rig.gw.is_online(board.id), 30, what="the board online")
        u = await rig.update(board, stored, 120)  # type: ignore[arg-type]
        assert u.state == "committed", (u, board.log_text()[-3000:])

        def weather() -> dict[str, Any]:
            d = rig.gw.store.device(board.id)
            return dict(d.features.get("weather") or {}) if d is not None else {}

        await async_wait_for(lambda: weather().get("waiting") == ["outdoor_temperature"], 30, what="waiting")
        board.plug("outdoor_temperature")
        await async_wait_for(
            lambda: weather().get("running") is True, 40, what="weather running on the board"
        )
        d = rig.gw.store.device(board.id)
        assert d is not None and d.hello["addons"] == ["outdoor_temperature"]
        assert "feature weather waits for outdoor_temperature" in board.log_text()
        assert not [e for e in rig.gw.store.events(board.id, 50) if e["kind"] == "feature_error"]
    finally:
        board.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 15)
        if not task.done():
            board.power_cut()
            task.cancel()
