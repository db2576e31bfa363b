"""A device at work is not cut short by an update (docs/ota.md 4.3, Busy): a
thermostat mid heating cycle holds back an offer that asks it to (`idle`,
as a rollout's offers do), deferred and not failed, and installs it once
its relay is off; in the runtime beside the features, and on a small heap,
where the reset into update mode waits the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..support.wait import async_wait_for
from .conftest import MakeDevice, Rig

BUSY = "busy: thermostat is working (relay on)"


@pytest.mark.parametrize("small_heap", [False, True], ids=["beside-the-features", "in-update-mode"])
async def test_a_heating_thermostat_defers_an_idle_offer_until_its_relay_is_off(
    rig: Rig, make_device: MakeDevice, eco_release: Path, small_heap: bool
) -> None:
    release = rig.publish(eco_release)
    dev = await make_device(heap_free=20000 if small_heap else None)
    dev.plant.temp = 15.0  # a cold room: the heater runs
    await async_wait_for(lambda: dev.plant.relay is True, 10, what="heating")
    await async_wait_for(lambda: rig.gw.is_online(dev.id), 10, what="online")
    u = await rig.gw.ota.start(dev.id, release.id, idle=True)
    await async_wait_for(lambda: rig.gw.ota.get(u.id).state == "deferred", 20, what="deferred")
    held = rig.gw.ota.get(u.id)
    assert (held.reason, held.ended, held.idle) == (BUSY, False, True)
    assert dev.pointer() is None and dev.boots == 1  # not installed, not reset
    assert dev.deferred()  # (the fleet's summary counts it deferred, not updating)
    # the room warms past the setpoint: the relay goes off, the update goes on
    dev.plant.temp = 25.0
    await async_wait_for(lambda: rig.gw.ota.get(u.id).ended, 40, what="the update ended")
    done = rig.gw.ota.get(u.id)
    assert done.state == "committed", done
    steps = [s["state"] for s in rig.gw.ota.table.steps(u.id)]
    assert "deferred" in steps and steps[-1] == "committed", steps
    assert rig.gw.ota.stats["failed"] == 0 and (dev.pointer() or {}).get("counter") == 2
    assert not dev.deferred()


async def test_an_offer_that_does_not_ask_to_wait_installs_while_the_device_works(
    rig: Rig, make_device: MakeDevice, eco_release: Path
) -> None:
    release = rig.publish(eco_release)
    dev = await make_device()
    dev.plant.temp = 15.0
    await async_wait_for(lambda: dev.plant.relay is True, 10, what="heating")
    u = await rig.update(dev, release, timeout=30)
    assert u.state == "committed" and "deferred" not in [s["state"] for s in rig.gw.ota.table.steps(u.id)]
