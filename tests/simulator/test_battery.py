"""The shirt's battery: the physics of its cell (simulator/physics.py), and a
virtual shirt on a low battery holding an update back (deferred, not failed)
until its charger has filled it, with the gateway in the test's loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ota.keys import Keys
from ota.release import build
from simulator.physics import Battery, Skin

from ..support.wait import async_wait_for
from .conftest import FEATURES, MakeDevice, Rig, copy_feature

HOUR = 3600.0


def test_the_board_drains_its_cell_and_the_charger_fills_it() -> None:
    cell = Battery(charge=50.0, capacity_mah=500.0, idle_ma=25.0)
    cell.run(HOUR)
    assert cell.charge == pytest.approx(45.0)  # 25 mAh of 500
    cell.charger = True
    for _ in range(3600):
        cell.run(1.0)
    assert cell.charge > 80.0
    for _ in range(4 * 3600):
        cell.run(1.0)
    assert cell.charge == pytest.approx(100.0, abs=0.01)  # tapering on the way
    cell.charger = False
    for _ in range(1000):
        cell.run(HOUR)
    assert cell.charge == 0.0


def test_the_vent_moving_and_the_radio_drain_the_cell_more() -> None:
    still, moving = Skin(), Skin()
    for plant in (still, moving):
        plant.battery = Battery(charge=80.0)
        plant.advance(0.0)
    for i in range(1, 600):
        if i % 2:
            moving.vent = 100.0 if moving.vent == 0.0 else 0.0  # a full sweep every other second
        still.advance(float(i))
        moving.advance(float(i))
    assert moving.battery.charge < still.battery.charge - 1.0
    quiet = Battery(charge=80.0)
    busy = Battery(charge=80.0)
    busy.radio(1000)  # an update's requests and chunks
    assert busy.charge < quiet.charge
    assert Skin().sensors(0.0)["battery"] == Battery().charge


@pytest.mark.long  # (make long: make test stays within 10 minutes)
async def test_a_shirt_on_a_low_battery_defers_an_update_and_commits_it_once_charged(
    rig: Rig, make_device: MakeDevice, keys: Keys, tmp_path: Path
) -> None:
    vent = copy_feature("vent", tmp_path / "src")
    (vent / "curve.py").write_text((vent / "curve.py").read_text() + "REVISION = 2\n")
    release = rig.publish(build("shirt", [vent], "2.0.0", tmp_path / "r", 2, keys=keys).path)
    assert (FEATURES / "vent").is_dir()
    dev = await make_device("shirt")
    cell = dev.plant.battery
    cell.charge, cell.charger = 18.5, False
    await async_wait_for(lambda: rig.gw.is_online(dev.id), 10, what="online")
    u = await rig.gw.ota.start(dev.id, release.id)
    await async_wait_for(lambda: rig.gw.ota.get(u.id).state == "deferred", 15, what="deferred")
    held = rig.gw.ota.get(u.id)
    assert held.reason == "battery: 18% is below 30%" and not held.ended
    assert held.served == 0 and held.requests == 0  # nothing downloaded
    assert dev.deferred()  # (the fleet's summary counts it deferred, not updating)
    await asyncio.sleep(2.5)
    assert rig.gw.ota.get(u.id).state == "deferred" and rig.gw.ota.stats["failed"] == 0
    # on its charger: at 300 times real time the cell fills in seconds
    cell.charger = True
    dev.clock.set_speed(300.0)
    await async_wait_for(lambda: cell.charge >= 36.0, 30, what="charged")
    dev.clock.set_speed(1.0)
    await async_wait_for(lambda: rig.gw.ota.get(u.id).ended, 40, what="the update ended")
    done = rig.gw.ota.get(u.id)
    assert done.state == "committed", done
    steps = [s["state"] for s in rig.gw.ota.table.steps(u.id)]
    assert steps[:2] == ["offered", "deferred"] and steps[-1] == "committed", steps
    assert "downloading" in steps and rig.gw.ota.stats["failed"] == 0
    assert (dev.pointer() or {}).get("counter") == 2 and not dev.deferred()
