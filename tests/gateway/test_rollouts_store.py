"""The rollouts' store path (gateway/rollouts.py): what is written is what is
read back, for any members and decisions, and a database reopened (a
gateway restarted) holds the same; revert releases are matched by what they
install."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import RolloutError
from gateway.releases import ReleaseStore
from gateway.rollout_plan import assign
from gateway.rollouts import MemberRow, Rollout, RolloutTable, match_reverts
from gateway.store import Store
from ota.keys import Keys

from ..conftest import DbAt
from .conftest import MakeRelease

_ids = st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
_numbers = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _finite | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def rollout(rid: str, release: str, stages: tuple[float, ...] = (0.5, 1.0)) -> Rollout:
    return Rollout(
        id=rid, release=release, ref="thermostat@2", model="thermostat", cohort="all", stages=stages,
        soak_s=600.0, max_failure_rate=0.05, metrics=("default",), reverts={"0": release}, seed=1,
        state="running", stage=0, stage_started=10.0, created=10.0, updated=10.0,
    )  # fmt: skip


@pytest.fixture
def stored(db_at: DbAt, keys: Keys, make_release: MakeRelease) -> tuple[Path, str]:
    """A database holding one release (the examples of a test share it)."""
    db = db_at()
    with Store(db) as s:
        rel, _ = ReleaseStore(s, root=keys.root_bytes).add(make_release(2).path, 1.0)
    return db, rel.id


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    devices=st.sets(_ids, min_size=1, max_size=60),
    seed=st.integers(0, 2**32),
    decisions=st.lists(
        st.tuples(st.sampled_from(["look", "stage", "halt"]), st.text(max_size=40), _numbers), max_size=5
    ),
    data=st.data(),
)
def test_what_a_rollout_writes_is_what_it_reads_back_after_a_restart(
    stored: tuple[Path, str], devices: set[str], seed: int, decisions: list, data: st.DataObject
) -> None:
    db, release = stored
    rid = data.draw(st.from_regex(r"[0-9a-f]{12}", fullmatch=True))
    stage_of = assign(devices, (0.3, 1.0), seed)
    members = {d: (stage_of[d], data.draw(st.integers(0, 1))) for d in devices}
    with Store(db) as s:
        t = RolloutTable(s)
        if t.get(rid) is not None:
            return
        r = rollout(rid, release)
        t.create(r, members, {"stages": [1]})
        for kind, why, numbers in decisions:
            t.decide(r, 20.0, kind, "pass", why, {"n": numbers})
        some = sorted(devices)[0]
        assert t.set_member(rid, some, update_id="0123456789ab", offered=12.5)
        r2 = t.change(r, 30.0, "stage", "stage 2 passed", {"x": 1}, stage=1, stage_started=30.0)
    with Store(db, readonly=True) as s:  # another connection: what a restarted gateway reads
        t = RolloutTable(s)
        assert t.get(rid) == r2 and t.find(rid) == r2
        back = {m.device: m for m in t.members(rid)}
        assert {d: (m.stage, m.from_counter) for d, m in back.items()} == members
        assert back[some].update_id == "0123456789ab" and back[some].offered == 12.5
        got = t.decisions(rid, 100)
        assert [d["kind"] for d in got] == ["created"] + [k for k, _, _ in decisions] + ["stage"]
        assert [d["numbers"] for d in got[1:-1]] == [{"n": n} for _, _, n in decisions]
        assert t.looks(rid, 0) == sum(1 for k, _, _ in decisions if k == "look")
        assert t.look_numbers(rid, 0) == [{"n": n} for k, _, n in decisions if k == "look"]


def test_a_member_that_left_is_never_written_back_into_its_rollout(stored: tuple[Path, str]) -> None:
    # a step writes what it decided from rows read before it awaited the
    # judge; a device updated by hand meanwhile has left, and stays left
    db, release = stored
    with Store(db) as s:
        t = RolloutTable(s)
        t.create(rollout("0123456789ab", release), {"th-1": (0, 0), "th-2": (0, 0)}, {})
        assert t.set_member("0123456789ab", "th-1", left=15.0)
        assert not t.set_member("0123456789ab", "th-1", update_id="aaaaaaaaaaaa", offered=16.0)
        assert not t.set_member("0123456789ab", "th-1", left=17.0)  # (it left once, at 15)
        assert t.member("0123456789ab", "th-1") == MemberRow("0123456789ab", "th-1", 0, 0, left=15.0)
        assert t.set_member("0123456789ab", "th-2", revert_id="bbbbbbbbbbbb")
        assert t.member("0123456789ab", "th-2") == MemberRow(
            "0123456789ab", "th-2", 0, 0, revert_id="bbbbbbbbbbbb"
        )
        t.rejoin("0123456789ab", "th-1", 14.0)  # not the time it left: it left again since
        assert t.member("0123456789ab", "th-1").left == 15.0  # type: ignore[union-attr]
        t.rejoin("0123456789ab", "th-1", 15.0)  # its update by hand did not start
        assert t.member("0123456789ab", "th-1").left is None  # type: ignore[union-attr]
        with pytest.raises(TypeError, match="stage"):
            t.set_member("0123456789ab", "th-2", stage=3)


def test_a_revert_is_matched_by_what_it_installs(db_at: DbAt, keys: Keys, make_release: MakeRelease) -> None:
    with Store(db_at()) as s:
        releases = ReleaseStore(s, root=keys.root_bytes)
        r2, _ = releases.add(make_release(2, extra="two").path, 1.0)  # what part of the fleet runs
        r5, _ = releases.add(make_release(5, extra="five").path, 1.0)  # the rollout
        again2, _ = releases.add(make_release(6, extra="two").path, 1.0)  # release 2's set, signed again
        factory, _ = releases.add(make_release(7).path, 1.0)  # a set the gateway never saw installed
        stored = {r.counter: r for r in releases.list("thermostat")}
        assert match_reverts(r5, [again2, factory], [0, 2], stored) == {"2": again2.id, "0": factory.id}
        with pytest.raises(RolloutError, match=r"no revert for the members that run thermostat@2"):
            match_reverts(r5, [factory], [0, 2], stored)
        with pytest.raises(RolloutError, match="has counter 2"):
            match_reverts(r5, [r2], [0], stored)
        # a later rollout: the factory set signed again, its files those of the revert stored before
        r9, _ = releases.add(make_release(9, extra="nine").path, 1.0)
        factory2, _ = releases.add(make_release(10).path, 1.0)
        stored = {r.counter: r for r in releases.list("thermostat")}
        with pytest.raises(RolloutError, match="no revert for the members that run the factory set"):
            match_reverts(r9, [factory2], [0, 7], stored)  # (which set release 7 is, not known)
        assert match_reverts(r9, [factory2], [0, 7], stored, [factory.id]) == {
            "7": factory2.id,
            "0": factory2.id,
        }
        # boards provisioned since with another factory set: its revert, which matches nothing, is counter 0's
        newer, _ = releases.add(make_release(11, extra="newer factory").path, 1.0)
        got = match_reverts(r9, [factory2, newer], [0, 7], stored, [factory.id])
        assert got == {"7": factory2.id, "0": newer.id}
