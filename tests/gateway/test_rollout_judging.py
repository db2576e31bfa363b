"""What the gateway shows the judge of a stage (gateway/rollout_judging.py):
which metrics a final look settled, when the failure counts alone decide,
and the policy of a soak."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.judge import Direction, HardCounts, MetricSpec, Policy, Result, judge
from gateway.rollout_judging import LOOKS, failures_only, policy_for, settled

from .test_judge import BAD, NOW, NULL, observations

DEV = MetricSpec("deviation", Direction.LOWER)


def stored(j: Any) -> dict[str, Any]:
    return dict(j.to_dict())


def test_a_final_look_settles_each_metric_it_judged_and_not_one_that_waited() -> None:
    policy = Policy(looks=1)
    few = observations([0.4] * 5, [0.4] * 5)  # too few devices: waits
    early = judge([DEV], Policy(), NULL, HardCounts(40), look=1, now=NOW)  # not final: settles nothing
    waited = judge([DEV], policy, few, HardCounts(5), look=1, now=NOW)
    passed = judge([DEV], policy, NULL, HardCounts(40), look=1, now=NOW)
    failed = judge([DEV], policy, BAD, HardCounts(40), look=1, now=NOW)
    assert waited.metrics[0].result is Result.WAITING
    looks = [stored(early), stored(waited), stored(passed), stored(failed)]
    got = settled(looks)
    assert list(got) == ["deviation"] and got["deviation"] == passed.metrics[0]  # the first that judged
    assert settled(looks[:2]) == {}


def test_a_stored_look_that_is_not_one_is_skipped() -> None:
    passed = stored(judge([DEV], Policy(looks=1), NULL, HardCounts(40), look=1, now=NOW))
    junk: list[dict[str, Any]] = [
        {},
        {"final": True},
        {"final": True, "metrics": None},
        {"final": True, "metrics": [{"name": "deviation", "result": "pass"}]},
        {"final": True, "metrics": [passed["metrics"][0] | {"result": "perhaps"}]},
    ]
    assert settled(junk) == {}
    assert settled([*junk, passed])["deviation"].result is Result.PASS


@pytest.mark.parametrize(
    ("reached", "control", "done", "why"),
    [
        (50, 950, 0, None),
        (50, 0, 0, "no control group"),
        (50, 0, 2 * LOOKS, "no control group"),
        (50, 950, 2 * LOOKS, "too long without data to judge"),
        (19, 950, 0, "fewer than 20 devices a group"),
        (50, 19, 0, "fewer than 20 devices a group"),
    ],
)
def test_when_the_failure_counts_alone_decide(reached: int, control: int, done: int, why: str | None) -> None:
    assert failures_only(reached, control, done, 20) == why


def test_a_short_soak_is_judged_over_windows_of_a_quarter_of_it() -> None:
    assert policy_for(6 * 3600, 0.05).bucket_s == 3600 and policy_for(6 * 3600, 0.05).min_window_s == 1800
    short = policy_for(600, 0.1)
    assert short.bucket_s == 150 and short.min_window_s == 150 and short.max_failure_rate == 0.1
    assert short.looks == LOOKS
