"""The rollouts' runner in a gateway running in this process
(gateway/rollout_service.py), on the session's Mosquitto and real SQLite,
devices played over the broker by OtaDevice: a failed revert tried again
and then given up, halted and completed rollouts stepped only while they
can act, a device updated by hand while the judge looks, and the offers a
halt left pending when the gateway stopped."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiohttp
import pytest

from gateway.rollout_plan import REVERT_RETRY_S, REVERT_TRIES, assign
from gateway.rollout_service import FINAL_TICK_S
from gateway.rollouts import RolloutTable
from gateway.store import Store
from ota.keys import Keys

from ..support import messages
from ..support.ota import OtaDevice
from ..support.wait import async_wait_for
from .conftest import MakeRelease, Running, StartGateway, stop

MakeDevice = Callable[..., OtaDevice]
P = ParamSpec("P")
T = TypeVar("T")
T0 = 1_900_000_000.0


class StepClock:
    """The gateway's clock, moved only by the test (gateway.clock.Clock)."""

    speed = 1.0

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Gate(ThreadPoolExecutor):
    """The event loop's worker thread, held shut until the test opens it:
    what the gateway hands a thread (the judge's look) waits meanwhile."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.entered = threading.Event()
        self.opened = threading.Event()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        def held() -> T:
            self.entered.set()
            self.opened.wait(30)
            return fn(*args, **kwargs)

        return super().submit(held)


async def online(r: Running, device: OtaDevice, **hello: Any) -> OtaDevice:
    await asyncio.to_thread(device.hello, **hello)
    await async_wait_for(lambda: r.gw.is_online(device.id), 10, what=f"{device.id} online")
    return device


async def offered(device: OtaDevice, timeout: float = 10) -> list[dict[str, Any]]:
    """The offers (and cancels) the device gets until none comes for timeout."""
    out = []
    while True:
        try:
            out.append(await asyncio.to_thread(device.offer, timeout))
        except AssertionError:
            return out


async def offer_of(device: OtaDevice, uid: str, op: str = "offer") -> dict[str, Any]:
    """The offer (or cancel) of update uid that the device gets, past the
    repeats of earlier ones (an offer not answered yet is sent again once
    the gateway has connected)."""
    while True:
        msg = await asyncio.to_thread(device.offer, 10)
        if msg["id"] == uid and msg.get("op", "offer") == op:
            return msg


async def ends(r: Running, uid: str, state: str) -> None:
    await async_wait_for(lambda: r.gw.ota.get(uid).state == state, 10, what=f"update {uid} {state}")


def recorded(r: Running, rid: str, dev: OtaDevice, column: str = "update_id", seen: Any = ()) -> str | None:
    """The update (or revert) recorded for a member, if one not seen before."""
    row = r.gw.rollouts.table.member(rid, dev.id)
    uid = getattr(row, column) if row is not None else None
    return None if uid in seen else uid


def releases(r: Running, make_release: MakeRelease) -> tuple[str, str]:
    """thermostat@2, the release rolled out, and thermostat@3, another set
    (the revert, or an update by hand)."""
    two, _ = r.gw.ota.releases.add(make_release(2).path, T0)
    three, _ = r.gw.ota.releases.add(make_release(3, extra="three").path, T0)
    return two.id, three.id


async def test_a_failed_revert_is_tried_again_three_times_in_all_then_shown_revert_failed(
    start_gateway: StartGateway,
    keys: Keys,
    make_release: MakeRelease,
    ota_devices: MakeDevice,
    gw_db: Path | str,
) -> None:
    clock = StepClock(T0)
    r = await start_gateway(keys, clock=clock)
    _, revert = releases(r, make_release)
    dev = await online(r, ota_devices())
    roll = r.gw.rollouts.create(
        "thermostat@2", f"id={dev.id}", stages=(1.0,), reverts=["thermostat@3"], seed=1
    )
    uid = await async_wait_for(lambda: recorded(r, roll.id, dev), 10, what="offered")
    await offer_of(dev, uid)
    dev.status(uid, "committed", counter=2)
    await ends(r, uid, "committed")
    await r.gw.rollouts.command(roll.id, "revert")
    seen: set[str] = set()

    async def fails_a_revert() -> None:
        uid = await async_wait_for(
            lambda: recorded(r, roll.id, dev, "revert_id", seen), 10, what="a revert offered"
        )
        seen.add(uid)
        assert (await offer_of(dev, uid))["manifest"] == revert
        dev.status(uid, "failed", reason="verify: hash mismatch")
        await ends(r, uid, "failed")

    def tries() -> int:
        return r.gw.ota.table.offers({revert}, T0).get(dev.id, 0)

    def shown() -> dict[str, int]:
        counts = r.gw.rollouts.status(roll)["stages"][0]["counts"]
        return {k: n for k, n in counts.items() if n}

    await fails_a_revert()
    await r.gw.rollouts.tick()
    assert (tries(), shown()) == (1, {"reverting": 1})  # not at once: after REVERT_RETRY_S
    clock.t += REVERT_RETRY_S
    await r.gw.rollouts.tick()
    await fails_a_revert()
    # the tries are counted from the store: a gateway started again goes on from 2
    await stop(r)
    r = await start_gateway(keys, db=gw_db, clock=clock)
    await async_wait_for(lambda: r.gw.is_online(dev.id), 10, what="the device seen again")
    await r.gw.rollouts.tick()
    assert tries() == 2
    clock.t += REVERT_RETRY_S
    await r.gw.rollouts.tick()
    await fails_a_revert()
    for _ in range(2):
        clock.t += REVERT_RETRY_S
        await r.gw.rollouts.tick()
    assert (tries(), shown()) == (REVERT_TRIES, {"revert_failed": 1})
    gave_up = r.gw.rollouts.table.decisions(roll.id, kind="revert_failed")
    assert len(gave_up) == 1 and gave_up[0]["numbers"] == {"devices": {dev.id: "verify: hash mismatch"}}
    assert f"1 not reverted after {REVERT_TRIES} tries: {dev.id}" in gave_up[0]["reason"]
    # recorded once, whatever the restarts; and the rollout has nothing left to do
    await stop(r)
    r = await start_gateway(keys, db=gw_db, clock=clock)
    await r.gw.rollouts.tick()
    steps = r.gw.rollouts.stats["steps"]
    await online(r, dev)
    for _ in range(2):
        clock.t += FINAL_TICK_S
        await r.gw.rollouts.tick()
    assert len(r.gw.rollouts.table.decisions(roll.id, kind="revert_failed")) == 1
    assert tries() == REVERT_TRIES and r.gw.rollouts.stats["steps"] == steps


async def test_a_completed_rollout_is_stepped_only_while_it_can_act_and_at_once_when_a_member_returns(
    start_gateway: StartGateway, keys: Keys, make_release: MakeRelease, ota_devices: MakeDevice
) -> None:
    clock = StepClock(T0)
    r = await start_gateway(keys, clock=clock)
    releases(r, make_release)
    here = await online(r, ota_devices())
    away = ota_devices()
    r.store.upsert_hello(away.id, messages.hello(away.id), T0)  # known, offline
    roll = r.gw.rollouts.create(
        "thermostat@2", f"id in ({here.id}, {away.id})", stages=(1.0,), no_revert=True, seed=1
    )
    r.gw.rollouts.table.change(roll, T0, "completed", "the last stage passed", state="completed")
    # (a completed rollout offers its release to the members online)
    first = await async_wait_for(lambda: recorded(r, roll.id, here), 10, what="offered")
    await r.gw.rollouts.tick()
    steps = r.gw.rollouts.stats["steps"]

    def stepped() -> int:
        return r.gw.rollouts.stats["steps"] - steps

    for _ in range(3):
        await r.gw.rollouts.tick()
    assert stepped() == 0  # not every second
    clock.t += FINAL_TICK_S
    await r.gw.rollouts.tick()
    assert stepped() == 1  # every FINAL_TICK_S of the gateway's clock
    # the member away comes back: stepped at once, and offered the release
    await online(r, away)
    second = await async_wait_for(lambda: recorded(r, roll.id, away), 10, what="offered on its return")
    await offer_of(away, second)
    here.status(first, "committed", counter=2)
    away.status(second, "committed", counter=2)
    await ends(r, second, "committed")
    await ends(r, first, "committed")
    clock.t += FINAL_TICK_S
    await r.gw.rollouts.tick()
    # every member committed: never stepped again, whoever comes back
    done = stepped()
    await online(r, here)
    for _ in range(3):
        clock.t += FINAL_TICK_S
        await r.gw.rollouts.tick()
    assert stepped() == done


async def test_a_device_updated_by_hand_while_the_judge_looks_stays_out_of_the_rollout(
    start_gateway: StartGateway, keys: Keys, make_release: MakeRelease, ota_devices: MakeDevice
) -> None:
    clock = StepClock(T0)
    r = await start_gateway(keys, clock=clock)
    _, by_hand = releases(r, make_release)
    dev = await online(r, ota_devices())
    others = [f"{dev.id}-{i:02d}" for i in range(50)]  # offline: enough for the judge to compare two groups
    for other in others:
        r.store.upsert_hello(other, messages.hello(other), T0)
    stages = (0.5, 1.0)
    seed = next(s for s in range(1000) if assign([dev.id, *others], stages, s)[dev.id] == 0)
    cohort = f"id in ({', '.join([dev.id, *others])})"
    gate = Gate()
    asyncio.get_running_loop().set_default_executor(gate)
    try:
        roll = r.gw.rollouts.create(
            "thermostat@2", cohort, stages=stages, soak_s=600, no_revert=True, seed=seed
        )
        clock.t += 600 / 3  # the first look is due: the next step awaits it in a worker thread
        await async_wait_for(gate.entered.is_set, 10, what="the judge looking")
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{r.url}/api/v1/devices/{dev.id}/update",
                headers=r.headers(),
                json={"release": "thermostat@3", "force": True},
            ) as resp,
        ):
            assert resp.status == 201, await resp.text()
    finally:
        gate.opened.set()
    await async_wait_for(lambda: r.gw.rollouts.table.looks(roll.id, 0) == 1, 10, what="the look stored")
    await r.gw.rollouts.tick()  # (once the step that looked has ended)
    row = r.gw.rollouts.table.member(roll.id, dev.id)
    assert row is not None and row.left is not None and row.update_id is None
    assert [u.release for u in r.gw.ota.of_device(dev.id)] == [by_hand]
    assert {o["manifest"] for o in await offered(dev, 1.0)} == {by_hand}
    assert r.gw.rollouts.status(roll)["stages"][0]["counts"]["left"] == 1


@pytest.mark.parametrize(("state", "kind"), [("halted", "halt"), ("aborted", "abort")])
async def test_offers_a_halt_left_pending_when_the_gateway_stopped_are_cancelled_when_it_starts(
    start_gateway: StartGateway,
    keys: Keys,
    make_release: MakeRelease,
    ota_devices: MakeDevice,
    gw_db: Path | str,
    state: str,
    kind: str,
) -> None:
    r = await start_gateway(keys)
    releases(r, make_release)
    dev = await online(r, ota_devices())
    roll = r.gw.rollouts.create("thermostat@2", f"id={dev.id}", stages=(1.0,), no_revert=True, seed=1)
    uid = await async_wait_for(lambda: recorded(r, roll.id, dev), 10, what="offered")
    await offer_of(dev, uid)
    dev.status(uid, "downloading", bytes=0, total=4096)
    await ends(r, uid, "downloading")
    # the halt (or abort) is stored, and the gateway stops before it cancels the offers
    await stop(r)
    with Store(gw_db) as s:
        RolloutTable(s).change(roll, r.gw.clock.now(), kind, f"{state} by the test", state=state)
    r = await start_gateway(keys, db=gw_db)
    assert await offer_of(dev, uid, "cancel") == {"v": 1, "id": uid, "op": "cancel"}
    done = r.gw.ota.get(uid)
    assert (done.state, done.reason) == ("failed", f"cancelled: rollout {state}")
    # the member shows its offer cancelled by the rollout, not failed
    counts = r.gw.rollouts.status(r.gw.rollouts.table.find(roll.id))["stages"][0]["counts"]
    assert counts["cancelled"] == 1 and counts["failed"] == 0
