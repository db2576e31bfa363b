"""Chaos: a seeded fleet of 60 virtual thermostats takes a good release and
then a bad one (its eco cannot start: the trial fails) while power is cut at
random, the link drops and corrupts, duplicates, reorders and drops update
chunks, and the gateway and the broker (Mosquitto without persistence)
restart together, twice. The gateway plays the operator: an update that
fails for a passing reason is offered again. In the end: no device bricked
(each online, on a complete set), none running a mix of releases (every
file of the set it runs matches that set's manifest), none stuck (every
update ended, none by the deadline), the good release committed on every
device and the bad one rolled back on every device.

`make chaos` runs it (CI runs it after `make test`); `make test` leaves it out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware import loader
from gateway.errors import GatewayError
from gateway.releases import StoredRelease
from gateway.service import Gateway
from gateway.store import Store
from gateway.updates import Update
from ota.keys import Keys
from simulator.fleet import Fleet
from simulator.link import Link, LinkProfile

from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

SEED = 7
DEVICES = 60
POWER_CUTS_PER_HOUR = 90  # per device, each 0.5-2 s
LINK = {
    "drops_per_hour": 20.0,
    "drop_s": 2.0,
    "corrupt": 0.03,
    "duplicate": 0.03,
    "reorder": 0.03,
    "drop_chunk": 0.03,
}
DEADLINE_S = 90.0  # the gateway's update deadline: reached only by a stuck update
PHASE_S = 100.0  # at most, for each release to reach every device
ATTEMPTS = 6  # offers of one release to one device, at most


class Operator:
    """The gateway (restartable, on one database) and what an operator does
    with it: offer a release to every device and offer it again where it
    failed for a passing reason, until every device has reached `goal`."""

    def __init__(self, broker: Mosquitto, store: Store, keys: Keys, tag: str, fleet: Fleet) -> None:
        self.broker = broker
        self.fleet = fleet
        self.store = store
        self.keys = keys
        self.tag = tag
        self.gw: Gateway | None = None
        self.task: asyncio.Task[None] | None = None
        self.restarts = 0
        self.refused: collections.Counter[str] = collections.Counter()

    async def start(self) -> Gateway:
        gw = Gateway(
            self.broker.gateway_url,
            self.store,
            client_id=f"gw-chaos-{self.tag}",
            api=None,
            keys=self.keys,
            update_deadline=DEADLINE_S,
            reconcile_delay=1.0,
        )
        self.gw, self.task = gw, asyncio.create_task(gw.run(), name="chaos-gateway")
        await async_wait_for(gw.connected.is_set, 20, what="gateway connected")
        return gw

    def current(self) -> Gateway:
        assert self.gw is not None, "the gateway is not running"
        return self.gw

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.gw = self.task = None

    async def restart_with_broker(self) -> None:
        """The gateway and the broker go down together; the broker comes back
        first and the devices reconnect to it before the gateway does."""
        self.restarts += 1
        await self.stop()
        await asyncio.to_thread(self.broker.restart, 1.0)
        with contextlib.suppress(TimeoutError):  # some may be without power: not for long
            await self.fleet.wait_connected(15)
        await self.start()

    async def roll_out(
        self, release: StoredRelease, ids: list[str], goal: str, restart_after: int
    ) -> dict[str, list[Update]]:
        """Offer release to every device until each has an update of it that
        ended in goal (or ATTEMPTS ran out); the gateway and broker restart
        once, when restart_after devices have reached goal (0: as soon as
        the offers are out). Every update made, by device."""
        made: dict[str, list[Update]] = {d: [] for d in ids}
        t0 = time.monotonic()
        restarted = False
        while True:
            gw = self.current()
            for dev in ids:
                tried = made[dev]
                last = gw.ota.get(tried[-1].id) if tried else None
                if last is not None and (not last.ended or last.state == goal):
                    continue
                if len(tried) >= ATTEMPTS or gw.ota.active(dev) is not None:
                    continue
                try:
                    tried.append(await gw.ota.start(dev, release.id, force=True))
                except GatewayError as exc:  # the broker away: as an operator would, try again
                    self.refused[type(exc).__name__] += 1
            done = [d for d in ids if made[d] and gw.ota.get(made[d][-1].id).state == goal]
            out_of_tries = [d for d in ids if len(made[d]) >= ATTEMPTS and gw.ota.get(made[d][-1].id).ended]
            if not restarted and len(done) >= restart_after:
                restarted = True
                await self.restart_with_broker()
                continue
            if len(done) + len(out_of_tries) == len(ids):
                return made
            if time.monotonic() - t0 > PHASE_S:
                return made
            await asyncio.sleep(0.5)


def _summary(made: dict[str, list[Update]], get: Callable[[str], Update]) -> str:
    ended = [get(u.id) for us in made.values() for u in us]
    ends = collections.Counter(u.state for u in ended)
    tries = collections.Counter(len(us) for us in made.values())
    why = collections.Counter((u.reason or "")[:60] for u in ended if u.state == "failed")
    return f"ends {dict(ends)}, offers per device {dict(sorted(tries.items()))}, failed: {dict(why)}"


async def test_a_fleet_under_chaos_ends_with_nothing_bricked_mixed_or_stuck(
    own_mosquitto: Mosquitto,
    tmp_path: Path,
    keys: Keys,
    eco_release: Path,
    broken_eco_release: Path,
) -> None:
    tag = secrets.token_hex(2)
    passwords: dict[str, str] = {}
    link = await Link.to(own_mosquitto.url, seed=SEED, default=LinkProfile(**LINK)).start()
    fleet = Fleet(
        own_mosquitto.url,
        tmp_path / "devices",
        models={"thermostat": DEVICES},
        prefix={"thermostat": f"x{tag}"},
        seed=SEED,
        passwords=lambda dev: passwords.setdefault(dev, secrets.token_urlsafe(9)),
        broker_for=lambda _dev: link.url,
        root=keys.root_bytes,
        trial_s=2.0,
        telemetry_s=5,
        sample_s=1,
        keepalive=10,
    )
    own_mosquitto.add_users(passwords)
    ids = [d.id for d in fleet.devices]
    store = Store(tmp_path / "gw.db")
    op = Operator(own_mosquitto, store, keys, tag, fleet)
    gw = await op.start()
    fleet.start()
    t_start = time.monotonic()
    try:
        await fleet.wait_connected(60)
        await async_wait_for(lambda: all(gw.is_online(d) for d in ids), 30, what="the fleet online")
        good, _ = gw.ota.releases.add(eco_release, time.time())
        bad, _ = gw.ota.releases.add(broken_eco_release, time.time())
        fleet.faults.random_power_cuts(POWER_CUTS_PER_HOUR, off_s=1.0)

        # the gateway and the broker restart mid-rollout: a third of the fleet done
        first = await op.roll_out(good, ids, "committed", restart_after=DEVICES // 3)
        gw = op.current()
        print(f"\ngood release: {_summary(first, gw.ota.get)}")
        # this time a quarter of the fleet is cut off as the offers go out, and the
        # gateway and the broker restart at once: those offers are lost, and those
        # devices are back on the new broker before the gateway
        cut_off = ids[::4]
        for d in cut_off:
            link.drop(d, 6.0)
        await async_wait_for(lambda: not any(gw.is_online(d) for d in cut_off), 30, what="cut off")
        second = await op.roll_out(bad, ids, "rolled_back", restart_after=0)
        gw = op.current()
        print(f"bad release: {_summary(second, gw.ota.get)}")

        # calm: no more faults; every device comes back and settles
        fleet.faults.cancel()
        for k in ("drops_per_hour", "corrupt", "duplicate", "reorder", "drop_chunk"):
            setattr(link.default, k, 0.0)
        await fleet.wait_connected(60)
        await async_wait_for(
            lambda: all(d.device is not None and not d.updating() for d in fleet.devices),
            60,
            what="every device running, no update under way",
        )
        g = gw
        await async_wait_for(lambda: all(g.is_online(d) for d in ids), 30, what="the fleet online again")

        # nothing stuck: every update ended, none by its deadline
        updates = [g.ota.get(u.id) for made in (first, second) for us in made.values() for u in us]
        assert all(u.ended for u in updates), [u for u in updates if not u.ended]
        timeouts = [u for u in updates if u.reason == "timeout"]
        assert not timeouts, f"{len(timeouts)} updates stuck until their deadline: {timeouts[:3]}"
        assert g.ota.table.in_progress() == []
        # the good release committed on every device, the bad one rolled back on every device
        good_end = {d: g.ota.get(first[d][-1].id).state for d in ids}
        assert set(good_end.values()) == {"committed"}, collections.Counter(good_end.values())
        bad_end = {d: g.ota.get(second[d][-1].id).state for d in ids}
        assert set(bad_end.values()) == {"rolled_back"}, collections.Counter(bad_end.values())
        # nothing bricked, nothing mixed: each runs the good release, every file its own
        for vd in fleet.devices:
            base = str(vd.base)
            p = loader.read_pointer(base)
            assert p is not None and not p.get("corrupt") and not p.get("trial"), (vd.id, p)
            assert (p["counter"], p["manifest"]) == (good.counter, good.id), (vd.id, p)
            assert loader.check_set(base, p["set"]) is None, f"{vd.id}: {p['set']} is a mix"
            assert vd.boot is not None and vd.boot.root is not None, f"{vd.id} in safe mode"
            assert vd.running() == ["eco", "thermostat"], (vd.id, vd.running())
            record = store.device(vd.id)
            assert record is not None and record.ota is not None
            assert (record.ota["counter"], record.ota["manifest"]) == (good.counter, good.id)
        summary = fleet.summary()
        cuts, during = summary.power_cuts, summary.power_cuts_updating
        chunks = [link.stats(d) for d in ids]
        faults = {
            k: sum(getattr(s, k) for s in chunks)
            for k in ("drops", "chunks_corrupted", "chunks_duplicated", "chunks_reordered", "chunks_dropped")
        }
        print(
            f"chaos (seed {SEED}): {DEVICES} devices, {cuts} power cuts ({during} during an update), "
            f"link {faults}, {op.restarts} gateway and broker restarts, offers refused {dict(op.refused)}, "
            f"{time.monotonic() - t_start:.0f} s"
        )
        # the faults happened
        assert during > 0 and op.restarts == 2 and all(faults.values()), (during, faults)
    finally:
        fleet.faults.cancel()
        await fleet.aclose(30)
        await op.stop()
        await link.close()
        store.close()
