"""Faults injected into virtual devices (simulator/faults.py, FleetFaults),
each exercised once, and the system recovering as specified: devices come
back and reconnect, updates resume or fail cleanly, and the gateway's counts
stay right. Link faults are in test_link.py."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from simulator.device import VirtualDevice
from simulator.faults import DeviceFaults
from simulator.fleet import split

from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import MakeDevice, Rig, fleet_rig


def events(rig: Rig, dev: VirtualDevice) -> list[dict[str, Any]]:
    return rig.gw.store.events(dev.id)


async def booted_again(dev: VirtualDevice, boots: int, timeout: float = 15) -> None:
    await async_wait_for(
        lambda: dev.boots > boots and dev.device is not None and dev.device.client.up,
        timeout,
        what=f"{dev.id} back after boot {boots}",
    )


async def test_a_power_cut_drops_the_link_without_goodbye_and_the_device_comes_back(
    rig: Rig, make_device: MakeDevice
) -> None:
    dev = await make_device()
    await async_wait_for(lambda: rig.gw.is_online(dev.id), 10, what="online")
    assert dev.device is not None
    boot_count = dev.device.state["boot_count"]
    boots = dev.boots
    dev.power_cut(off_s=1.0)
    # the broker's last will tells the gateway: no goodbye was said
    await async_wait_for(lambda: not rig.gw.is_online(dev.id), 10, what="offline")
    record = rig.gw.store.device(dev.id)
    assert record is not None and record.state_reason not in ("stop", "reboot")
    assert dev.device is None and dev.plant.relay is False  # no power, no heat
    await booted_again(dev, boots)
    await async_wait_for(lambda: rig.gw.is_online(dev.id), 10, what="online again")
    assert dev.device is not None and dev.device.state["boot_count"] == boot_count + 1
    hello = rig.gw.store.device(dev.id)
    assert hello is not None and hello.reset_cause == "power_on"
    assert dev.faults.cuts == 1


@pytest.mark.parametrize("in_memory", [False, True], ids=["flash-folder", "flash-in-ram"])
async def test_power_cut_mid_download_and_at_activation_the_update_still_commits(
    rig: Rig, make_device: MakeDevice, eco_release: Path, in_memory: bool
) -> None:
    dev = await make_device(in_memory=in_memory)
    release = rig.publish(eco_release)
    dev.faults.cut_off_s = 0.5
    dev.faults.cut_at_point = "chunk"  # mid-download
    u = await rig.update(dev, release, timeout=40)
    assert u.state == "committed", u
    assert dev.faults.cuts == 1 and "chunk" in dev.faults.points_passed
    assert rig.gw.ota.stats["committed"] == 1 and rig.gw.ota.stats["failed"] == 0


@pytest.mark.parametrize("in_memory", [False, True], ids=["flash-folder", "flash-in-ram"])
async def test_power_cut_at_activation_resumes_and_commits(
    rig: Rig, make_device: MakeDevice, eco_release: Path, in_memory: bool
) -> None:
    dev = await make_device(in_memory=in_memory)
    dev.faults.cut_off_s = 0.5
    dev.faults.cut_at_point = "activate"  # at boot, installing the staged set
    u = await rig.update(dev, rig.publish(eco_release), timeout=40)
    assert u.state == "committed", u
    assert dev.faults.cuts == 1
    await async_wait_for(lambda: dev.running() == ["eco", "thermostat"], 10, what="eco running")


@pytest.mark.parametrize("in_memory", [False, True], ids=["flash-folder", "flash-in-ram"])
async def test_a_full_flash_fails_the_update_cleanly_and_the_next_one_commits(
    rig: Rig, make_device: MakeDevice, eco_release: Path, in_memory: bool
) -> None:
    dev = await make_device(in_memory=in_memory)
    release = rig.publish(eco_release)
    dev.faults.flash_full = True
    u = await rig.update(dev, release, timeout=30)
    assert u.state == "failed" and u.reason is not None, u
    assert "space" in u.reason.lower() or "full" in u.reason.lower(), u.reason
    # the device goes on with what it ran, and says so
    await async_wait_for(lambda: dev.device is not None and dev.device.client.up, 10, what="device up")
    assert dev.running() == ["thermostat"] and dev.pointer() is None
    dev.faults.flash_full = False
    u2 = await rig.update(dev, release, timeout=30)
    assert u2.state == "committed", u2
    assert rig.gw.ota.stats["failed"] == 1 and rig.gw.ota.stats["committed"] == 1


async def test_clock_skew_shows_in_telemetry_and_a_far_ahead_clock_refuses_an_update(
    rig: Rig, make_device: MakeDevice, eco_release: Path
) -> None:
    dev = await make_device()
    release = rig.publish(eco_release)
    dev.faults.skew_s = 3 * 86400.0  # three days ahead: the gateway's statement looks expired
    assert abs(dev.hal.time() - dev.clock.now() - 3 * 86400.0) < 1
    rows_before = len(rig.gw.store.telemetry(dev.id, 1000))
    await async_wait_for(lambda: len(rig.gw.store.telemetry(dev.id, 1000)) > rows_before, 10)
    row = rig.gw.store.telemetry(dev.id, 1)[0]
    assert row.ts - row.received > 2.9 * 86400  # what the device says, against when it arrived
    u = await rig.update(dev, release, timeout=20)
    assert u.state == "failed" and u.reason is not None and u.reason.startswith("freeze"), u
    dev.faults.skew_s = 0.0
    assert (await rig.update(dev, release, timeout=30)).state == "committed"


async def test_a_stuck_noisy_or_silent_sensor_and_a_failing_actuator(
    rig: Rig, make_device: MakeDevice
) -> None:
    dev = await make_device(telemetry_s=0.3, sample_s=0.1)
    faults = dev.faults
    # stuck: the thermostat sees the same value whatever the room does
    faults.sensors["temperature"] = _fault(stuck=12.5)
    await async_wait_for(lambda: _reading(dev, "temperature") == 12.5, 5, what="stuck reading")
    # noisy: readings scatter around the truth
    faults.sensors["temperature"] = _fault(noise=0.5)
    seen = set()
    for _ in range(20):
        await asyncio.sleep(0.12)
        seen.add(_reading(dev, "temperature"))
    assert len(seen) > 5
    truth = dev.plant.sensors(dev.clock.now())["temperature"]
    assert all(abs(v - truth) < 3.0 for v in seen if v is not None)
    # silent: the device reports it and keeps running
    faults.sensors["temperature"] = _fault(fails=True)
    await async_wait_for(
        lambda: any("does not answer" in (e.get("message") or "") for e in events(rig, dev)), 10, what="event"
    )
    del faults.sensors["temperature"]
    # a relay that does not switch: reported as actuator_error, the device runs on
    faults.actuators_failing.add("relay")
    await async_wait_for(lambda: dev.plant.relay is True, 10, what="heating at the start")
    args = {"feature": "thermostat", "values": {"setpoint": 5}}  # the heating should go off
    reply = await rig.gw.send_command(dev.id, "config.set", args)
    assert reply["ok"], reply
    await async_wait_for(
        lambda: any(e["kind"] == "actuator_error" for e in events(rig, dev)), 10, what="actuator_error"
    )
    assert dev.plant.relay is True  # it did not switch
    faults.actuators_failing.clear()
    args = {"feature": "thermostat", "values": {"setpoint": 30}}
    assert (await rig.gw.send_command(dev.id, "config.set", args))["ok"]
    await async_wait_for(lambda: dev.plant.relay is True, 10, what="relay on once it works")
    assert dev.device is not None and dev.device.client.up


def _fault(**kw: Any) -> Any:
    from simulator.faults import SensorFault

    return SensorFault(**kw)


def _reading(dev: VirtualDevice, name: str) -> float | None:
    d = dev.device
    if d is None:
        return None
    v = d.features.readings.get(name)
    return float(v) if v is not None else None


def test_device_faults_are_seeded() -> None:
    a, b = DeviceFaults(random.Random(5)), DeviceFaults(5)  # (a seed: its generator made when needed)
    a.sensors["t"] = b.sensors["t"] = _fault(noise=1.0)
    assert [a.reading("t", 20.0) for _ in range(5)] == [b.reading("t", 20.0) for _ in range(5)]
    assert isinstance(b.rng, random.Random)


def test_split_shares_devices_over_models() -> None:
    assert split(5, ["thermostat", "shirt"]) == {"thermostat": 3, "shirt": 2}
    assert sum(split(201, ["a", "b", "c"]).values()) == 201


@pytest.mark.long  # (slow: make long)
async def test_a_broker_restart_every_device_reconnects_and_the_gateway_counts_them(
    own_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    options = {"seed": 3, "telemetry_s": 0.5, "sample_s": 0.2, "keepalive": 5}
    async with fleet_rig(own_mosquitto, tmp_path, split(6, ["thermostat", "shirt"]), **options) as r:
        fleet, gw, store = r.fleet, r.gw, r.store
        fleet.faults.broker = own_mosquitto
        await fleet.wait_connected(20)
        await async_wait_for(lambda: gw.stats()["online"] == 6, 20, what="6 online at the gateway")
        await fleet.faults.broker_restart(1.0)
        # every device lost its link and made a new one
        await async_wait_for(
            lambda: all(
                d.device is not None and d.device.client.stats["connects"] >= 2 for d in fleet.devices
            ),
            40,
            what="every device reconnected",
        )
        await fleet.wait_connected(40)
        await async_wait_for(lambda: gw.stats()["online"] == 6, 30, what="6 online again")
        rows = store.telemetry_count()
        await async_wait_for(lambda: store.telemetry_count() > rows + 6, 15, what="telemetry flowing again")
        assert len(store.devices()) == 6  # the same six, nobody counted twice
        assert fleet.summary().connected == 6
