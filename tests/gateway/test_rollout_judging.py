"""What the gateway shows the judge of a stage (gateway/rollout_judging.py):
which metrics a final look settled, when the failure counts alone decide,
the policy of a soak, and a look at a stage in a real store: each device's
records read once a span give exactly what each window read alone gives."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.judge import Direction, HardCounts, MetricSpec, Policy, Result, judge
from gateway.paths import firmware_dir
from gateway.rollout_judging import (
    BASELINE_S,
    LOOKS,
    Stage,
    StoreReader,
    Values,
    Window,
    failures_only,
    judge_stage,
    look,
    measures,
    policy_for,
    settled,
)
from gateway.store import Store, TelemetryRow

from ..support.messages import hello
from .test_judge import BAD, HOUR, NOW, NULL, observations

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


# ---- a look at a stage in a real store ----------------------------------------------

START = 1_800_000_000.0  # the stage starts
SOAK = 2 * HOUR
AT = START + SOAK  # the final look
DAY = BASELINE_S
POLICY = policy_for(SOAK, 0.05)  # windows every half hour
MS = measures(
    {"thermostat": json.loads((firmware_dir() / "features/thermostat/manifest.json").read_text())},
    ("default",),
)
HEALTH_ONLY = [m for m in MS if m.decl is None]
HELLO = hello("th-0")


class WindowByWindow(StoreReader):
    """The store's values read and computed for each window on its own."""

    def over_each(self, dev: str, windows: Sequence[Window]) -> dict[Window, Values]:
        return {w: self.over(dev, *w) for w in windows}


def thermostat(temp: float, relay: bool, mode: str = "heat") -> dict[str, Any]:
    return {
        "sensors": {"humidity": 45.0, "temperature": temp},
        "actuators": {"relay": relay},
        "features": {"thermostat": {"setpoint": 21.0, "heating": relay, "mode": mode, "offset": 0}},
    }


def fill(store: Store, dev: str, rng: random.Random, start: float, end: float) -> None:
    """A thermostat's telemetry every 10 s over [start, end] with what real
    telemetry holds now and then: a message repeated, a burst, one exactly
    at a window's boundary, a silence, a field missing, the heating off; a
    crash or an update's reset, its states, feature errors (a few exactly
    at a boundary)."""
    rows = []
    t, temp, relay, mode = start + rng.uniform(0, 10), 21.0, False, "heat"
    while t <= end:
        temp += (0.012 if relay else -0.007) + rng.gauss(0, 0.01)
        relay = temp < 20.7 or (relay and temp < 21.3)
        if rng.random() < (0.05 if mode == "off" else 0.001):
            mode = "off" if mode == "heat" else "heat"
        data = thermostat(temp, relay, mode)
        odd = rng.random()
        if odd < 0.01:
            rows.append(TelemetryRow(dev, t, t, 0, data))  # the same message twice
        elif odd < 0.02:
            rows.append(TelemetryRow(dev, t + 0.4, t, 0, data))  # a burst
        elif odd < 0.03:
            data["sensors"] = {"humidity": 45.0}
        elif odd < 0.0305:
            t += rng.uniform(300, 1500)  # a silence
        rows.append(TelemetryRow(dev, t, t, 0, data))
        t += 10.0
    edge = start + POLICY.bucket_s * rng.randint(1, 3)
    rows.append(TelemetryRow(dev, edge, edge, 0, thermostat(temp, relay)))
    store.add_telemetry(rows)
    boots = 1
    for _ in range(rng.randint(0, 2)):
        at = rng.choice([edge, rng.uniform(start, end)])
        reason, cause = rng.choice(
            [("lost", "crash"), ("update", "hard"), ("lost", "hard"), ("stop", "power_on")]
        )
        boots += 1
        store.set_state(dev, False, reason, at - 30.0)
        store.upsert_hello(dev, HELLO | {"boot_count": boots, "reset_cause": cause}, at)
        store.set_state(dev, True, "active", at + 1.0)
    for _ in range(rng.choice([0, 0, 1, 3])):
        at = rng.choice([edge, rng.uniform(start, end)])
        store.add_event(dev, "feature_error", "thermostat", "ValueError", at)


def stored_stage(db: Path, seed: int = 1) -> Stage:
    """A first stage in a real store: 24 thermostats updated over its first
    hour and a half (three windows), 40 in the control, each with its
    telemetry over the soak and the same hours of the day before."""
    rng = random.Random(seed)
    devs = [f"th-{i:02d}" for i in range(64)]
    with Store(db) as store:
        for dev in devs:
            store.upsert_hello(dev, HELLO, START - DAY - HOUR)
            store.set_state(dev, True, None, START - DAY - HOUR)
            for day in (START - DAY, START):
                fill(store, dev, rng, day - 60.0, day + SOAK + 60.0)
    treated = tuple((dev, START + rng.uniform(60, 3 * POLICY.bucket_s)) for dev in devs[:24])
    return Stage(START, treated, tuple(devs[24:]), HardCounts(offered=24))


@pytest.mark.long
def test_a_look_reads_each_span_once_and_gets_what_each_window_read_alone_gets(tmp_path: Path) -> None:
    stage = stored_stage(tmp_path / "gateway.db")
    windows = sorted({POLICY.window_start(t, START) for _, t in stage.treated})
    assert len(windows) == 3
    with Store(tmp_path / "gateway.db", readonly=True) as store:
        fast, slow = StoreReader(store, MS, AT), WindowByWindow(store, MS, AT)
        asked = [(dev, [POLICY.window_start(t, START)], t) for dev, t in stage.treated]
        asked += [(dev, windows, AT) for dev in stage.control]
        for dev, starts, until in asked:
            assert fast.values(dev, starts, until) == slow.values(dev, starts, until), dev
        each = judge_stage(slow, stage, MS, POLICY, LOOKS, True, AT)
        got = [
            v
            for dev, starts, until in asked
            for cur, base in fast.values(dev, starts, until)
            for v in (cur, base)
        ]
    j = look(tmp_path / "gateway.db", stage, MS, POLICY, LOOKS, True, AT)
    assert j.to_dict() == each.to_dict()
    # the stage is one to compare: three windows, baselines, and every kind of value
    assert all(m.strata == 3 and m.paired for m in j.metrics if m.n_treatment), j.to_dict()
    for name in (
        "thermostat.setpoint_error",
        "resets_per_hour",
        "feature_errors_per_hour",
        "offline_fraction",
    ):
        assert any(v.get(name) for v in got) and any(name in v and not v[name] for v in got), name


_ids = itertools.count()
_at = st.floats(START - 400, START + 1500) | st.sampled_from([START, START + 300, START + 900, START + 1200])
_message = st.builds(
    lambda temp, relay, mode: {
        "sensors": {"temperature": temp},
        "actuators": {"relay": relay},
        "features": {"thermostat": {"setpoint": 21.0, "mode": mode}},
    },
    st.floats(15, 25) | st.none() | st.text(max_size=2) | st.floats(),
    st.booleans() | st.integers(0, 1),
    st.sampled_from(["heat", "heat", "off"]),
)


@st.composite
def _history(draw: st.DrawFn) -> dict[str, Any]:
    """A device's records around [START, START + 1200]: telemetry mostly every
    10 s with repeats, bursts and silences; boots, states and events at any
    time, some exactly at a window's boundary."""
    t = START - draw(st.floats(0, 400))
    telemetry = []
    for step, msg in draw(
        st.lists(st.tuples(st.sampled_from([0.0, 0.4, 10.0, 10.0, 10.0, 90.0]), _message), max_size=200)
    ):
        t += step
        telemetry.append((t, msg))
    causes = st.sampled_from(["crash", "hard", "power_on", "watchdog"])
    return {
        "telemetry": telemetry,
        "boots": draw(st.lists(st.tuples(_at, st.integers(1, 4), causes), max_size=5)),
        "states": draw(
            st.lists(st.tuples(_at, st.sampled_from(["lost", "update", "reboot", None])), max_size=6)
        ),
        "events": draw(st.lists(st.tuples(_at, st.sampled_from(["feature_error", "log"])), max_size=5)),
        # a window may start at a sample, or in a burst
        "starts": draw(
            st.lists(
                _at | st.sampled_from([t + d for t, _ in telemetry for d in (0.0, 0.2)] or [START]),
                min_size=1,
                max_size=4,
            )
        ),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with Store(tmp_path_factory.mktemp("store") / "gateway.db") as s:
        yield s


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_history())
def test_any_windows_that_end_together_get_from_one_reading_what_each_gets_alone(
    store: Store, records: dict[str, Any]
) -> None:
    dev = f"h-{next(_ids)}"
    store.upsert_hello(dev, HELLO, START - 500)
    store.add_telemetry(TelemetryRow(dev, t, t, 0, data) for t, data in records["telemetry"])
    for at, count, cause in records["boots"]:
        store.upsert_hello(dev, HELLO | {"boot_count": count, "reset_cause": cause}, at)
    for i, (at, reason) in enumerate(records["states"]):
        store.set_state(dev, i % 2 == 0, reason, at)
    for at, kind in records["events"]:
        store.add_event(dev, kind, "thermostat", None, at)
    ends = (START + 1200, START + 900)
    windows = [(s, e) for s in records["starts"] for e in ends] + [(ends[0] - 0.5, ends[0])]
    for ms in (MS, HEALTH_ONLY):
        reader = StoreReader(store, ms, ends[0])
        assert reader.over_each(dev, windows) == {w: reader.over(dev, *w) for w in windows}
