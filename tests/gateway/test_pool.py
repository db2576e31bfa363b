"""A pool of gateway workers on one database: who is in it, which devices
each one owns, and the leases of what must happen once (gateway/pool.py),
on both engines."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pool import TTL_S, Pool, PoolError, owner_of
from gateway.pool_events import LIMIT, _events, batches
from gateway.store import Store

from ..conftest import DbAt

T0 = 1_795_400_000.0
DEVICES = [f"th-{i}" for i in range(600)]


def test_each_device_has_one_owner_and_a_worker_joining_takes_only_its_share(db_at: DbAt) -> None:
    with Store(db_at()) as s1, Store(db_at()) as s2, Store(db_at()) as s3:
        a, b, c = Pool(s1, "gw-a"), Pool(s2, "gw-b"), Pool(s3, "gw-c")
        a.beat(T0)
        b.beat(T0)
        assert a.beat(T0 + 0.5) == b.beat(T0 + 0.5) == ["gw-a", "gw-b"]
        before = {d: [p.owns(d) for p in (a, b)] for d in DEVICES}
        assert all(sum(owners) == 1 for owners in before.values())
        assert 200 < sum(owners[0] for owners in before.values()) < 400  # (about half each)
        # a third joins: it takes about a third, from both, and nothing else moves
        for p in (c, a, b):
            p.beat(T0 + 1)
        after = {d: [p.owns(d) for p in (a, b, c)] for d in DEVICES}
        assert all(sum(owners) == 1 for owners in after.values())
        moved = [d for d in DEVICES if after[d][:2] != before[d]]
        assert all(after[d][2] for d in moved) and 120 < len(moved) < 280
        assert {d for d in DEVICES if after[d][2]} == set(moved)


def test_a_silent_worker_leaves_the_pool_and_its_devices_go_to_the_others(db_at: DbAt) -> None:
    with Store(db_at()) as s1, Store(db_at()) as s2:
        a, b = Pool(s1, "gw-a"), Pool(s2, "gw-b")
        a.beat(T0)
        b.beat(T0)
        a.beat(T0)
        assert not all(a.owns(d) for d in DEVICES)
        # b is killed: a hears nothing of it for TTL_S, and owns every device
        assert a.beat(T0 + TTL_S - 0.1) == ["gw-a", "gw-b"]
        assert a.beat(T0 + TTL_S + 0.1) == ["gw-a"]
        assert all(a.owns(d) for d in DEVICES)
        # it comes back under its name: its share is its own again
        b.beat(T0 + 10)
        a.beat(T0 + 10)
        theirs = [d for d in DEVICES if owner_of(d, ["gw-a", "gw-b"]) == "gw-b"]
        assert [d for d in DEVICES if b.owns(d)] == theirs
        assert {w.name for w in a.workers()} == {"gw-a", "gw-b"}


def test_a_lease_is_held_by_one_worker_renewed_by_it_and_taken_over_when_it_expires(db_at: DbAt) -> None:
    with Store(db_at()) as s1, Store(db_at()) as s2:
        a, b = Pool(s1, "gw-a"), Pool(s2, "gw-b")
        assert a.holds("updates", T0) and not b.holds("updates", T0 + 1)
        assert a.holds("updates", T0 + 3)  # renewed: until T0 + 3 + TTL_S
        assert not b.holds("updates", T0 + TTL_S + 1)
        assert a.holds("rollouts", T0 + 4) and a.leases()["rollouts"] == ("gw-a", T0 + 4 + TTL_S)
        # a stops renewing (killed): b takes both once they expired, and a knows it lost them
        assert b.holds("updates", T0 + 3 + TTL_S) and b.holds("rollouts", T0 + 4 + TTL_S)
        assert not a.holds("updates", T0 + 3 + TTL_S + 0.5)
        assert b.leases() == {
            "updates": ("gw-b", T0 + 3 + 2 * TTL_S),
            "rollouts": ("gw-b", T0 + 4 + 2 * TTL_S),
        }
        # a worker that stops cleanly hands over at once
        b.beat(T0 + 10)
        b.release()
        assert a.holds("updates", T0 + 10.1) and [w.name for w in a.workers()] == []


def test_workers_on_machines_whose_clocks_differ_keep_to_the_databases(db_at: DbAt) -> None:
    """On PostgreSQL the pool's times are the database's (Pool.skew): a
    worker whose machine runs 30 s ahead takes no lease its holder renews
    and drops no live worker from the pool; one 30 s behind keeps the
    others. (SQLite's workers are on one machine: its clock is theirs.)"""
    ahead, behind = (lambda: time.time() + 30), (lambda: time.time() - 30)
    with Store(db_at()) as s1, Store(db_at()) as s2, Store(db_at()) as s3:
        if s1.db.kind != "postgresql":
            pytest.skip("SQLite's workers share one machine, and its clock")
        a, b, c = Pool(s1, "gw-a"), Pool(s2, "gw-b", wall=ahead), Pool(s3, "gw-c", wall=behind)
        for p in (a, b, c):
            p.beat(p.wall())
        assert a.holds("leader", a.wall())
        for _ in range(3):
            for p in (a, b, c):
                assert p.beat(p.wall()) == ["gw-a", "gw-b", "gw-c"]
            assert a.holds("leader", a.wall())
            assert not b.holds("leader", b.wall()) and not c.holds("leader", c.wall())
        assert b.skew == pytest.approx(-30, abs=0.5) and c.skew == pytest.approx(30, abs=0.5)
        # a clock reading answered slowly (a reconnect) is not taken: it says too little
        readings = iter([time.time(), time.time() + 11])
        slow = Pool(s1, "gw-s", wall=lambda: next(readings))
        slow._measure_skew()
        assert slow.skew == 0.0
        # a stops: the lease is free, and the first to ask takes it
        a.release()
        assert b.holds("leader", b.wall()) and not c.holds("leader", c.wall())


def test_an_expired_lease_raced_for_by_four_workers_goes_to_one(db_at: DbAt) -> None:
    at = db_at()
    with Store(at) as s:
        assert Pool(s, "gw-old").holds("rollouts", T0)

    def race(i: int) -> list[bool]:
        with Store(at) as s:  # (a worker of its own, on its own connection)
            pool = Pool(s, f"gw-{i}")
            return [pool.holds(f"lease-{n}", T0 + TTL_S + n) for n in range(30)] + [
                pool.holds("rollouts", T0 + TTL_S + 1)
            ]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        held = list(pool.map(race, range(4)))
    for n in range(31):
        assert sum(mine[n] for mine in held) == 1, n


def test_a_worker_alone_owns_everything_and_writes_nothing(db_at: DbAt) -> None:
    with Store(db_at()) as s:
        alone = Pool(s)
        assert alone.beat(T0) == ["gateway"] and alone.owns("th-1") and alone.holds("updates", T0)
        alone.release()
        assert alone.workers() == [] and alone.leases() == {}


@pytest.mark.parametrize("name", ["", "GW", "gw/1", "gw 1", "x" * 33, "$share"])
def test_a_worker_s_name_is_an_id(db_at: DbAt, name: str) -> None:
    with Store(db_at()) as s, pytest.raises(PoolError):
        Pool(s, name)


def test_two_processes_under_one_name_are_refused(db_at: DbAt) -> None:
    with Store(db_at()) as s:
        a = Pool(s, "gw-a")
        a.beat(T0)
        # (another process, alive)
        s.db.execute("UPDATE pool_workers SET pid = ? WHERE name = 'gw-a'", (os.getppid(),))
        with pytest.raises(PoolError, match="another worker named 'gw-a' runs"):
            a.beat(T0 + 1)
        # once that one is silent past TTL_S, the name is free again
        assert a.beat(T0 + 1 + TTL_S) == ["gw-a"]


def test_a_worker_killed_on_this_machine_leaves_its_name_free_at_once(db_at: DbAt) -> None:
    """A supervisor that starts a killed worker again at once is not refused for
    the 5 s its row still says it was seen: its process is gone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with Store(db_at()) as s:
        a = Pool(s, "gw-a")
        a.beat(T0)
        s.db.execute("UPDATE pool_workers SET pid = ? WHERE name = 'gw-a'", (gone.pid,))
        again = Pool(s, "gw-a")
        again.check_name(T0 + 1)
        assert again.beat(T0 + 1) == ["gw-a"]
        # a dead pid of another host sharing the machine id (containers of one image) is refused
        s.db.execute("UPDATE pool_workers SET pid = ?, host = 'box-2' WHERE name = 'gw-a'", (gone.pid,))
        with pytest.raises(PoolError):
            Pool(s, "gw-a").check_name(T0 + 2)
        s.db.execute("UPDATE pool_workers SET host = ? WHERE name = 'gw-a'", (again.host,))
        # a row written before rows said their machine (machine NULL: the host name is), its process gone
        s.db.execute("UPDATE pool_workers SET machine = NULL WHERE name = 'gw-a'")
        late = Pool(s, "gw-a", host=again.host)
        late.check_name(T0 + 2)
        assert late.beat(T0 + 2) == ["gw-a"]
        s.db.execute("UPDATE pool_workers SET pid = ? WHERE name = 'gw-a'", (gone.pid,))
        # another container of the same machine id, running the gateway as the same process number
        twin = Pool(s, "gw-a", host=again.host)
        twin.host = "box-3"
        s.db.execute("UPDATE pool_workers SET pid = ? WHERE name = 'gw-a'", (os.getpid(),))
        with pytest.raises(PoolError):
            twin.check_name(T0 + 2)
        twin.release()
        assert [w.name for w in late.workers()] == ["gw-a"]
        # one of this machine that runs, or of another machine, is still refused
        s.db.execute("UPDATE pool_workers SET pid = ? WHERE name = 'gw-a'", (os.getppid(),))
        with pytest.raises(PoolError):
            Pool(s, "gw-a").check_name(T0 + 2)


def test_a_worker_refused_for_its_name_takes_nothing_of_the_one_that_runs(db_at: DbAt) -> None:
    with Store(db_at()) as s:
        a = Pool(s, "gw-a")
        a.beat(T0)
        assert a.holds("updates", T0)
        namesake = Pool(s, "gw-a", host="elsewhere")
        with pytest.raises(PoolError, match="another worker named 'gw-a' runs"):
            namesake.check_name(T0 + 1)
        with pytest.raises(PoolError):
            namesake.beat(T0 + 1)
        namesake.release()  # (as a worker stopping does, whatever stopped it)
        assert [w.name for w in a.workers()] == ["gw-a"] and a.leases()["updates"][0] == "gw-a"
        # a worker leaves with its own rows only: not with a namesake's that took the name over
        s.db.execute("UPDATE pool_workers SET pid = pid + 1 WHERE name = 'gw-a'")
        a.release()
        assert [w.name for w in a.workers()] == ["gw-a"] and a.leases()["updates"][0] == "gw-a"


def test_of_workers_started_under_one_name_at_the_same_instant_one_runs(db_at: DbAt) -> None:
    """Taking the name is one statement: of eight processes (here threads, each
    of its own machine, on its own connection) that ask for a free name at
    once, or for one whose holder fell silent, exactly one is let run."""
    at = db_at()
    with Store(at):
        pass  # (its tables made first: what is raced for is the name)
    barrier = threading.Barrier(8, timeout=60)

    def start(i: int, now: float) -> bool:
        with Store(at) as s:
            pool = Pool(s, "gw-a", host=f"box-{i}")
            barrier.wait()
            try:
                pool.check_name(now)
            except PoolError as exc:
                assert "another worker named 'gw-a' runs (on box-" in str(exc)
                return False
            return True

    for now in (T0, T0 + TTL_S + 1):  # (a free name; then one its holder, the first, left silent)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            started = list(pool.map(lambda i, now=now: start(i, now), range(8)))
        assert sum(started) == 1, started


def test_the_pool_s_token_is_new_when_no_other_worker_is_alive(db_at: DbAt) -> None:
    with Store(db_at()) as s:
        a, b = Pool(s, "gw-a"), Pool(s, "gw-b")
        first = a.token(T0)
        a.beat(T0)
        assert b.token(T0 + 1) == first  # (joining a pool that runs: its token)
        assert a.token(T0 + 1 + TTL_S) != first  # (the others long gone: a fresh one)


@given(sizes=st.lists(st.integers(0, 9000), max_size=40), worker=st.sampled_from(["gw-1", "w" * 32]))
def test_the_pool_s_live_events_go_in_notifications_postgresql_takes_in_order(
    sizes: list[int], worker: str
) -> None:
    """pool_events.batches: every notification is JSON of at most LIMIT bytes
    (PostgreSQL refuses 8000 and more), the events keep their order, and only
    an event too large to go alone is left out."""
    events = [
        json.dumps(["telemetry", f"th-{i}", {"x": "é" * (n // 2)}], ensure_ascii=False)
        for i, n in enumerate(sizes)
    ]
    events += [events[-1]] if events else []
    notes, left_out = batches(worker, events)
    assert all(len(n.encode()) <= LIMIT for n in notes)
    bodies = [json.loads(n) for n in notes]
    assert all(b["w"] == worker and b["e"] for b in bodies)
    passed = [json.dumps(e, ensure_ascii=False) for b in bodies for e in b["e"]]
    fits = [e for e in events if len(f'{{"w": {json.dumps(worker)}, "e": [{e}]}}'.encode()) <= LIMIT]
    assert passed == fits and left_out == len(events) - len(fits)


@given(
    payload=st.one_of(
        st.text(max_size=200),
        st.sampled_from(["[" * 5000, '{"w":"x","e":null}', '{"w":"x","e":5}', '{"w":"x","e":[[1,2]]}', "{}"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.sampled_from(["w", "e", "watching", "x"]), inner, max_size=3)
            ),
            max_leaves=12,
        ).map(json.dumps),
    )
)
def test_a_notification_of_any_form_on_the_pool_s_channel_is_told_apart_never_raising(payload: str) -> None:
    """Anyone on the database may NOTIFY the pool's channel: what is not of
    the pool's form passes nothing on, and raises nothing (a raise would
    stop the worker)."""
    watching, events = _events(payload, "gw-1")
    assert isinstance(watching, bool)
    for kind, dev, msg in events:
        assert kind in ("telemetry", "online", "offline") and isinstance(dev, str) and isinstance(msg, dict)


def test_the_pool_s_own_notifications_are_read_back_as_sent() -> None:
    events = [
        json.dumps(["telemetry", "th-1", {"seq": 1}]),
        json.dumps(["offline", "th-2", {"reason": "lost"}]),
    ]
    notes, _ = batches("gw-2", events)
    assert _events(notes[0], "gw-1") == (
        False,
        [("telemetry", "th-1", {"seq": 1}), ("offline", "th-2", {"reason": "lost"})],
    )
    assert _events(notes[0], "gw-2") == (False, [])  # (its own)
    assert _events(json.dumps({"w": "gw-2", "watching": 1}), "gw-1") == (True, [])
