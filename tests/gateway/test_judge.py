"""The health judge (gateway/judge.py), pure: the spending of alpha over the
looks, each rule of a metric's verdict, the hard-failure rule, what a lying
device can and cannot do (one test per attack), properties over arbitrary
data (hypothesis), and a seeded Monte Carlo of the false-halt rate and the
power on simulated thermostat fleets (slow)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.judge import (
    DEFAULT_MAX_FAILURE_RATE,
    MAX_ABS_VALUE,
    Direction,
    Group,
    HardCounts,
    JudgeError,
    Judgement,
    MetricSpec,
    MetricVerdict,
    Observation,
    Policy,
    Result,
    Spending,
    judge,
    judge_hard,
)

HOUR = 3600.0
T0 = 1_800_000_000.0  # the stage starts
NOW = T0 + 6 * HOUR
DEV = MetricSpec("deviation", Direction.LOWER, unit="K")
ONE_LOOK = Policy(looks=1)
ORDER = {Result.PASS: 0, Result.MARGINAL: 1, Result.FAIL: 2}

_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def observations(
    treated: Sequence[float | None],
    control: Sequence[float | None],
    metric: str = "deviation",
    window: float = T0,
    prefix: str = "",
    treated_base: Sequence[float | None] | None = None,
    control_base: Sequence[float | None] | None = None,
) -> list[Observation]:
    """Treated devices t0.. and control devices c0.. over one window; with
    baselines when given."""

    def base(values: Sequence[float | None] | None, i: int) -> dict[str, float | None]:
        return {} if values is None else {metric: values[i]}

    out = [
        Observation(f"{prefix}t{i}", Group.TREATMENT, window, {metric: v}, T0, base(treated_base, i))
        for i, v in enumerate(treated)
    ]
    out += [
        Observation(f"c{i}", Group.CONTROL, window, {metric: v}, None, base(control_base, i))
        for i, v in enumerate(control)
    ]
    return out


def verdict(
    obs: Sequence[Observation],
    spec: MetricSpec = DEV,
    policy: Policy = ONE_LOOK,
    look: int = 1,
    now: float = NOW,
) -> MetricVerdict:
    return judge([spec], policy, obs, HardCounts(len(obs)), look=look, now=now).metrics[0]


def lognormal(seed: int, n: int, scale: float = 0.4, sigma: float = 0.2) -> list[float]:
    return [float(x) for x in scale * np.random.default_rng(seed).lognormal(0.0, sigma, n)]


NULL = observations(lognormal(1, 40), lognormal(2, 200))  # treatment as good as control
BAD = observations([1.2 * x for x in lognormal(3, 40)], lognormal(4, 200))  # 20% worse: twice the threshold


# ---- alpha over the looks and the metrics ------------------------------------------


def test_obrien_fleming_spends_little_early_and_the_whole_alpha_by_the_last_look() -> None:
    p = Policy()  # alpha 0.01, 3 looks: the worked example of docs/rollouts.md 6
    shares = [p.alpha_at(k) for k in (1, 2, 3)]
    assert shares[0] == pytest.approx(8.1e-6, rel=0.02)
    assert shares[1] == pytest.approx(1.60e-3, rel=0.01)
    assert shares[2] == pytest.approx(8.39e-3, rel=0.01)
    assert sum(shares) == pytest.approx(0.01)


def test_pocock_spends_about_evenly() -> None:
    p = Policy(spending=Spending.POCOCK, looks=4)
    shares = [p.alpha_at(k) for k in (1, 2, 3, 4)]
    assert sum(shares) == pytest.approx(0.01)
    assert max(shares) / min(shares) < 2.5


def test_a_final_look_before_the_last_planned_one_spends_what_is_left() -> None:
    p = Policy()
    assert p.alpha_at(1) + p.alpha_at(2, final=True) == pytest.approx(p.alpha)


def test_critical_metrics_share_the_alpha_of_a_look() -> None:
    specs = [DEV, MetricSpec("duty", Direction.LOWER), MetricSpec("flaps", Direction.LOWER, critical=False)]
    obs = [
        Observation(o.device, o.group, o.window_start, {"deviation": v, "duty": v, "flaps": v}, o.updated_at)
        for o in NULL
        for v in [o.values["deviation"]]
    ]
    j = judge(specs, Policy(), obs, HardCounts(40), look=3, now=NOW)
    share = Policy().alpha_at(3)
    assert [m.alpha for m in j.metrics] == pytest.approx([share / 2, share / 2, share])


@pytest.mark.parametrize("look", [0, 4])
def test_a_look_outside_the_plan_is_refused(look: int) -> None:
    with pytest.raises(JudgeError, match="look"):
        judge([DEV], Policy(), NULL, HardCounts(40), look=look, now=NOW)


@pytest.mark.parametrize(
    "bad",
    [
        {"alpha": 0.0},
        {"alpha": 0.6},
        {"looks": 0},
        {"min_devices": 1},
        {"trim": 0.0},
        {"trim": 0.04},  # cuts no device of 20
        {"min_failures": 1},
        {"max_failure_rate": 1.5},
        {"bucket_s": 0.0},
    ],
)
def test_a_policy_out_of_range_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(JudgeError, match="policy"):
        Policy(**bad)  # type: ignore[arg-type]


def test_a_metric_spec_out_of_range_is_refused() -> None:
    with pytest.raises(JudgeError):
        MetricSpec("deviation", Direction.LOWER, min_effect=-0.1)
    with pytest.raises(JudgeError):
        MetricSpec("", Direction.LOWER)
    assert issubclass(JudgeError, GatewayError)


# ---- a metric's verdict ------------------------------------------------------------


def test_a_clear_regression_of_a_critical_metric_fails_and_halts() -> None:
    j = judge([DEV], ONE_LOOK, BAD, HardCounts(40), look=1, now=NOW)
    m = j.metrics[0]
    assert m.result is Result.FAIL and j.halt and j.result is Result.FAIL and not j.advance
    assert (m.n_treatment, m.n_control) == (40, 200)
    assert m.effect is not None and 0.15 < m.effect < 0.3
    assert m.p_value is not None and m.p_value < m.alpha == pytest.approx(0.01)
    assert m.median_treatment is not None and m.median_control is not None
    assert m.median_treatment > m.median_control
    assert m.reason in j.reasons and "40 treated" in m.reason and "200 control" in m.reason


def test_a_metric_judged_at_a_final_look_stands_at_a_later_one_untested() -> None:
    other = MetricSpec("duty", Direction.LOWER)

    def with_duty(obs: list[Observation]) -> list[Observation]:  # duty: as good as the control's
        duty = [n.values["deviation"] for n in NULL]
        return [replace(o, values=o.values | {"duty": d}) for o, d in zip(obs, duty, strict=True)]

    first = judge([DEV, other], ONE_LOOK, with_duty(NULL), HardCounts(40), look=1, now=NOW, final=True)
    passed = {m.name: m for m in first.metrics}
    # later the stage looks worse on DEV: its verdict at the final look stands
    later = with_duty(BAD)
    j = judge([DEV, other], ONE_LOOK, later, HardCounts(40), look=1, now=NOW, final=True, settled=passed)
    assert j.metrics[0] is passed["deviation"] and not j.halt
    # only what is settled stands: the rest is judged, with the same share of alpha
    j = judge([DEV, other], ONE_LOOK, later, HardCounts(40), look=1, now=NOW, final=True, settled={})
    assert j.metrics[0].result is Result.FAIL and j.halt
    assert j.metrics[0].alpha == pytest.approx(first.metrics[0].alpha)


def test_a_stored_metric_verdict_reads_back_as_it_was() -> None:
    j = judge([DEV], ONE_LOOK, BAD, HardCounts(40), look=1, now=NOW)
    stored = json.loads(json.dumps(j.to_dict()))
    assert MetricVerdict.from_dict(stored["metrics"][0]) == j.metrics[0]
    with pytest.raises(JudgeError, match="not a stored metric verdict"):
        MetricVerdict.from_dict({"name": "deviation"})
    with pytest.raises(JudgeError, match="not a stored metric verdict"):
        MetricVerdict.from_dict(stored["metrics"][0] | {"result": "maybe"})


def test_a_good_release_passes_and_advances_at_the_final_look() -> None:
    j = judge([DEV], ONE_LOOK, NULL, HardCounts(40), look=1, now=NOW)
    assert j.metrics[0].result is Result.PASS and j.result is Result.PASS
    assert j.advance and not j.halt and j.reasons == ()


def test_it_does_not_advance_before_the_final_look() -> None:
    j = judge([DEV], Policy(), NULL, HardCounts(40), look=2, now=NOW)
    assert j.result is Result.PASS and not j.advance and not j.final


def test_a_small_worsening_is_marginal_not_fail() -> None:
    # significant (many devices) but under the threshold
    obs = observations([1.05 * x for x in lognormal(5, 400, sigma=0.1)], lognormal(6, 600, sigma=0.1))
    m = verdict(obs)
    assert m.result is Result.MARGINAL
    assert m.effect is not None and 0 < m.effect < DEV.min_effect
    assert m.p_value is not None and m.p_value <= m.alpha


def test_a_failing_metric_that_is_not_critical_warns_without_halting() -> None:
    spec = replace(DEV, critical=False)
    j = judge([spec], ONE_LOOK, BAD, HardCounts(40), look=1, now=NOW)
    assert j.metrics[0].result is Result.FAIL
    assert not j.halt and j.result is Result.MARGINAL and j.advance


def test_higher_is_better_fails_when_the_treatment_is_lower() -> None:
    spec = MetricSpec("deviation", Direction.HIGHER)
    worse = observations([x / 1.25 for x in lognormal(3, 40)], lognormal(4, 200))
    assert verdict(worse, spec).result is Result.FAIL
    assert verdict(BAD, spec).result is Result.PASS  # higher is better here


def test_too_few_devices_wait() -> None:
    m = verdict(observations(lognormal(1, 19), lognormal(2, 200)))
    assert m.result is Result.WAITING and m.n_treatment == 19 and m.effect is None
    j = judge(
        [DEV], ONE_LOOK, observations(lognormal(1, 40), lognormal(2, 19)), HardCounts(40), look=1, now=NOW
    )
    assert j.result is Result.WAITING and not j.halt and not j.advance


def test_devices_without_data_do_not_count() -> None:
    m = verdict(observations([*lognormal(1, 19), None, None], lognormal(2, 200)))
    assert m.result is Result.WAITING and m.n_treatment == 19 and m.n_ignored == 0


def test_every_value_equal_passes_without_a_p_value() -> None:
    m = verdict(observations([0.0] * 30, [0.0] * 300))
    assert m.result is Result.PASS and m.p_value is None and m.effect == 0.0


def test_resets_against_a_control_with_none_are_worse_without_limit_unless_a_floor_is_set() -> None:
    resets = MetricSpec("resets", Direction.LOWER)
    obs = observations([1.0] * 20 + [0.0] * 20, [0.0] * 200, "resets")
    m = verdict(obs, resets)
    assert m.result is Result.FAIL and m.effect == math.inf
    assert json.loads(json.dumps(judge([resets], ONE_LOOK, obs, HardCounts(40), look=1, now=NOW).to_dict()))
    floored = verdict(obs, replace(resets, floor=2.0))
    assert floored.effect == pytest.approx(0.5 / 2.0)


def test_the_judgement_is_strict_json() -> None:
    j = judge([DEV], ONE_LOOK, BAD, HardCounts(10, failed=1), look=1, now=NOW)
    d = json.loads(json.dumps(j.to_dict(), allow_nan=False))
    assert d["result"] == "fail" and d["halt"] is True
    assert d["metrics"][0]["result"] == "fail" and d["metrics"][0]["n_treatment"] == 40
    assert d["hard"]["failed"] == 1 and d["hard"]["result"] == "marginal"


# ---- like with like: windows and baselines -------------------------------------------


def test_window_start_is_the_first_bucket_boundary_after_the_update() -> None:
    p = Policy(bucket_s=HOUR)
    assert p.window_start(T0 - 10, T0) == T0
    assert p.window_start(T0, T0) == T0
    assert p.window_start(T0 + 1, T0) == T0 + HOUR
    assert p.window_start(T0 + 2.5 * HOUR, T0) == T0 + 3 * HOUR


def test_late_joiners_are_compared_with_the_control_over_their_own_window() -> None:
    # The evening is harder for every room: the control devices' values over
    # the window from 3 h on are higher than over the whole soak. Devices that
    # joined late are as good as the control over the same hours; compared
    # with the control over the whole soak they would look 30% worse.
    late = T0 + 3 * HOUR
    obs = observations(lognormal(1, 30), lognormal(2, 200))
    obs += [
        Observation(f"late{i}", Group.TREATMENT, late, {"deviation": v}, late - 600)
        for i, v in enumerate(lognormal(3, 30, scale=0.52))
    ]
    obs += [
        Observation(f"c{i}", Group.CONTROL, late, {"deviation": v})
        for i, v in enumerate(lognormal(4, 200, scale=0.52))
    ]
    m = verdict(obs)
    assert m.result is Result.PASS and m.strata == 2 and m.n_treatment == 60 and m.n_control == 200
    pooled = verdict(
        [replace(o, window_start=T0, updated_at=T0) if o.group is Group.TREATMENT else o for o in obs]
    )
    assert pooled.result is Result.FAIL  # what comparing unlike with unlike would have said


def test_a_regression_among_late_joiners_alone_is_found() -> None:
    late = T0 + 2 * HOUR
    obs = observations(lognormal(1, 30), lognormal(2, 200))
    obs += [
        Observation(f"late{i}", Group.TREATMENT, late, {"deviation": 1.3 * v}, late - 60)
        for i, v in enumerate(lognormal(3, 30))
    ]
    obs += [
        Observation(f"c{i}", Group.CONTROL, late, {"deviation": v}) for i, v in enumerate(lognormal(4, 200))
    ]
    assert verdict(obs).result is not Result.PASS


def test_devices_updated_too_recently_are_pending() -> None:
    obs = observations(lognormal(1, 30), lognormal(2, 200))
    recent = NOW - 600
    obs += [
        Observation(f"new{i}", Group.TREATMENT, recent, {"deviation": 9.0}, recent - 60) for i in range(25)
    ]
    obs += [Observation(f"c{i}", Group.CONTROL, recent, {"deviation": 0.4}) for i in range(200)]
    m = verdict(obs)
    assert m.n_pending == 25 and m.n_treatment == 30 and m.result is Result.PASS


def test_treated_devices_without_a_control_over_their_window_are_pending() -> None:
    obs = observations(lognormal(1, 30), lognormal(2, 200))
    obs += [Observation(f"x{i}", Group.TREATMENT, T0 + HOUR, {"deviation": 9.0}, T0) for i in range(5)]
    m = verdict(obs)
    assert m.n_pending == 5 and m.n_treatment == 30


def test_a_window_that_starts_before_the_update_is_refused() -> None:
    obs = [Observation("t0", Group.TREATMENT, T0, {"deviation": 0.4}, T0 + 60)]
    with pytest.raises(JudgeError, match="old release"):
        verdict(obs)


@pytest.mark.parametrize(
    "obs",
    [
        [Observation("d", Group.TREATMENT, T0, {}, T0), Observation("d", Group.CONTROL, T0, {})],
        [Observation("d", Group.TREATMENT, T0, {}, T0), Observation("d", Group.TREATMENT, T0, {}, T0)],
        [Observation("d", Group.CONTROL, T0, {}), Observation("d", Group.CONTROL, T0, {})],
        [Observation("d", Group.TREATMENT, T0, {})],
        [Observation("d", Group.CONTROL, T0, {}, T0)],
        [Observation("d", Group.CONTROL, math.nan, {})],
        [Observation("d", Group.CONTROL, T0, {"deviation": "0.4"})],  # type: ignore[dict-item]
    ],
    ids=[
        "both-groups",
        "treated-twice",
        "control-twice-one-window",
        "no-update-time",
        "control-updated",
        "nan-window",
        "string",
    ],
)
def test_inconsistent_input_is_refused(obs: list[Observation]) -> None:
    with pytest.raises(JudgeError):
        verdict(obs)


def test_change_from_baseline_sees_through_the_spread_between_rooms() -> None:
    # rooms differ by a factor of two or more; each device's change from its
    # own baseline carries the 20% regression the levels hide
    rng = np.random.default_rng(8)
    rooms = 0.4 * rng.lognormal(0.0, 0.6, 230)
    before = rooms * rng.lognormal(0.0, 0.05, 230)
    after = rooms * rng.lognormal(0.0, 0.05, 230)
    after[:30] *= 1.2
    levels = observations(list(after[:30]), list(after[30:]))
    paired = observations(
        list(after[:30]), list(after[30:]), treated_base=list(before[:30]), control_base=list(before[30:])
    )
    assert verdict(levels).result is not Result.FAIL
    m = verdict(paired)
    assert m.result is Result.FAIL and m.paired and m.effect is not None and 0.12 < m.effect < 0.3


def test_a_device_without_a_baseline_is_left_out_of_a_paired_comparison() -> None:
    obs = observations(
        lognormal(1, 21), lognormal(2, 200), treated_base=[0.4] * 20 + [None], control_base=[0.4] * 200
    )
    m = verdict(obs)
    assert m.paired and m.n_treatment == 20


# ---- attacks: what one lying device cannot do --------------------------------------------


def test_one_device_reporting_a_huge_value_cannot_halt() -> None:
    # 19 devices a little worse, not enough to halt; the 20th reports 1e6:
    # the test alone would be significant, but not without that device
    control = [1.0 + i / 200 for i in range(200)]
    treated = [1.625 + i / 400 for i in range(19)]
    spec = replace(DEV, min_effect=0.05)
    honest = verdict(observations(treated, control), spec)
    lying = verdict(observations([*treated, 1e6], control), spec)
    assert honest.result is not Result.FAIL
    assert lying.p_value is not None and lying.p_value <= lying.alpha
    assert lying.result is Result.MARGINAL and "without device t19" in lying.reason


def test_one_device_reporting_nan_or_infinity_is_ignored_and_counted() -> None:
    for lie in (math.nan, math.inf, -math.inf, 10 * MAX_ABS_VALUE):
        m = verdict(observations([*lognormal(1, 39), lie], lognormal(2, 200)))
        assert m.n_ignored == 1 and m.n_treatment == 39 and m.result is Result.PASS


def test_one_control_device_reporting_a_perfect_value_cannot_halt() -> None:
    obs = [*NULL, Observation("liar", Group.CONTROL, T0, {"deviation": -1e12})]
    assert verdict(obs).result is Result.PASS


def test_one_treated_device_reporting_a_perfect_value_cannot_pass_a_bad_stage() -> None:
    obs = [replace(o, values={"deviation": -1e12}) if o.device == "t0" else o for o in BAD]
    assert verdict(obs).result is Result.FAIL


# ---- the hard-failure rule ------------------------------------------------------------


@given(st.integers(min_value=1, max_value=10_000), st.booleans())
def test_one_failure_never_halts(offered: int, rolled: bool) -> None:
    hard = HardCounts(offered, failed=int(not rolled), rolled_back=int(rolled))
    j = judge([], Policy(), [], hard, look=1, now=NOW)
    assert not j.halt and j.hard.result is not Result.FAIL


def test_failures_above_the_limit_halt_with_the_numbers() -> None:
    j = judge([], Policy(), [], HardCounts(50, failed=2, rolled_back=1), look=1, now=NOW)
    assert j.halt and j.result is Result.FAIL and j.hard.result is Result.FAIL
    assert j.hard.rate == pytest.approx(0.06) and j.hard.limit == DEFAULT_MAX_FAILURE_RATE
    assert "2 failed + 1 rolled back of 50 offered = 6.0% (limit 5.0%)" in j.reasons[0]


def test_failures_at_the_limit_pass() -> None:
    assert judge_hard(HardCounts(40, failed=2), Policy()).result is Result.PASS  # 5.0% is not above 5%
    assert judge_hard(HardCounts(40, failed=2), Policy(max_failure_rate=0.04)).result is Result.FAIL


@pytest.mark.parametrize("counts", [(10, 8, 3), (-1, 0, 0), (10, -1, 0)])
def test_impossible_hard_counts_are_refused(counts: tuple[int, int, int]) -> None:
    with pytest.raises(JudgeError):
        judge_hard(HardCounts(*counts), Policy())


# ---- properties -----------------------------------------------------------------------

values = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0.0, max_value=5.0),
    st.sampled_from([0.0, 1.0]),
)


@st.composite
def stages(draw: st.DrawFn) -> list[Observation]:
    """Any stage: up to three windows, any values (lies included)."""
    obs: list[Observation] = []
    windows = draw(
        st.lists(st.sampled_from([T0, T0 + HOUR, T0 + 5.9 * HOUR]), min_size=1, max_size=3, unique=True)
    )
    n_c = draw(st.integers(0, 40))
    for k, w in enumerate(windows):
        for i in range(draw(st.integers(0, 30))):
            obs.append(Observation(f"t{k}-{i}", Group.TREATMENT, w, {"deviation": draw(values)}, T0))
        for i in range(n_c):
            obs.append(Observation(f"c{i}", Group.CONTROL, w, {"deviation": draw(values)}))
    return obs


@_settings
@given(stages(), st.sampled_from(list(Direction)), st.integers(1, 3))
def test_any_stage_gets_one_of_the_four_results_and_strict_json(
    obs: list[Observation], better: Direction, look: int
) -> None:
    spec = MetricSpec("deviation", better)
    j = judge([spec], Policy(min_devices=10), obs, HardCounts(100), look=look, now=NOW)
    assert j.metrics[0].result in set(Result)
    assert json.loads(json.dumps(j.to_dict(), allow_nan=False))["metrics"][0]["name"] == "deviation"


@_settings
@given(stages(), st.randoms(use_true_random=False))
def test_the_order_of_the_devices_changes_nothing(obs: list[Observation], rnd: object) -> None:
    shuffled = list(obs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    p = Policy(min_devices=10)
    a = judge([DEV], p, obs, HardCounts(100), look=3, now=NOW)
    b = judge([DEV], p, shuffled, HardCounts(100), look=3, now=NOW)
    strip = {"reason"}  # the device a reason names may be another of equal values
    assert {k: v for k, v in vars(a.metrics[0]).items() if k not in strip} == {
        k: v for k, v in vars(b.metrics[0]).items() if k not in strip
    }


@_settings
@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=10, max_size=80),
    st.sampled_from(list(Direction)),
)
def test_a_stage_identical_to_its_control_never_fails(xs: list[float], better: Direction) -> None:
    spec = MetricSpec("deviation", better, min_effect=0.0)
    m = verdict(observations(xs, xs), spec, Policy(min_devices=10, looks=1))
    assert m.result in (Result.PASS, Result.WAITING)


def _replace_one(obs: list[Observation], group: Group, index: int, value: float | None) -> list[Observation]:
    members = [i for i, o in enumerate(obs) if o.group is group]
    at = members[index % len(members)]
    return [replace(o, values={"deviation": value}) if i == at else o for i, o in enumerate(obs)]


def test_the_fixed_null_and_bad_stages_are_what_they_claim() -> None:
    assert verdict(NULL).result is Result.PASS
    assert verdict(BAD).result is Result.FAIL


@pytest.mark.parametrize(("stage", "never"), [(NULL, Result.FAIL), (BAD, Result.PASS)], ids=["good", "bad"])
@_settings
@given(st.sampled_from(list(Group)), st.integers(0, 10_000), values)
def test_no_single_device_turns_a_good_stage_into_a_fail_or_a_bad_one_into_a_pass(
    stage: list[Observation], never: Result, group: Group, index: int, value: float | None
) -> None:
    assert verdict(_replace_one(stage, group, index, value)).result is not never


@_settings
@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.floats(min_value=1.0, max_value=2.0), min_size=30, max_size=30),
    st.sampled_from(list(Direction)),
    st.booleans(),
)
def test_making_the_treatment_worse_never_improves_the_verdict(
    seed: int, factors: list[float], better: Direction, two_windows: bool
) -> None:
    # continuous values: a tie between the groups has probability 0 (see docs 6 on ties)
    rng = np.random.default_rng(seed)
    shift = rng.uniform(0.9, 1.3)
    treated = list(shift * 0.4 * rng.lognormal(0.0, 0.3, 30))
    control = list(0.4 * rng.lognormal(0.0, 0.3, 120))
    worse = [x * f if better is Direction.LOWER else x / f for x, f in zip(treated, factors, strict=True)]
    spec = MetricSpec("deviation", better)
    p = Policy(min_devices=10, looks=1)

    def stage(t: list[float]) -> list[Observation]:
        if not two_windows:
            return observations(t, control)
        return observations(t[:15], control) + observations(t[15:], control, window=T0 + HOUR, prefix="late")

    before, after = verdict(stage(treated), spec, p), verdict(stage(worse), spec, p)
    assert ORDER[after.result] >= ORDER[before.result]


@_settings
@given(st.integers(0, 19), st.integers(0, 300), st.booleans())
def test_too_few_devices_of_either_group_always_wait(few: int, many: int, treated_few: bool) -> None:
    n_t, n_c = (few, many) if treated_few else (many, few)
    m = verdict(observations([9.0] * n_t, [0.1] * n_c))
    assert m.result is Result.WAITING


# ---- Monte Carlo: false halts and power on simulated thermostat fleets -----------------

FLEET_SPECS = (
    MetricSpec("deviation", Direction.LOWER, unit="K"),  # mean |room - setpoint| per hour
    MetricSpec("duty", Direction.LOWER),  # heater duty
    MetricSpec("resets", Direction.LOWER, floor=0.01),  # resets per hour
)


def simulate_stage(
    rng: np.random.Generator,
    policy: Policy,
    shift: float = 0.0,
    *,
    n_t: int = 50,
    n_c: int = 950,
    hours: int = 6,
    spread: float = 0.2,
    paired: bool = False,
    specs: Sequence[MetricSpec] = FLEET_SPECS,
) -> list[Judgement]:
    """One stage of a thermostat fleet, judged at each planned look until it
    halts. Per device, a room level (lognormal, `spread` between rooms) times
    hourly noise (lognormal, 0.3); the treated devices' deviation is
    (1 + shift) times worse after the update. Duty and resets (Poisson, 0.02
    an hour: mostly ties at 0) are unchanged. Paired: each device's same
    metrics over the `hours` before the stage are its baseline."""
    n = n_t + n_c
    rooms = 0.4 * rng.lognormal(0.0, spread, (n, 1))
    deviation = rooms * rng.lognormal(-0.045, 0.3, (n, 2 * hours))
    deviation[:n_t, hours:] *= 1.0 + shift
    duty = np.clip(
        0.35 * rng.lognormal(0.0, 0.3, (n, 1)) * rng.lognormal(-0.02, 0.2, (n, 2 * hours)), 0.0, 1.0
    )
    series = {"deviation": deviation, "duty": duty, "resets": rng.poisson(0.02, (n, 2 * hours)).astype(float)}
    before = {k: v[:, :hours].mean(axis=1) for k, v in series.items()}
    out: list[Judgement] = []
    for look in range(1, policy.looks + 1):
        h = round(hours * look / policy.looks)
        now = {k: v[:, hours : hours + h].mean(axis=1) for k, v in series.items()}
        obs = [
            Observation(
                f"th-{i}",
                Group.TREATMENT if i < n_t else Group.CONTROL,
                T0,
                {k: float(v[i]) for k, v in now.items()},
                T0 if i < n_t else None,
                {k: float(v[i]) for k, v in before.items()} if paired else {},
            )
            for i in range(n)
        ]
        out.append(judge(specs, policy, obs, HardCounts(n_t), look=look, now=T0 + h * HOUR))
        if out[-1].halt:
            break
    return out


def halt_rate(runs: int, shift: float, seed: int, **kw: object) -> float:
    rng = np.random.default_rng(seed)
    policy = kw.pop("policy", Policy())
    assert isinstance(policy, Policy)
    return sum(simulate_stage(rng, policy, shift, **kw)[-1].halt for _ in range(runs)) / runs  # type: ignore[arg-type]


def test_the_worked_example_of_the_docs_is_what_the_judge_says() -> None:
    specs = [FLEET_SPECS[0], replace(FLEET_SPECS[1], critical=False), FLEET_SPECS[2]]
    stage = simulate_stage(np.random.default_rng(7), Policy(), 0.2, spread=0.25, specs=specs)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "rollouts.md").read_text(encoding="utf-8")
    assert [j.result for j in stage] == [Result.MARGINAL, Result.MARGINAL, Result.FAIL]
    for j in stage:
        assert f"look {j.look}: {j.metrics[0].reason}" in doc


@pytest.mark.long
@pytest.mark.parametrize("paired", [False, True], ids=["levels", "paired"])
def test_false_halts_over_the_looks_and_metrics_stay_within_alpha(paired: bool) -> None:
    # min_effect 0: only the test stands between a good release and a halt
    specs = [replace(s, min_effect=0.0) for s in FLEET_SPECS]
    runs, alpha = 250, Policy().alpha
    rate = halt_rate(runs, 0.0, seed=11, specs=specs, paired=paired)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


@pytest.mark.long
@pytest.mark.parametrize(("paired", "spread"), [(False, 0.2), (True, 0.6)], ids=["levels", "paired"])
def test_a_20_percent_worse_release_halts_in_its_first_stage(paired: bool, spread: float) -> None:
    assert halt_rate(150, 0.2, seed=12, spread=spread, paired=paired) >= 0.95
