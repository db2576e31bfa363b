"""Rollouts on simulated fleets (docs/rollouts.md): 200 virtual thermostats
on the session's Mosquitto, their rooms' physics, and a gateway holding
update keys in the test's loop, on the fleet's own clock, 60 times faster
than real time, so that soaks and hourly metrics pass in seconds.

A good release reaches the whole fleet; one that crashes on a third of the
devices halts in its first stage and is reverted there, the rest never
offered it; one that runs but holds rooms worse halts on the product's own
metric; owners' policies and busy devices are honoured, and a gateway
restarted in the middle of a stage changes nothing. `make rollouts` runs
them (CI too)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.decisions import DecisionTable, decided
from gateway.rollouts import Rollout
from gateway.service import Gateway
from gateway.settings import SettingsTable, changed
from gateway.store import Store
from ota.keys import Keys
from ota.release import build
from simulator.fleet import Fleet

from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import FEATURES, copy_feature

pytestmark = [pytest.mark.rollouts, pytest.mark.timeout(600)]

N = 200
SPEED = 60.0  # simulated seconds per real second
STAGES = (0.15, 0.50, 1.0)  # a first stage of 30 devices
# the fleet's clock starts at one instant, whatever the hour the tests run:
# its rooms' weather and occupancy follow the time of day, and in a night's
# cold the rooms whose heaters struggle (never updated while they heat)
# swamp the control group of a stage with errors no release made
START = datetime(2026, 12, 6, 10, tzinfo=UTC).timestamp()


@dataclass
class RolloutRig:
    fleet: Fleet
    gw: Gateway
    store: Store
    workdir: Path
    keys: Keys
    broker: Mosquitto
    task: asyncio.Task[None]

    def publish(self, path: Path) -> str:
        stored, _ = self.gw.ota.releases.add(path, self.gw.clock.now())
        return stored.id

    def rollout(self, rid: str) -> Rollout:
        r = self.gw.rollouts.table.get(rid)
        assert r is not None
        return r

    async def ended(self, rid: str, states: tuple[str, ...], timeout: float) -> Rollout:
        await async_wait_for(
            lambda: self.rollout(rid).state in states, timeout, what=f"rollout {rid} {states}"
        )
        return self.rollout(rid)

    def updates_of(self, rid: str) -> dict[str, Any]:
        """Each member's update of the release (None: never offered it) and revert."""
        out = {}
        for m in self.gw.rollouts.table.members(rid):
            u = self.gw.ota.get(m.update_id) if m.update_id else None
            v = self.gw.ota.get(m.revert_id) if m.revert_id else None
            out[m.device] = (m, u, v)
        return out

    async def restart_gateway(self) -> None:
        """Stop the gateway and start another on the same database, as after a crash."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.store.close()
        self.store = Store(self.workdir / "gw.db")
        self.gw = _gateway(self.broker, self.store, self.keys, self.fleet)
        self.task = asyncio.create_task(self.gw.run(), name="test-gateway-again")
        await async_wait_for(lambda: self.gw.connected.is_set(), 10, what="the gateway back")


def _gateway(broker: Mosquitto, store: Store, keys: Keys, fleet: Fleet) -> Gateway:
    return Gateway(
        broker.gateway_url,
        store,
        client_id=f"gw-roll-{secrets.token_hex(3)}",
        api=None,
        keys=keys,
        clock=fleet.clock,
    )


@pytest.fixture
async def rig(own_mosquitto: Mosquitto, tmp_path: Path, keys: Keys) -> AsyncIterator[RolloutRig]:
    # (a broker of its own: 200 devices more on the session's broker, after
    # other fleets, did not all get on within a minute)
    mosquitto = own_mosquitto
    tag = secrets.token_hex(2)
    passwords: dict[str, str] = {}
    fleet = Fleet(
        mosquitto.url,
        tmp_path / "devices",
        models={"thermostat": N},
        prefix={"thermostat": f"r{tag}"},
        passwords=lambda dev: passwords.setdefault(dev, secrets.token_urlsafe(9)),
        speed=SPEED,
        telemetry_s=1.0,  # a minute of the fleet's time
        sample_s=0.5,
        root=keys.root_bytes,
        trial_s=2.0,
        seed=int(tag, 16),
        start=START,
    )
    mosquitto.add_users(passwords)
    store = Store(tmp_path / "gw.db")
    gw = _gateway(mosquitto, store, keys, fleet)
    task = asyncio.create_task(gw.run(), name="test-gateway")
    fleet.start()
    rig = RolloutRig(fleet, gw, store, tmp_path, keys, mosquitto, task)
    try:
        await async_wait_for(
            lambda: sum(rig.gw.is_online(d) for d in passwords) == N, 60, what="the fleet online"
        )
        # half an hour of the fleet's time: every room settles around its setpoint
        await fleet.step(1800)
        yield rig
    finally:
        await fleet.aclose(30)
        rig.task.cancel()
        await asyncio.gather(rig.task, return_exceptions=True)
        rig.store.close()


def thermostat_release(tmp: Path, keys: Keys, counter: int, change: tuple[str, str] | None = None) -> Path:
    """The thermostat feature, changed by one replacement in its code (or
    only in a note, so that the release differs from the factory set)."""
    src = copy_feature("thermostat", tmp / f"src{counter}")
    init = src / "__init__.py"
    code = init.read_text()
    if change is not None:
        assert change[0] in code, change
        code = code.replace(*change)
    init.write_text(code + f"\nRELEASE = {counter}\n")
    return build("thermostat", [src], f"{counter}.0.0", tmp / f"r{counter}", counter, keys=keys).path


def factory_again(tmp: Path, keys: Keys, counter: int) -> Path:
    """The factory set (the board's thermostat feature) signed again: the revert."""
    return build(
        "thermostat",
        [FEATURES / "thermostat"],
        f"{counter}.0.0-revert",
        tmp / f"rv{counter}",
        counter,
        keys=keys,
    ).path


async def test_a_good_release_reaches_the_whole_fleet_through_every_stage(
    rig: RolloutRig, tmp_path: Path
) -> None:
    rig.publish(thermostat_release(tmp_path, rig.keys, 2))
    rig.publish(factory_again(tmp_path, rig.keys, 3))
    r = rig.gw.rollouts.create("thermostat@2", stages=STAGES, soak_s=1800, reverts=["thermostat@3"], seed=11)
    members = rig.gw.rollouts.table.members(r.id)
    assert len(members) == N and sum(m.stage == 0 for m in members) == 30
    done = await rig.ended(r.id, ("completed", "halted"), 420)
    assert done.state == "completed", (done.reason, rig.gw.rollouts.table.decisions(r.id)[-5:])
    looks = [d for d in rig.gw.rollouts.table.decisions(r.id, 200) if d["kind"] == "look"]
    assert looks and all(d["result"] != "fail" for d in looks), [d["reason"] for d in looks]
    judged = [d for d in looks if d["numbers"].get("metrics")]
    assert judged, "the judge compared a stage with its control group"
    await every_member_committed(rig, r.id)


async def every_member_committed(rig: RolloutRig, rid: str, timeout: float = 150) -> None:
    def left() -> dict[str, str]:
        out = {}
        for d, (_, u, _) in rig.updates_of(rid).items():
            if u is None or u.state != "committed":
                out[d] = "not offered" if u is None else f"{u.state} {u.reason or ''}"
        return out

    try:
        await async_wait_for(lambda: not left(), timeout, what="every member committed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {left()}") from None


async def test_a_release_that_crashes_on_a_third_halts_in_its_first_stage_and_is_reverted(
    rig: RolloutRig, tmp_path: Path
) -> None:
    # the thermostat raises at start on about a third of the rooms (by the
    # first reading's tenths): those devices roll back at once
    crash = (
        '        ctx.drive("relay", False)\n',
        '        ctx.drive("relay", False)\n        if int(ctx.read("temperature") * 10) % 3 == 0:\n'
        "            raise RuntimeError('no good on this room')\n",
    )
    rig.publish(thermostat_release(tmp_path, rig.keys, 2, crash))
    rig.publish(factory_again(tmp_path, rig.keys, 3))
    r = rig.gw.rollouts.create("thermostat@2", stages=STAGES, soak_s=1800, reverts=["thermostat@3"], seed=5)
    halted = await rig.ended(r.id, ("halted", "completed"), 240)
    assert halted.state == "halted" and halted.stage == 0, halted
    assert "hard failures" in (halted.reason or ""), halted.reason
    await async_wait_for(
        lambda: all(
            v is not None and v.state == "committed"
            for m, u, v in rig.updates_of(r.id).values()
            if u is not None and u.state == "committed"
        ),
        120,
        what="every device that took it reverted",
    )
    states = rig.updates_of(r.id)
    reached = {d for d, (m, u, _) in states.items() if u is not None}
    assert reached <= {d for d, (m, _, _) in states.items() if m.stage == 0}  # the rest never offered it
    assert sum(1 for _, u, _ in states.values() if u is not None and u.state == "rolled_back") >= 2
    for d, (_, u, _v) in states.items():
        if u is not None and u.state == "committed":
            assert rig.fleet.device(d).pointer()["counter"] == 3  # type: ignore[index]


async def test_a_release_that_holds_rooms_worse_halts_on_the_product_metric(
    rig: RolloutRig, tmp_path: Path
) -> None:
    # a wrong sign in the switch-on threshold: the heater comes on below
    # setpoint + hysteresis; it boots, runs and commits everywhere
    wrong = ("elif t < sp - h + lead:", "elif t < sp + h + lead:")
    rig.publish(thermostat_release(tmp_path, rig.keys, 2, wrong))
    rig.publish(factory_again(tmp_path, rig.keys, 3))
    r = rig.gw.rollouts.create("thermostat@2", stages=STAGES, soak_s=1800, reverts=["thermostat@3"], seed=9)
    halted = await rig.ended(r.id, ("halted", "completed"), 420)
    assert halted.state == "halted" and halted.stage in (0, 1), halted
    assert "thermostat.setpoint_error" in (halted.reason or ""), halted.reason
    states = rig.updates_of(r.id)
    assert all(u is None or u.state != "rolled_back" for _, u, _ in states.values())  # not a crash
    look = [d for d in rig.gw.rollouts.table.decisions(r.id, 200) if d["kind"] == "look"][-1]
    metric = next(m for m in look["numbers"]["metrics"] if m["name"] == "thermostat.setpoint_error")
    assert metric["result"] == "fail" and metric["effect"] >= 0.1 and metric["n_treatment"] >= 20


async def test_owners_policies_and_busy_devices_are_honoured_and_a_restart_changes_nothing(
    rig: RolloutRig, tmp_path: Path
) -> None:
    rid_release = rig.publish(thermostat_release(tmp_path, rig.keys, 2))
    r = rig.gw.rollouts.create("thermostat@2", stages=(0.15, 1.0), soak_s=1200, no_revert=True, seed=3)
    first = [m.device for m in rig.gw.rollouts.table.members(r.id) if m.stage == 0]
    # (set as the rollout starts: its first step comes within a second)
    table = SettingsTable(rig.store)
    asker, windowed = first[0], first[1]
    table.save(changed(table.get(asker), policy="ask"), rig.gw.clock.now())
    local = rig.gw.clock.now() + 15 * 60  # a window that opens in a quarter of an hour of fleet time
    opens = f"{int(local // 3600 % 24):02d}:{int(local // 60 % 60):02d}"
    closes = f"{int((local + 3600) // 3600 % 24):02d}:{int(local // 60 % 60):02d}"
    table.save(changed(table.get(windowed), policy="window", window=f"{opens}-{closes}"), rig.gw.clock.now())
    await async_wait_for(
        lambda: sum(1 for m, u, _ in rig.updates_of(r.id).values() if m.stage == 0 and u is not None) >= 20,
        60,
        what="the first stage offered",
    )
    status = rig.gw.rollouts.status(rig.rollout(r.id))
    assert status["stages"][0]["counts"]["awaiting_owner"] == 1
    assert rig.updates_of(r.id)[asker][1] is None and rig.updates_of(r.id)[windowed][1] is None
    # the gateway dies mid-stage and comes back: nothing is offered twice, nothing lost
    await rig.restart_gateway()
    await async_wait_for(lambda: rig.updates_of(r.id)[windowed][1] is not None, 60, what="the window opened")
    assert rig.updates_of(r.id)[asker][1] is None  # still waits for its owner
    DecisionTable(rig.store).save(decided(asker, rid_release, "now", None, rig.gw.clock.now()))
    await async_wait_for(lambda: rig.updates_of(r.id)[asker][1] is not None, 30, what="offered once approved")
    done = await rig.ended(r.id, ("completed", "halted"), 300)
    assert done.state == "completed", done
    await every_member_committed(rig, r.id)
    # one update per member, whatever the restart; some were busy heating and waited
    counts = rig.store.db.execute(
        "SELECT device, count(*) FROM updates WHERE release = ? GROUP BY device", (rid_release,)
    ).fetchall()
    twice = {d: n for d, n in counts if n != 1}
    if twice:
        rows = [
            tuple(r)
            for r in rig.store.db.execute(
                "SELECT device, state, reason FROM updates WHERE release = ?", (rid_release,)
            )
            if r[0] in twice
        ]
        raise AssertionError(f"offered more than once: {rows}")
    assert len(counts) == N
    busy = rig.store.db.execute(
        "SELECT count(DISTINCT update_id) FROM update_steps WHERE state = 'deferred' AND reason LIKE 'busy:%'"
    ).fetchone()[0]
    assert busy >= 1, "no device was busy heating when offered"
