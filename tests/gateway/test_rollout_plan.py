"""The rollout's decisions (gateway/rollout_plan.py): pure, so tested on
made-up fleets, with hypothesis where a rule holds for every fleet."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import RolloutError
from gateway.rollout_plan import (
    MEMBER_STATES,
    REVERT_RETRY_S,
    REVERT_TRIES,
    Member,
    Verdict,
    assign,
    parse_duration,
    parse_percent,
    parse_stages,
    stage_sizes,
    step,
)
from gateway.settings import Window

NOON = 20000 * 86400 + 12 * 3600  # a UTC noon
PASS = Verdict(halt=False, passing=True)


def test_stages_durations_and_rates_parse_and_say_what_is_wrong() -> None:
    assert parse_stages("1%,10%,50%,100%") == (0.01, 0.10, 0.50, 1.0)
    assert parse_stages("100%") == (1.0,)
    assert parse_duration("10m") == 600 and parse_duration("6h") == 21600 and parse_duration("90") == 90
    assert parse_percent("5%", "x") == 0.05 and parse_percent("0.25", "x") == 0.25
    for text, why in [
        ("", "stages are 1 to 20 percentages"),
        ("10%,5%,100%", "each above the one before"),
        ("0%,100%", "rise above 0%"),
        ("10%,50%", "the last stage must be 100%"),
        ("10%,x,100%", "a stage must be a percentage"),
        ("150%", "within 0% and 100%"),
    ]:
        with pytest.raises(RolloutError, match=why):
            parse_stages(text)
    for text in ("ten minutes", "10y", "-5m"):
        with pytest.raises(RolloutError, match="a duration is"):
            parse_duration(text)
    with pytest.raises(RolloutError, match="more than 30 days"):
        parse_duration("31d")


@given(st.integers(0, 3000), st.lists(st.floats(0.001, 0.999), max_size=5))
def test_stage_sizes_rise_reach_everyone_and_give_each_stage_its_share(
    n: int, fractions: list[float]
) -> None:
    stages = (*sorted(set(fractions)), 1.0)
    sizes = stage_sizes(n, stages)
    assert len(sizes) == len(stages) and sizes[-1] == n
    assert all(b >= a for a, b in itertools.pairwise(sizes))
    for f, k in zip(stages, sizes, strict=True):
        assert k >= min(n, int(f * n))  # never less than its share


@given(st.sets(st.text("abc123-", min_size=1, max_size=6), max_size=300), st.integers(0, 2**32))
def test_assignment_is_the_same_for_the_same_seed_and_fills_the_stages(devices: set[str], seed: int) -> None:
    stages = (0.1, 0.5, 1.0)
    a = assign(devices, stages, seed)
    assert a == assign(sorted(devices, reverse=True), stages, seed)
    assert set(a) == devices
    sizes = stage_sizes(len(devices), stages)
    for s, k in enumerate(sizes):
        assert sum(1 for v in a.values() if v <= s) == k


def test_the_first_stage_is_a_random_sample_not_the_first_ids() -> None:
    devices = [f"th-{i:03d}" for i in range(200)]
    first = {d for d, s in assign(devices, (0.1, 1.0), 7).items() if s == 0}
    assert len(first) == 20 and first != set(devices[:20])
    assert first != {d for d, s in assign(devices, (0.1, 1.0), 8).items() if s == 0}


def fleet(n: int, stage_of: int = 0, **over: object) -> list[Member]:
    return [Member(f"d{i}", i % 2 if stage_of else 0, online=True, **over) for i in range(n)]  # type: ignore[arg-type]


def run(members: list[Member], state: str = "running", stage: int = 0, started: float = NOON, **kw: object):  # type: ignore[no-untyped-def]
    args = {"n_stages": 2, "soak_s": 600.0, "verdict": None, "now": NOON, "can_revert": True} | kw
    return step(state, stage, started, members=members, **args)  # type: ignore[arg-type]


def test_a_running_stage_offers_to_its_online_members_that_may_go_now() -> None:
    window = Window.parse("01:00-03:00")
    members = [
        Member("go", 0, online=True),
        Member("later-stage", 1, online=True),
        Member("off", 0, online=False),
        Member("ask", 0, online=True, policy="ask"),
        Member("asked", 0, online=True, policy="ask", decision="now"),
        Member("win", 0, online=True, policy="window", window=window),
        Member(
            "win-local", 0, online=True, policy="window", window=window, utc_offset_min=-600
        ),  # 02:00 there
        Member("busy", 0, online=True, update="deferred"),
        Member("done", 0, online=True, update="committed"),
        Member("gone", 0, online=True, left=True),
    ]
    plan = run(members)
    assert set(plan.offer) == {"go", "asked", "win-local"}
    assert plan.state is None and plan.stage is None
    shown = {m.device: m.shown(0, NOON) for m in members}
    assert shown == {
        "go": "ready",
        "later-stage": "pending",
        "off": "offline",
        "ask": "awaiting_owner",
        "asked": "ready",
        "win": "waiting_window",
        "win-local": "ready",
        "busy": "deferred",
        "done": "committed",
        "gone": "left",
    }
    assert sum(plan.counts.values()) == len(members) and set(plan.counts) == set(MEMBER_STATES)


def test_the_next_stage_waits_for_the_soak_and_a_passing_verdict() -> None:
    members = fleet(10, stage_of=1)
    assert run(members, verdict=PASS, now=NOON + 599).stage is None  # not soaked yet
    assert run(members, verdict=Verdict(halt=False, passing=False), now=NOON + 601).stage is None
    assert run(members, verdict=None, now=NOON + 601).stage is None  # the judge was not asked
    plan = run(members, verdict=PASS, now=NOON + 601)
    assert plan.stage == 1 and plan.reason == "stage 1 passed"
    last = run(members, stage=1, verdict=PASS, now=NOON + 601)
    assert last.state == "completed"


def test_a_halting_verdict_halts_and_the_halted_rollout_reverts_who_took_the_release() -> None:
    members = [
        Member("a", 0, online=True, update="committed"),
        Member("b", 0, online=True, update="trial"),
        Member("c", 0, online=False, update="committed"),  # reverted when it returns
        Member("d", 0, online=True, update="rolled_back"),
        Member("e", 0, online=True, update="committed", revert="downloading"),
        Member("f", 1, online=True),
        # cancelled by the halt, but it had staged the release and runs it now
        Member("g", 0, online=True, update="failed", runs=True),
    ]
    plan = run(members, verdict=Verdict(halt=True, passing=False, reason="crashes"))
    assert (plan.state, plan.reason, plan.offer) == ("halted", "crashes", ())
    back = run(members, state="halted")
    # b, on trial, would refuse an offer: it is reverted once committed
    assert set(back.revert) == {"a", "g"} and back.offer == ()
    assert run(members, state="halted", can_revert=False).revert == ()


def test_a_failed_revert_is_offered_again_after_a_pause_until_its_tries_are_spent() -> None:
    def took(dev: str, revert: str, tries: int, ended: float | None = None, online: bool = True) -> Member:
        return Member(dev, 0, online, update="committed", revert=revert, reverts=tries, revert_ended=ended)

    long_ago, just_now = NOON - REVERT_RETRY_S, NOON - REVERT_RETRY_S + 1
    members = [
        took("again", "failed", 1, long_ago),
        took("soon", "failed", 1, just_now),
        took("rolled", "rolled_back", 2, long_ago),
        took("away", "failed", 1, long_ago, online=False),
        took("spent", "failed", REVERT_TRIES, long_ago),
        took("busy", "downloading", 2),
        took("back", "committed", 1),
    ]
    plan = run(members, state="halted")
    assert set(plan.revert) == {"again", "rolled"} and plan.revert_failed == ("spent",)
    assert [m.shown(0, NOON) for m in members] == [
        *["reverting"] * 4,
        "revert_failed",
        "reverting",
        "reverted",
    ]
    assert plan.counts["revert_failed"] == 1
    # the one offline is offered its next try when it returns; the spent one never
    assert set(run(members, state="halted", now=NOON + 2).revert) == {"again", "soon", "rolled"}
    assert set(plan.unsettled) == {"again", "soon", "rolled", "away", "busy"}


def test_a_finished_rollout_names_the_members_it_may_still_act_on() -> None:
    members = [
        Member("done", 0, online=True, update="committed"),
        Member("failed", 0, online=True, update="failed"),
        Member("rolled", 0, online=True, update="rolled_back"),
        Member("gone", 0, left=True),
        Member("away", 0),  # offered the release when it comes back
        Member("trial", 0, online=True, update="trial"),
    ]
    completed = run(members, state="completed")
    assert completed.offer == () and set(completed.unsettled) == {"away", "trial"}
    assert run(members[:4], state="completed").unsettled == ()
    # halted: a member that took the release until it is reverted, and one on trial
    halted = run(members, state="halted")
    assert set(halted.unsettled) == {"done", "trial"} and halted.revert == ("done",)
    reverted = [*members[1:4], Member("done", 0, online=True, update="committed", revert="committed")]
    assert run(reverted, state="halted").unsettled == ()
    assert run(members, state="halted", can_revert=False).unsettled == ()  # keeps the release
    # cancelled by the halt, yet it runs the release: it is reverted too
    late = Member("late", 0, online=True, update="failed", runs=True)
    assert run([late], state="halted").unsettled == ("late",)
    assert run(members, state="running").unsettled == ()


@given(
    st.lists(
        st.builds(
            Member,
            device=st.text("abcdef", min_size=1, max_size=4),
            stage=st.integers(0, 3),
            online=st.booleans(),
            policy=st.sampled_from(["auto", "ask", "window"]),
            window=st.none() | st.just(Window(60, 180)),
            decision=st.sampled_from([None, "now", "later", "never"]),
            until=st.none() | st.sampled_from([NOON - 1, NOON, NOON + 1]),
            update=st.none() | st.sampled_from(["offered", "downloading", "deferred", "committed", "failed"]),
            left=st.booleans(),
        ),
        max_size=40,
        unique_by=lambda m: m.device,
    ),
    st.sampled_from(["running", "paused", "halted", "aborted", "completed"]),
    st.integers(0, 3),
)
def test_nothing_outside_the_rules_is_ever_offered(members: list[Member], state: str, stage: int) -> None:
    plan = run(members, state=state, stage=stage, n_stages=4)
    by_id = {m.device: m for m in members}
    if state in ("paused", "aborted", "halted"):
        assert plan.offer == ()
    for dev in plan.offer:
        m = by_id[dev]
        assert m.stage <= stage and m.online and not m.left and m.update is None
        assert m.decision != "never"
        assert m.decision != "later" or (m.until is not None and m.until <= NOON)
        assert m.policy != "ask" or m.decision is not None
        assert m.policy != "window" or m.decision == "now" or m.window is None or m.window.contains(NOON, 0)
    for dev in plan.revert:
        assert by_id[dev].update == "committed" and state == "halted"


def test_the_owner_s_decision_lets_a_member_go_now_later_or_never() -> None:
    window = Window.parse("01:00-03:00")  # (noon UTC is outside it)
    members = [
        Member("ask-now", 0, online=True, policy="ask", decision="now"),
        Member("win-now", 0, online=True, policy="window", window=window, decision="now"),
        Member("auto-later", 0, online=True, decision="later", until=NOON + 60),
        Member("ask-later-due", 0, online=True, policy="ask", decision="later", until=NOON),
        Member("win-later-due", 0, online=True, policy="window", window=window, decision="later", until=NOON),
        Member("never", 0, online=True, decision="never"),
        Member("never-later-stage", 1, online=True, decision="never"),
        Member("never-cancelled", 0, online=True, decision="never", update="failed"),
        Member("never-too-late", 0, online=True, decision="never", update="committed"),
        Member("later-offline", 0, online=False, decision="later", until=NOON + 60),
    ]
    plan = run(members)
    assert set(plan.offer) == {"ask-now", "win-now", "ask-later-due"}
    assert {m.device: m.shown(0, NOON) for m in members} == {
        "ask-now": "ready",
        "win-now": "ready",  # the owner's now goes outside the window
        "auto-later": "postponed",
        "ask-later-due": "ready",  # a later that is due is the owner's yes
        "win-later-due": "waiting_window",  # and the window still applies
        "never": "declined",
        "never-later-stage": "declined",
        "never-cancelled": "declined",  # its offer ended by the owner's never
        "never-too-late": "committed",
        "later-offline": "offline",
    }
    assert plan.counts["declined"] == 3 and plan.counts["postponed"] == 1
    # a completed rollout waits for the postponed, not for the declined
    done = run(members, state="completed")
    assert "auto-later" in done.unsettled and "later-offline" in done.unsettled
    assert not {"never", "never-later-stage", "never-cancelled"} & set(done.unsettled)
    # once the later's time has come the member goes
    assert "auto-later" in run(members, now=NOON + 60).offer
