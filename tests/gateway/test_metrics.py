"""Product metrics (docs/rollouts.md 5): declarations checked, exact values on
hand-made series, whatever a device sends never breaks them nor weighs more
than one value, the health metrics from their records, and the thermostat's
setpoint_error against the simulator's room: a few tenths of a degree when
healthy, clearly more for a worse release."""

from __future__ import annotations

import calendar
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, MetricsError
from gateway.metrics import (
    MAX_ABS,
    MAX_EFFECT,
    Aggregation,
    Better,
    EventRecord,
    HelloRecord,
    MetricDecl,
    Sample,
    Series,
    Transition,
    compute,
    declared,
    feature_errors_per_hour,
    offline_fraction,
    resets_per_hour,
)
from gateway.paths import firmware_dir
from simulator.stepped import thermostat_in_a_room

FEATURES = firmware_dir() / "features"
T0 = 1_800_000_000.0
HOUR = 3600.0


def shipped() -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(FEATURES.glob("*/manifest.json"))}


def metric(name: str) -> MetricDecl:
    return next(d for d in declared(shipped()) if d.key == name)


def decl(of: dict[str, Any], **more: Any) -> MetricDecl:
    return MetricDecl.from_dict("thermostat", "m", {"better": "lower", "of": of, **more})


MEAN_T = decl({"mean": "sensors.temperature"})
MAD = decl({"mean_abs_diff": ["sensors.temperature", "features.thermostat.setpoint"]})
ABOVE = decl({"minutes_above": ["sensors.temperature", 21]})
CHANGES = decl({"changes": "actuators.relay"})
FRACTION = decl({"fraction": "actuators.relay"})


def telemetry(
    temp: Any = 21.0, setpoint: Any = 21.0, relay: Any = False, mode: Any = "heat"
) -> dict[str, Any]:
    return {
        "sensors": {"temperature": temp},
        "actuators": {"relay": relay},
        "features": {"thermostat": {"setpoint": setpoint, "heating": relay, "mode": mode}},
    }


def series(values: list[Any], every: float = 10.0, start: float = T0, **fixed: Any) -> list[Sample]:
    """One sample every `every` seconds from start, temperature from values."""
    return [Sample(start + i * every, telemetry(v, **fixed)) for i, v in enumerate(values)]


# ---- declarations ------------------------------------------------------------


def test_the_shipped_features_declare_their_metrics() -> None:
    got = {d.key: d for d in declared(shipped())}
    assert sorted(got) == [
        "thermostat.heater_duty",
        "thermostat.setpoint_error",
        "vent.flap_actuations",
        "vent.humid_minutes",
    ]
    sp = got["thermostat.setpoint_error"]
    assert (sp.aggregation, sp.fields, sp.better, sp.critical) == (
        Aggregation.MEAN_ABS_DIFF,
        ("sensors.temperature", "features.thermostat.setpoint"),
        Better.LOWER,
        True,
    )
    assert sp.when == (("features.thermostat.mode", "heat"),)
    assert got["thermostat.heater_duty"].aggregation is Aggregation.FRACTION
    humid = got["vent.humid_minutes"]
    assert (humid.aggregation, humid.fields, humid.threshold) == (
        Aggregation.MINUTES_ABOVE,
        ("sensors.humidity",),
        63.0,
    )
    assert got["vent.flap_actuations"].fields == ("actuators.vent",)
    assert issubclass(MetricsError, GatewayError)


def test_a_feature_without_metrics_declares_none() -> None:
    assert declared({"eco": shipped()["eco"]}) == []


# (the first text strategy of a run builds Hypothesis' character tables: slow once)
_property = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_paths = st.sampled_from(
    ["sensors.temperature", "actuators.relay", "features.thermostat.setpoint", "features.thermostat.mode"]
)
_numbers = st.floats(-MAX_ABS, MAX_ABS, allow_nan=False) | st.integers(-1000, 1000)


@st.composite
def declarations(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from([a.value for a in Aggregation]))
    args: Any = draw(_paths)
    if kind == "mean_abs_diff":
        args = [args, draw(_paths)]
    elif kind == "minutes_above":
        args = [args, draw(_numbers)]
    d: dict[str, Any] = {"better": draw(st.sampled_from(["lower", "higher"])), "of": {kind: args}}
    if draw(st.booleans()):
        d["critical"] = draw(st.booleans())
    if draw(st.booleans()):
        d["min_effect"] = draw(st.floats(0, MAX_EFFECT) | st.integers(0, 10))
    if draw(st.booleans()):
        d["floor"] = draw(st.floats(0, MAX_ABS) | st.integers(0, 100))
    if draw(st.booleans()):
        d["unit"] = draw(st.text(max_size=16))
        d["doc"] = draw(st.text(max_size=200))
    if draw(st.booleans()):
        d["when"] = draw(st.dictionaries(_paths, st.text(max_size=8) | st.booleans() | _numbers, max_size=4))
    return d


@_property
@given(declarations())
def test_declarations_round_trip(d: dict[str, Any]) -> None:
    m = MetricDecl.from_dict("thermostat", "some_metric", d)
    assert MetricDecl.from_dict("thermostat", "some_metric", m.to_dict()) == m
    assert json.loads(json.dumps(m.to_dict())) == m.to_dict()  # what a manifest can hold
    manifest = {**shipped()["thermostat"], "metrics": {"some_metric": m.to_dict()}}
    assert declared({"thermostat": manifest}) == [m]


GOOD = {"better": "lower", "of": {"mean": "sensors.temperature"}}


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ([], "metrics must be an object"),
        ({f"m{i}": GOOD for i in range(9)}, "at most 8 metrics"),
        ({"Setpoint": GOOD}, "metric 'Setpoint': a metric name is 1-32 of a-z"),
        ({"m": []}, "metric 'm': the declaration must be an object"),
        ({"m": {**GOOD, "beter": "lower"}}, "unknown key 'beter'"),
        ({"m": {**GOOD, "better": "smaller"}}, "better must be 'lower' or 'higher'"),
        ({"m": {"of": {"mean": "sensors.temperature"}}}, "better must be"),
        ({"m": {**GOOD, "critical": "yes"}}, "critical must be true or false"),
        ({"m": {**GOOD, "min_effect": -1}}, "min_effect must be a share of the control's level from 0"),
        ({"m": {**GOOD, "min_effect": 11}}, "min_effect must be a share of the control's level from 0 to 10"),
        ({"m": {**GOOD, "min_effect": True}}, "min_effect must be a share"),
        ({"m": {**GOOD, "floor": -1}}, "floor must be a number from 0"),
        ({"m": {**GOOD, "unit": "x" * 17}}, "unit must be a string of at most 16"),
        ({"m": {**GOOD, "doc": 5}}, "doc must be a string"),
        ({"m": {"better": "lower"}}, "of must be an object of exactly one aggregation"),
        ({"m": {**GOOD, "of": {"mean": "a", "changes": "b"}}}, "exactly one aggregation"),
        ({"m": {**GOOD, "of": {"median": "sensors.temperature"}}}, "unknown aggregation 'median'"),
        ({"m": {**GOOD, "of": {"mean": 5}}}, "a field is a path into the telemetry"),
        ({"m": {**GOOD, "of": {"mean": "temperature"}}}, "field 'temperature' is not sensors.<sensor>"),
        ({"m": {**GOOD, "of": {"mean": "sensors.temperature.x"}}}, "is not sensors.<sensor>"),
        ({"m": {**GOOD, "of": {"mean": "features.thermostat"}}}, "features.<feature>.<field>"),
        ({"m": {**GOOD, "of": {"mean": "sensors."}}}, "is not sensors.<sensor>"),
        ({"m": {**GOOD, "of": {"mean_abs_diff": ["sensors.temperature"]}}}, "mean_abs_diff takes two fields"),
        ({"m": {**GOOD, "of": {"minutes_above": "sensors.temperature"}}}, "minutes_above takes a field and"),
        ({"m": {**GOOD, "of": {"minutes_above": ["sensors.temperature", True]}}}, "minutes_above takes"),
        ({"m": {**GOOD, "of": {"minutes_above": ["sensors.temperature", 1e10]}}}, "minutes_above takes"),
        ({"m": {**GOOD, "when": []}}, "when must be an object of at most 4"),
        ({"m": {**GOOD, "when": {"features.thermostat.mode": None}}}, "value must be a string, a boolean"),
        ({"m": {**GOOD, "when": {"mode": "heat"}}}, "field 'mode' is not sensors.<sensor>"),
        # fields no device running the feature sends
        ({"m": {**GOOD, "of": {"mean": "sensors.humidity"}}}, "does not require 'humidity'"),
        ({"m": {**GOOD, "of": {"mean": "actuators.vent"}}}, "does not require 'vent'"),
        (
            {"m": {**GOOD, "of": {"mean": "features.thermostat.setpont"}}},
            "thermostat does not publish 'setpont'",
        ),
        ({"m": {**GOOD, "of": {"mean": "features.vent.opening"}}}, "'vent' is not a feature of this release"),
        ({"m": {**GOOD, "when": {"features.thermostat.mood": "heat"}}}, "does not publish 'mood'"),
    ],
)
def test_a_malformed_declaration_is_refused_with_what_is_wrong(metrics: Any, message: str) -> None:
    manifest = {**shipped()["thermostat"], "metrics": metrics}
    with pytest.raises(MetricsError, match=r"^feature thermostat: ") as exc:
        declared({"thermostat": manifest})
    assert message in str(exc.value)
    assert exc.value.feature == "thermostat"


def test_a_metric_may_read_what_another_feature_of_the_release_publishes() -> None:
    eco = {
        **shipped()["eco"],
        "metrics": {"boost": {"better": "lower", "of": {"mean": "features.thermostat.setpoint"}}},
    }
    assert next(d.key for d in declared({"eco": eco, "thermostat": shipped()["thermostat"]})) == "eco.boost"
    with pytest.raises(MetricsError, match="'thermostat' is not a feature of this release"):
        declared({"eco": eco})


# ---- exact values ----------------------------------------------------------------


def test_a_step_series() -> None:
    # an hour at 10 s: 20 C for the first half hour, 22 C for the second
    samples = series([20.0] * 180 + [22.0] * 180)
    end = T0 + HOUR
    assert compute(MEAN_T, samples, T0, end) == pytest.approx(21.0)
    assert compute(MAD, samples, T0, end) == pytest.approx(1.0)
    assert compute(ABOVE, samples, T0, end) == pytest.approx(30.0)  # minutes per hour above 21
    # a window holding the second half only
    assert compute(MEAN_T, samples, T0 + 1800, end) == pytest.approx(22.0)
    assert compute(ABOVE, samples, T0 + 1800, end) == pytest.approx(60.0)


def test_each_sample_stands_for_the_time_until_the_next() -> None:
    # 20 C at 0, 22 C at 600 s and 30 C at 1200 s, sampled often enough
    samples = (
        series([20.0] * 60, start=T0)
        + series([22.0] * 60, start=T0 + 600)
        + series([30.0] * 60, start=T0 + 1200)
    )
    assert compute(MEAN_T, samples, T0, T0 + 1800) == pytest.approx(24.0)
    # one sample every 30 s: each weighs 30 s, the last one to the window's end
    sparse = series([20.0, 24.0], every=30.0)
    assert compute(MEAN_T, sparse, T0, T0 + 60) == pytest.approx(22.0)


def test_a_gap_counts_as_no_data_beyond_max_gap() -> None:
    # 20 C every 10 s for 40 min, then nothing for 10 min, then 26 C for 10 min
    samples = series([20.0] * 240) + series([26.0] * 60, start=T0 + 3000)
    end = T0 + HOUR
    # the last 20 C sample stands for 60 s, not for the 10 min of silence
    assert compute(MEAN_T, samples, T0, end) == pytest.approx((20 * 2450 + 26 * 600) / 3050)
    assert compute(MEAN_T, samples, T0, end, max_gap_s=610) == pytest.approx((20 * 3000 + 26 * 600) / 3600)


def test_too_little_data_is_none() -> None:
    # 25 minutes of an hour: under half the window
    assert compute(MEAN_T, series([21.0] * 150), T0, T0 + HOUR) is None
    assert compute(MEAN_T, series([21.0] * 181), T0, T0 + HOUR) == 21.0
    assert compute(MEAN_T, [], T0, T0 + HOUR) is None
    # samples outside the window do not count
    assert compute(MEAN_T, series([21.0] * 360, start=T0 - HOUR), T0, T0 + HOUR) is None
    # samples without the field are time without data
    half = series([21.0] * 150) + [Sample(T0 + 1500 + 10 * i, {"sensors": {}}) for i in range(210)]
    assert compute(MEAN_T, half, T0, T0 + HOUR) is None


def test_order_and_duplicates_do_not_matter() -> None:
    samples = series([20.0, 21.0, 22.0, 23.0] * 90)
    value = compute(MAD, samples, T0, T0 + HOUR)
    shuffled = samples * 3
    random.Random(1).shuffle(shuffled)
    assert compute(MAD, shuffled, T0, T0 + HOUR) == value
    # two different samples at one time: the same one is kept whatever their order
    twins = [Sample(T0, telemetry(20.0)), Sample(T0, telemetry(30.0))]
    assert compute(MEAN_T, twins, T0, T0 + 60) == compute(MEAN_T, twins[::-1], T0, T0 + 60) == 20.0


def test_a_flood_weighs_no_more_than_one_sample_a_second() -> None:
    calm = series([20.0] * 360)
    # 1000 samples of 40 C within one second, and a relay that chatters through them:
    # the first one stands for the 5 s to the next calm sample, the others are dropped
    flood = [Sample(T0 + 1005 + i / 1000, telemetry(40.0, relay=i % 2 == 0)) for i in range(1000)]
    assert compute(MEAN_T, calm + flood, T0, T0 + HOUR) == pytest.approx((20 * 3595 + 40 * 5) / 3600)
    assert compute(CHANGES, calm + flood, T0, T0 + HOUR) == pytest.approx(2.0)


def test_changes_per_hour_count_actuations() -> None:
    # the relay switches every minute for an hour: 59 changes in 3600 s
    samples = [Sample(T0 + 10 * i, telemetry(relay=(i // 6) % 2 == 1)) for i in range(360)]
    assert compute(CHANGES, samples, T0, T0 + HOUR) == pytest.approx(59.0)
    assert compute(FRACTION, samples, T0, T0 + HOUR) == pytest.approx(0.5)
    # a change across a gap longer than max_gap_s is not seen (the device may have restarted)
    gapped = [s for s in samples if not T0 + 595 < s.t < T0 + 1200]
    # 9 changes in the first 650 s (the last sample before the gap stands for 60 s), 39 after it
    assert compute(CHANGES, gapped, T0, T0 + HOUR) == pytest.approx(48 * HOUR / (650 + 2400))
    # a boolean and a number are never the same value
    flips = [Sample(T0 + 10 * i, telemetry(relay=[True, 1][i % 2])) for i in range(360)]
    assert compute(CHANGES, flips, T0, T0 + HOUR) == pytest.approx(359.0)


def test_when_keeps_only_the_samples_that_meet_it() -> None:
    sp = metric("thermostat.setpoint_error")
    heat = series([20.0] * 200, setpoint=21.0)  # 2000 s, 1 C off
    off = series([10.0] * 160, start=T0 + 2000, setpoint=21.0, mode="off")
    assert compute(sp, heat + off, T0, T0 + HOUR) == pytest.approx(1.0)
    assert compute(sp, series([10.0] * 360, mode="off"), T0, T0 + HOUR) is None  # never heating: no value


@pytest.mark.parametrize(
    "bad",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        True,
        "21.5",
        None,
        [21.5],
        {"value": 21.5},
        MAX_ABS * 10,
        10**400,
    ],
)
def test_a_value_that_is_no_measurement_counts_as_missing(bad: Any) -> None:
    good = series([20.0] * 180)
    hostile = series([bad] * 180, start=T0 + 1800)
    assert compute(MEAN_T, good + hostile, T0, T0 + HOUR) == 20.0  # half the hour is enough
    assert compute(MEAN_T, good + hostile, T0 + 1800, T0 + HOUR) is None
    assert compute(MAD, series([20.0] * 180, setpoint=bad), T0, T0 + 1800) is None


@pytest.mark.parametrize("data", [None, 5, "x", [], {"sensors": 5}, {"sensors": {"temperature": {}}}])
def test_telemetry_of_any_shape_is_a_sample_without_data(data: Any) -> None:
    assert compute(MEAN_T, [Sample(T0 + 10 * i, data) for i in range(360)], T0, T0 + HOUR) is None


def test_a_window_that_is_not_one_raises() -> None:
    for start, end in [(T0, T0), (T0, T0 - 1), (math.nan, T0), (T0, math.inf)]:
        with pytest.raises(MetricsError, match="a window is two finite times"):
            compute(MEAN_T, [], start, end)
    with pytest.raises(MetricsError, match="max_gap_s"):
        compute(MEAN_T, [], T0, T0 + HOUR, max_gap_s=0)


# ---- whatever a device sends -----------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: a device's JSON may not hold them, the rules must
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=6,
)
_values = st.floats(-100, 100) | st.floats(-1e12, 1e12) | _json
_telemetry = st.builds(
    lambda temp, sp, relay, mode, other: {
        **other,
        "sensors": {"temperature": temp},
        "actuators": {"relay": relay},
        "features": {"thermostat": {"setpoint": sp, "mode": mode}},
    },
    _values,
    _values,
    st.booleans() | _values,
    st.sampled_from(["heat", "off"]) | _json,
    st.dictionaries(st.text(max_size=8), _json, max_size=2),
)


END = T0 + 300  # the window of the property tests
_sane = st.builds(
    telemetry, st.floats(15, 25), st.floats(15, 25), st.booleans(), st.sampled_from(["heat"] * 9 + ["off"])
)


@st.composite
def _samples(draw: st.DrawFn) -> list[Sample]:
    """A device's telemetry around the window [T0, END): 1 to 10 s apart or
    at one time (a flood), one in five of any content; and a few samples at
    times that are none."""
    t = draw(st.floats(T0 - 30, T0 + 30))
    out = []
    for _ in range(draw(st.integers(0, 3)) * 25):
        hostile = draw(st.integers(0, 4)) == 0
        out.append(Sample(t, draw(_telemetry | _json) if hostile else draw(_sane)))
        t += draw(st.sampled_from([0.0, 0.5]) if draw(st.integers(0, 4)) == 0 else st.floats(1, 10))
    odd = st.sampled_from([math.nan, math.inf, -math.inf])
    return out + draw(st.lists(st.builds(Sample, odd, _telemetry), max_size=2))


DECLS = [MEAN_T, MAD, ABOVE, CHANGES, FRACTION, metric("thermostat.setpoint_error")]
_decls = st.sampled_from(DECLS)


@_property
@given(_decls, _samples(), st.floats(10, 120))
def test_compute_never_raises_and_is_finite_or_none(d: MetricDecl, samples: list[Sample], gap: float) -> None:
    value = compute(d, samples, T0, END, max_gap_s=gap)
    assert value is None or math.isfinite(value)


@_property
@given(_decls, _samples(), st.data())
def test_duplicates_and_order_change_nothing(
    d: MetricDecl, samples: list[Sample], data: st.DataObject
) -> None:
    again = samples + data.draw(st.lists(st.sampled_from(samples), max_size=10)) if samples else []
    again = data.draw(st.permutations(again))
    assert compute(d, again, T0, END) == compute(d, samples, T0, END)


@_property
@given(_samples(), st.floats(10, 120), st.data())
def test_each_series_gives_every_window_within_its_span_what_compute_gives(
    samples: list[Sample], gap: float, data: st.DataObject
) -> None:
    samples = data.draw(st.permutations(samples)) if data.draw(st.booleans()) else samples
    spans = Series.each(DECLS, samples, T0 - 40, END)
    times = [s.t for s in samples if T0 - 40 <= s.t <= END - 1]  # a window may start at a sample
    for _ in range(3):
        start = data.draw(
            st.sampled_from(times) if times and data.draw(st.booleans()) else st.floats(T0 - 40, END - 1)
        )
        end = data.draw(st.just(END) | st.floats(start + 1, END))
        for d, span in zip(DECLS, spans, strict=True):
            assert span.compute(start, end, max_gap_s=gap) == compute(d, samples, start, end, max_gap_s=gap)


def test_a_series_refuses_a_window_beyond_its_span() -> None:
    [span] = Series.each([MEAN_T], series([20.0] * 30), T0, T0 + 300)
    assert span.compute(T0, T0 + 300) == 20.0
    for start, end in [(T0 - 1, T0 + 300), (T0, T0 + 301)]:
        with pytest.raises(MetricsError, match="not within"):
            span.compute(start, end)
    with pytest.raises(MetricsError, match="a window is two finite times"):
        Series.each([MEAN_T], [], T0, T0)


@_property
@given(st.lists(st.tuples(st.floats(T0, T0 + 149), st.floats(-MAX_ABS, MAX_ABS)), min_size=1, max_size=40))
def test_a_mean_lies_within_the_values(points: list[tuple[float, float]]) -> None:
    samples = [Sample(t, telemetry(v)) for t, v in points]
    value = compute(MEAN_T, samples, T0, END, max_gap_s=300)
    assert value is not None  # the first sample stands for more than half the window
    values = [v for _, v in points]
    slack = 1e-9 * max(1.0, *map(abs, values))
    assert min(values) - slack <= value <= max(values) + slack


# ---- the health metrics ----------------------------------------------------------


def hello(t: float, boot_count: int, cause: str) -> HelloRecord:
    return HelloRecord(T0 + t, boot_count, cause)


def offline(t: float, reason: str | None) -> Transition:
    return Transition(T0 + t, False, reason)


def online(t: float) -> Transition:
    return Transition(T0 + t, True, "online")


def test_resets_that_count_and_those_that_do_not() -> None:
    hellos = [
        hello(-600, 7, "power_on"),  # before the window: the count to compare with
        hello(60, 7, "power_on"),  # a reconnect, or the retained hello again: no reset
        hello(300, 8, "hard"),  # announced: resetting to install an update
        hello(900, 9, "crash"),  # the runtime crashed
        hello(1200, 10, "watchdog"),
        hello(1500, 11, "hard"),  # unannounced: a panic, or a reset after the link was lost
        hello(1800, 12, "soft"),  # a reboot command
        hello(2100, 13, "power_on"),  # a power cut
        hello(2400, 14, "hard"),  # announced: a rollback (counted as one, not here)
        hello(2700, 15, "hard"),  # announced: out of RAM, a fault of its software
        hello(3000, 16, "unknown"),
        hello(3300, 20, "deepsleep"),  # four boots never heard of: not counted
    ]
    transitions = [
        offline(250, "update"),
        online(290),
        offline(1400, "lost"),
        online(1490),
        offline(2350, "rollback"),
        online(2390),
        offline(2650, "memory"),
        online(2690),
    ]
    assert resets_per_hour(hellos, transitions, T0, T0 + HOUR) == pytest.approx(5.0)
    assert resets_per_hour(hellos, transitions, T0, T0 + 2 * HOUR) == pytest.approx(2.5)
    # the first hello of the records says nothing: it has none before it to compare with
    assert resets_per_hour(hellos[3:4], transitions, T0, T0 + HOUR) == 0.0
    # records in any order, twice
    assert resets_per_hour(hellos[::-1] * 2, transitions * 2, T0, T0 + HOUR) == pytest.approx(5.0)


def test_a_reprovisioned_device_starts_its_count_again() -> None:
    hellos = [hello(0, 40, "power_on"), hello(100, 1, "power_on"), hello(200, 2, "crash")]
    assert resets_per_hour(hellos, [], T0, T0 + HOUR) == 1.0


def test_malformed_records_are_left_out() -> None:
    hellos: list[Any] = [
        hello(0, 1, "power_on"),
        HelloRecord(math.nan, 2, "crash"),
        HelloRecord(T0 + 10, True, "crash"),  # type: ignore[arg-type]
        HelloRecord(T0 + 20, 3, None),  # type: ignore[arg-type]
        hello(30, 2, "crash"),
    ]
    assert resets_per_hour(hellos, [Transition(math.inf, False)], T0, T0 + HOUR) == 1.0
    events = [EventRecord(math.nan, "feature_error", "x"), EventRecord(T0, 5, "x")]  # type: ignore[arg-type]
    assert feature_errors_per_hour(events, T0, T0 + HOUR) == 0.0
    assert offline_fraction([Transition(T0 + 5, "yes")], T0, T0 + 10) is None  # type: ignore[arg-type]


def test_feature_errors_per_hour() -> None:
    events = [
        EventRecord(T0 + 10, "feature_error", "thermostat"),
        EventRecord(T0 + 10, "feature_error", "thermostat"),  # the same record twice
        EventRecord(T0 + 20, "feature_error", "eco"),
        EventRecord(T0 + 30, "sensor_error", None),
        EventRecord(T0 + 40, "log", "thermostat"),
        EventRecord(T0 - 10, "feature_error", "thermostat"),  # before the window
        EventRecord(T0 + 1800, "feature_error", "thermostat"),
    ]
    assert feature_errors_per_hour(events, T0, T0 + HOUR) == 3.0
    assert feature_errors_per_hour(events, T0, T0 + HOUR, features={"thermostat"}) == 2.0
    assert feature_errors_per_hour(events, T0, T0 + 2 * HOUR) == 1.5


def test_offline_fraction() -> None:
    # offline since before the window; online at 10 min, lost at 40 min
    transitions = [offline(-600, "lost"), online(600), offline(2400, "lost")]
    assert offline_fraction(transitions, T0, T0 + HOUR) == pytest.approx((600 + 1200) / 3600)
    assert offline_fraction(transitions[::-1] * 2, T0, T0 + HOUR) == pytest.approx(0.5)
    assert offline_fraction(transitions, T0 + 600, T0 + 2400) == 0.0
    # before its first transition a device was in the other state
    assert offline_fraction([online(900)], T0, T0 + HOUR) == pytest.approx(0.25)
    assert offline_fraction([offline(900, "silent")], T0, T0 + HOUR) == pytest.approx(0.75)
    assert offline_fraction([online(2 * HOUR)], T0, T0 + HOUR) == 1.0
    assert offline_fraction([], T0, T0 + HOUR) is None


# ---- the thermostat's setpoint_error against the room's physics -------------------

MONDAY_2PM = float(calendar.timegm((2024, 1, 15, 14, 0, 0)))
WARM_UP_S = HOUR  # before the window: the room settles into its cycle
WINDOW_S = 4 * HOUR
SEEDS = range(5)
HEALTHY_HYSTERESIS = 0.3
WIDER_HYSTERESIS = 0.36  # a release 20 % worse: a wider band


def thermostat_samples(
    tmp_path: Path, seed: int, hysteresis: float, patch: tuple[str, str] | None
) -> Iterator[Sample]:
    """The thermostat (patched, if given) heating a seeded room from its
    setpoint (the warm-up hour only settles the cycle), as the gateway
    stores its telemetry, through the warm-up and the window."""
    base = tmp_path / f"{seed}-{hysteresis}-{patch is not None}"
    run = thermostat_in_a_room(
        base,
        seed,
        MONDAY_2PM,
        WARM_UP_S + WINDOW_S,
        config={"hysteresis": hysteresis},
        patch=patch,
        room_temp=21.0,
    )
    for t, data in run:
        yield Sample(t, data)


def setpoint_errors(tmp_path: Path, hysteresis: float, patch: tuple[str, str] | None = None) -> list[float]:
    sp = metric("thermostat.setpoint_error")
    start = MONDAY_2PM + WARM_UP_S
    out = []
    for seed in SEEDS:
        value = compute(sp, thermostat_samples(tmp_path, seed, hysteresis, patch), start, start + WINDOW_S)
        assert value is not None
        out.append(value)
    return out


def test_setpoint_error_is_a_few_tenths_for_a_healthy_thermostat_and_clearly_more_for_a_worse_one(
    tmp_path: Path,
) -> None:
    healthy = setpoint_errors(tmp_path, HEALTHY_HYSTERESIS)
    wider = setpoint_errors(tmp_path, WIDER_HYSTERESIS)
    # a wrong sign in the switch-on threshold: on below setpoint + hysteresis
    wrong_sign = setpoint_errors(
        tmp_path, HEALTHY_HYSTERESIS, ("elif t < sp - h + lead:", "elif t < sp + h + lead:")
    )
    print(
        "\nsetpoint_error (C) by room:"
        f"\n  healthy (hysteresis {HEALTHY_HYSTERESIS})   {' '.join(f'{v:.3f}' for v in healthy)}"
        f"\n  wider (hysteresis {WIDER_HYSTERESIS})     {' '.join(f'{v:.3f}' for v in wider)}"
        f"\n  wrong sign (on below sp + h) {' '.join(f'{v:.3f}' for v in wrong_sign)}"
    )
    # informative: a healthy thermostat is a few tenths of a degree off, never 0,
    # and alike from one room to the next
    assert all(0.1 < v < 0.3 for v in healthy)
    assert max(healthy) - min(healthy) < 0.1
    # a release 20 % worse is worse in every room, by more than min_effect
    # (a share of the healthy level) on average
    min_effect = metric("thermostat.setpoint_error").min_effect
    assert all(w > h for w, h in zip(wider, healthy, strict=True))
    assert sum(wider) / sum(healthy) - 1 > min_effect
    assert min(wrong_sign) > max(healthy) * (1 + min_effect)
