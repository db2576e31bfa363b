"""Product metrics (docs/rollouts.md 5): what a feature declares in the
`metrics` of its manifest, and one number per device, metric and window,
computed by the gateway from the telemetry it stores; and the built-in
health metrics (resets, feature errors, offline time) from plain records of
hellos, events and online/offline transitions.

Pure: no database, no clock; the window is passed in. Every value comes
from a device and is checked: whatever a device sends, compute returns a
finite number or None and never raises, and a device that floods or lies
gets no more weight than one value for the window.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .errors import MetricsError
from .numbers import finite_number

MIN_COVERAGE = 0.5  # share of the window a metric's inputs must cover, else None
DEFAULT_MAX_GAP_S = 60.0  # the longest time one sample stands for
MIN_SPACING_S = 1.0  # samples closer than this to the one kept before are dropped
MAX_ABS = 1e9  # a number farther from 0 is no measurement: it counts as missing
MAX_METRICS = 8  # per feature
MAX_WHEN = 4  # conditions per metric
MAX_NAME = 32  # characters of a metric name
MAX_UNIT = 16
MAX_DOC = 200
MAX_SEGMENT = 64  # characters of one name in a field path
_HOUR_S = 3600.0
# a field path: the part of the telemetry, then as many names
_PATH_PARTS = {"sensors": 2, "actuators": 2, "features": 3}
_NAME = re.compile(rf"[a-z][a-z0-9_]{{0,{MAX_NAME - 1}}}")
_KEYS = frozenset({"doc", "unit", "better", "critical", "min_effect", "floor", "of", "when"})
MAX_EFFECT = 10.0  # a min_effect is a share of the control's level: 10 is ten times worse


class Better(StrEnum):
    """Which way a metric improves."""

    LOWER = "lower"
    HIGHER = "higher"


class Aggregation(StrEnum):
    """The closed set of what a metric computes over the window."""

    MEAN = "mean"  # path: time-weighted mean of a number
    MEAN_ABS_DIFF = "mean_abs_diff"  # [a, b]: time-weighted mean of |a - b|
    FRACTION = "fraction"  # path: share of the time a boolean is true, 0..1
    MINUTES_ABOVE = "minutes_above"  # [path, threshold]: minutes per hour above the threshold
    CHANGES = "changes"  # path: changes of the value per hour (actuations)


# the built-in health metrics, all better lower (section 5.4)
HEALTH: dict[str, Better] = {
    "resets_per_hour": Better.LOWER,
    "feature_errors_per_hour": Better.LOWER,
    "offline_fraction": Better.LOWER,
}

Scalar = str | bool | float
_Fail = Callable[[str], MetricsError]


@dataclass(frozen=True)
class MetricDecl:
    """One metric as a feature declares it. `fields`: the telemetry paths it
    reads (two for mean_abs_diff, else one); `threshold` for minutes_above;
    `when`: (path, value) conditions a sample must meet to count."""

    feature: str
    name: str
    aggregation: Aggregation
    fields: tuple[str, ...]
    better: Better
    threshold: float | None = None
    critical: bool = False
    min_effect: float = 0.1
    unit: str = ""
    doc: str = ""
    when: tuple[tuple[str, Scalar], ...] = ()
    floor: float = 0.0

    @property
    def key(self) -> str:
        """``feature.name``: unique among the metrics of a release."""
        return f"{self.feature}.{self.name}"

    @classmethod
    def from_dict(cls, feature: str, name: str, d: Any) -> MetricDecl:
        """A declaration as the manifest's `metrics[name]` states it, checked on
        its own (declared() also checks its fields against the manifests).
        Raises MetricsError."""
        where = f"feature {feature}: metric {str(name)[:40]!r}"

        def fail(what: str) -> MetricsError:
            return MetricsError(f"{where}: {what}", feature)

        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise fail(f"a metric name is 1-{MAX_NAME} of a-z, 0-9 and _, starting with a letter")
        if not isinstance(d, dict):
            raise fail("the declaration must be an object")
        unknown = sorted(str(k) for k in d if k not in _KEYS)
        if unknown:
            raise fail(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
        if d.get("better") not in tuple(Better):
            raise fail(f"better must be {' or '.join(repr(b.value) for b in Better)}")
        critical = d.get("critical", False)
        if not isinstance(critical, bool):
            raise fail("critical must be true or false")
        min_effect = _number(d.get("min_effect", 0.1))
        if min_effect is None or not 0 <= min_effect <= MAX_EFFECT:
            raise fail(
                f"min_effect must be a share of the control's level from 0 to {MAX_EFFECT:g} (0.1: 10% worse)"
            )
        floor = _number(d.get("floor", 0.0))
        if floor is None or floor < 0:
            raise fail(f"floor must be a number from 0 to {MAX_ABS:g}, in the metric's unit")
        text = {}
        for key, most in (("unit", MAX_UNIT), ("doc", MAX_DOC)):
            value = d.get(key, "")
            if not isinstance(value, str) or len(value) > most:
                raise fail(f"{key} must be a string of at most {most} characters")
            text[key] = value
        aggregation, fields, threshold = _parse_of(d.get("of"), fail)
        return cls(
            feature,
            name,
            aggregation,
            fields,
            Better(d["better"]),
            threshold,
            critical,
            min_effect,
            text["unit"],
            text["doc"],
            _parse_when(d.get("when", {}), fail),
            floor,
        )

    def to_dict(self) -> dict[str, Any]:
        """The declaration as a manifest states it (from_dict's inverse)."""
        args: Any = self.fields[0]
        if self.aggregation is Aggregation.MEAN_ABS_DIFF:
            args = list(self.fields)
        elif self.aggregation is Aggregation.MINUTES_ABOVE:
            args = [self.fields[0], self.threshold]
        return {
            "doc": self.doc,
            "unit": self.unit,
            "better": self.better.value,
            "critical": self.critical,
            "min_effect": self.min_effect,
            "floor": self.floor,
            "of": {self.aggregation.value: args},
            "when": dict(self.when),
        }


def _parse_path(path: Any, fail: _Fail) -> str:
    if not isinstance(path, str):
        raise fail(f"a field is a path into the telemetry such as 'sensors.temperature', not {path!r}")
    parts = path.split(".")
    want = _PATH_PARTS.get(parts[0])
    if want is None or len(parts) != want or not all(0 < len(p) <= MAX_SEGMENT for p in parts):
        raise fail(
            f"field {path[:80]!r} is not sensors.<sensor>, actuators.<actuator> or features.<feature>.<field>"
        )
    return path


def _parse_of(of: Any, fail: _Fail) -> tuple[Aggregation, tuple[str, ...], float | None]:
    kinds = ", ".join(a.value for a in Aggregation)
    if not isinstance(of, dict) or len(of) != 1:
        raise fail(f"of must be an object of exactly one aggregation ({kinds})")
    [(kind, args)] = of.items()
    if kind not in tuple(Aggregation):
        raise fail(f"unknown aggregation {str(kind)[:40]!r} (one of {kinds})")
    agg = Aggregation(kind)
    if agg is Aggregation.MEAN_ABS_DIFF:
        if not isinstance(args, list) or len(args) != 2:
            raise fail("mean_abs_diff takes two fields: [a, b]")
        return agg, (_parse_path(args[0], fail), _parse_path(args[1], fail)), None
    if agg is Aggregation.MINUTES_ABOVE:
        threshold = _number(args[1]) if isinstance(args, list) and len(args) == 2 else None
        if threshold is None:
            raise fail(f"minutes_above takes a field and a number within +-{MAX_ABS:g}: [field, threshold]")
        return agg, (_parse_path(args[0], fail),), threshold
    return agg, (_parse_path(args, fail),), None


def _parse_when(when: Any, fail: _Fail) -> tuple[tuple[str, Scalar], ...]:
    if not isinstance(when, dict) or len(when) > MAX_WHEN:
        raise fail(f"when must be an object of at most {MAX_WHEN} conditions (field -> value)")
    out: list[tuple[str, Scalar]] = []
    for path, value in sorted(when.items(), key=lambda kv: str(kv[0])):
        number = _number(value)
        if isinstance(value, bool) or (isinstance(value, str) and len(value) <= MAX_SEGMENT):
            out.append((_parse_path(path, fail), value))
        elif number is not None:
            out.append((_parse_path(path, fail), number))
        else:
            raise fail(f"when {str(path)[:80]!r}: the value must be a string, a boolean or a number")
    return tuple(out)


def declared(manifests: Mapping[str, Any]) -> list[MetricDecl]:
    """Every metric the features of a release declare (feature name ->
    its manifest), by feature and name. A field must be one every device
    running the feature sends: a sensor or actuator the declaring feature
    requires, or a field a feature of the release publishes. Raises
    MetricsError saying which feature, which metric and what is wrong."""
    out: list[MetricDecl] = []
    for feature in sorted(manifests):
        m = manifests[feature]
        if not isinstance(m, dict):
            raise MetricsError(f"feature {feature}: the manifest is not an object", feature)
        metrics = m.get("metrics", {})
        if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
            raise MetricsError(
                f"feature {feature}: metrics must be an object of at most {MAX_METRICS} "
                "metrics (name -> declaration)",
                feature,
            )
        for name in sorted(metrics, key=str):
            decl = MetricDecl.from_dict(feature, name, metrics[name])
            for path in decl.fields + tuple(p for p, _ in decl.when):
                why = _unsent(path, m, manifests)
                if why:
                    raise MetricsError(f"feature {feature}: metric {name!r}: field {path!r}: {why}", feature)
            out.append(decl)
    return out


def _unsent(path: str, own: dict[str, Any], manifests: Mapping[str, Any]) -> str:
    """Why no device running the feature of manifest `own` sends path ('' if it does)."""
    parts = path.split(".")
    if parts[0] != "features":
        requires = own.get("requires", [])
        if not isinstance(requires, list) or parts[1] not in requires:
            return f"the feature does not require {parts[1]!r}"
        return ""
    other = manifests.get(parts[1])
    if not isinstance(other, dict):
        return f"{parts[1]!r} is not a feature of this release"
    perms = other.get("permissions", {})
    publishes = perms.get("publishes", []) if isinstance(perms, dict) else []
    if not isinstance(publishes, list) or parts[2] not in publishes:
        return f"feature {parts[1]} does not publish {parts[2]!r}"
    return ""


# ---- one value per device and window -------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One stored telemetry message: `t` the gateway's receive time (never
    the device's clock, which a device may set as it likes), `data` what
    the telemetry carried (sensors, actuators, features)."""

    t: float
    data: Any


def _number(v: Any) -> float | None:
    """v as a float if it is a JSON number (not a boolean) within +-MAX_ABS."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if not -MAX_ABS <= v <= MAX_ABS:  # (also NaN; an int of any size compares exactly)
        return None
    return float(v)


def _time(v: Any) -> float | None:
    return float(v) if finite_number(v) else None


def _lookup(data: Any, parts: Sequence[str]) -> Any:
    for key in parts:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _matches(value: Any, want: Scalar) -> bool:
    if isinstance(want, bool | str):
        return type(value) is type(want) and value == want
    return _number(value) == want


def _inputs(
    agg: Aggregation, fields: Sequence[Sequence[str]], when: Sequence[tuple[Sequence[str], Scalar]], data: Any
) -> tuple[float, ...] | None:
    """The values a sample gives a metric of aggregation agg that reads
    fields (paths split) under conditions when, or None if it gives none (a
    field missing or of the wrong type, or a condition not met). fraction
    reads booleans (as 0 and 1), changes numbers and booleans as (kind,
    value), so that true and 1 differ; the others numbers."""
    for parts, want in when:
        if not _matches(_lookup(data, parts), want):
            return None
    out: list[float] = []
    for parts in fields:
        v = _lookup(data, parts)
        if agg is Aggregation.FRACTION:
            if not isinstance(v, bool):
                return None
            out.append(float(v))
        elif agg is Aggregation.CHANGES and isinstance(v, bool):
            out += [1.0, float(v)]
        else:
            x = _number(v)
            if x is None:
                return None
            out += [0.0, x] if agg is Aggregation.CHANGES else [x]
    return tuple(out)


def _span(start: float, end: float) -> float:
    """end - start, for a window of finite times at least MIN_SPACING_S long.
    Raises MetricsError."""
    a, b = _time(start), _time(end)
    if a is None or b is None or not b - a >= MIN_SPACING_S or not math.isfinite(b - a):
        raise MetricsError(
            f"a window is two finite times at least {MIN_SPACING_S:g} s apart, not {start!r}..{end!r}"
        )
    return b - a


_Point = tuple[float, tuple[float, ...] | None]  # a sample's time, and its inputs or None


def _points(
    decls: Sequence[MetricDecl], samples: Iterable[Sample], start: float, end: float
) -> list[list[_Point]]:
    """For each declaration, the samples of [start, end) as (t, inputs), by
    time (ties broken by content: the result does not depend on the order
    samples come in). One pass: each sample is read by every declaration
    and can then be dropped."""
    readers = [
        (d.aggregation, [p.split(".") for p in d.fields], [(p.split("."), want) for p, want in d.when])
        for d in decls
    ]
    found: list[list[_Point]] = [[] for _ in decls]
    times = []
    for s in samples:
        t: float | None = s.t
        if type(t) is not float:  # (a float needs no check: NaN and the infinities are outside any window)
            t = _time(t)
        if t is not None and start <= t < end:
            times.append(t)
            for points, (agg, fields, when) in zip(found, readers, strict=True):
                points.append((t, _inputs(agg, fields, when, s.data)))
    if any(a >= b for a, b in itertools.pairwise(times)):  # else in order already
        for points in found:
            points.sort(key=lambda p: (p[0], p[1] is None, p[1] or ()))
    return found


def _thinned(points: Iterable[_Point]) -> list[_Point]:
    """points (in order) without those closer than MIN_SPACING_S to the one kept before."""
    kept: list[_Point] = []
    for p in points:
        if not kept or p[0] - kept[-1][0] >= MIN_SPACING_S:
            kept.append(p)
    return kept


def _gap(max_gap_s: float) -> float:
    gap = _time(max_gap_s)
    if gap is None or gap <= 0:
        raise MetricsError(f"max_gap_s must be a positive number of seconds, not {max_gap_s!r}")
    return gap


def _aggregate(
    decl: MetricDecl, points: Sequence[_Point], span: float, end: float, gap: float
) -> float | None:
    """The metric over a window of `span` seconds ending at `end` from its
    thinned points (compute's steps 4 to 6)."""
    agg, threshold = decl.aggregation, decl.threshold
    covered = total = 0.0
    changes = 0
    before: tuple[float, tuple[float, ...]] | None = None  # the previous sample, if it counted
    for i, (t, values) in enumerate(points):
        until = points[i + 1][0] if i + 1 < len(points) else end
        weight = min(until, end, t + gap) - t
        if values is None:
            before = None
            continue
        covered += weight
        if agg is Aggregation.MEAN or agg is Aggregation.FRACTION:
            total += weight * values[0]
        elif agg is Aggregation.MEAN_ABS_DIFF:
            total += weight * abs(values[0] - values[1])
        elif agg is Aggregation.MINUTES_ABOVE:
            total += weight if threshold is not None and values[0] > threshold else 0.0
        elif before is not None and t - before[0] <= gap and values != before[1]:
            changes += 1
        before = (t, values)
    if covered < MIN_COVERAGE * span:
        return None
    if agg is Aggregation.MINUTES_ABOVE:
        return 60.0 * total / covered
    if agg is Aggregation.CHANGES:
        return _HOUR_S * changes / covered
    return total / covered


@dataclass(frozen=True)
class Series:
    """One device's telemetry over a span [start, end) as a metric reads it:
    each sample's time and inputs, taken once, in compute's order. The value
    over any window within the span is compute's over that window, exactly
    (the spacing rule starts afresh in each window, as compute's does), at
    the cost of the window's samples only: a look computes a device's
    several windows from one reading of its telemetry."""

    decl: MetricDecl
    start: float
    end: float
    points: list[_Point]  # (t, inputs or None), not thinned yet

    @classmethod
    def each(
        cls, decls: Sequence[MetricDecl], samples: Iterable[Sample], start: float, end: float
    ) -> list[Series]:
        """The Series of each declaration, from one pass over samples (a
        look streams a thousand devices' telemetry through: a sample is
        dropped as soon as every declaration has read it). Raises
        MetricsError for a span that is not a window."""
        _span(start, end)
        return [
            cls(d, start, end, p) for d, p in zip(decls, _points(decls, samples, start, end), strict=True)
        ]

    def compute(self, start: float, end: float, *, max_gap_s: float = DEFAULT_MAX_GAP_S) -> float | None:
        """compute(decl, samples, start, end, max_gap_s=max_gap_s) for a
        window within the span. Raises MetricsError for a window that is not
        one or not within the span."""
        span = _span(start, end)
        gap = _gap(max_gap_s)
        if start < self.start or end > self.end:
            raise MetricsError(f"the window {start!r}..{end!r} is not within {self.start!r}..{self.end!r}")
        lo = bisect.bisect_left(self.points, start, key=_at)
        hi = bisect.bisect_left(self.points, end, lo, key=_at)
        return _aggregate(self.decl, _thinned(self.points[lo:hi]), span, end, gap)


def _at(p: _Point) -> float:
    return p[0]


def compute(
    decl: MetricDecl,
    samples: Iterable[Sample],
    start: float,
    end: float,
    *,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
) -> float | None:
    """The metric of one device over the window [start, end) from its
    telemetry samples (any order; others outside the window are ignored),
    or None when the samples that give the metric its inputs cover less
    than MIN_COVERAGE of the window. Each such sample stands for the time
    until the next sample, at most max_gap_s (a longer gap is time the
    device was not heard, not data). Never raises for what the samples
    hold; raises MetricsError for a window that is not one."""
    span = _span(start, end)
    gap = _gap(max_gap_s)
    [points] = _points([decl], samples, start, end)
    return _aggregate(decl, _thinned(points), span, end, gap)


# ---- the built-in health metrics -----------------------------------------------


@dataclass(frozen=True)
class Transition:
    """The device went online or offline at gateway time `t`; `reason` as the
    gateway recorded it (a state's reason: lost, reboot, update, ...; silent)."""

    t: float
    online: bool
    reason: str | None = None


@dataclass(frozen=True)
class EventRecord:
    """An event the device sent, at gateway time `t`."""

    t: float
    kind: str
    feature: str | None = None


@dataclass(frozen=True)
class HelloRecord:
    """A hello the device sent, at gateway time `t`: its boot count and reset cause."""

    t: float
    boot_count: int
    reset_cause: str


# resets no fault of the device's software: a power cut or a switch-on, a
# command's reboot, a planned deep sleep
_BENIGN_CAUSES = frozenset({"power_on", "soft", "deepsleep"})
# a `hard` reset the device announced with one of these reasons is its own
# doing: to install an update, to start its trial, to roll back (counted as a
# rollback, not here), a reboot, the runtime stopped
_ANNOUNCED = frozenset({"update", "rollback", "reboot", "stop"})


def _transitions(records: Iterable[Transition]) -> list[Transition]:
    ok = [r for r in records if _time(r.t) is not None and isinstance(r.online, bool)]
    return sorted(ok, key=lambda r: (r.t, r.online, r.reason if isinstance(r.reason, str) else ""))


def resets_per_hour(
    hellos: Iterable[HelloRecord], transitions: Iterable[Transition], start: float, end: float
) -> float:
    """Failed resets per hour of [start, end). A reset is a hello in the
    window whose boot_count is above the one of the hello before it (which
    may be before the window); it counts unless its cause is power_on,
    soft or deepsleep, or it is `hard` and the last offline transition
    since that hello before gave reason update, rollback, reboot or stop.
    Raises MetricsError for a window that is not one."""
    span = _span(start, end)
    valid = [
        h
        for h in hellos
        if _time(h.t) is not None and type(h.boot_count) is int and isinstance(h.reset_cause, str)
    ]
    valid.sort(key=lambda h: (h.t, h.boot_count, h.reset_cause))
    offline = [r for r in _transitions(transitions) if not r.online]
    count = 0
    for before, h in itertools.pairwise(valid):
        if not (start <= h.t < end and h.boot_count > before.boot_count):
            continue
        if h.reset_cause in _BENIGN_CAUSES:
            continue
        said = [r.reason for r in offline if before.t < r.t <= h.t]
        if h.reset_cause == "hard" and said and said[-1] in _ANNOUNCED:
            continue
        count += 1
    return _HOUR_S * count / span


def feature_errors_per_hour(
    events: Iterable[EventRecord], start: float, end: float, features: Collection[str] | None = None
) -> float:
    """feature_error events per hour of [start, end), of the given features
    only if given; the same record twice counts once. Raises MetricsError
    for a window that is not one."""
    span = _span(start, end)
    seen = set()
    for e in events:
        t = _time(e.t)
        if t is None or e.kind != "feature_error" or not start <= t < end:
            continue
        if features is not None and e.feature not in features:
            continue
        seen.add((t, e.feature if isinstance(e.feature, str) else None))
    return _HOUR_S * len(seen) / span


def offline_fraction(transitions: Iterable[Transition], start: float, end: float) -> float | None:
    """The share of [start, end) the device was offline, 0..1; None without
    any transition. Before its first transition a device was in the other
    state (a transition is a change); the records must hold the last
    transition at or before start. Raises MetricsError for a window that
    is not one."""
    span = _span(start, end)
    ordered = _transitions(transitions)
    if not ordered:
        return None
    online = not ordered[0].online
    at, offline = start, 0.0
    for r in ordered:
        if r.t >= end:
            break
        if r.t > start and not online:
            offline += r.t - at
        at, online = max(at, r.t), r.online
    if not online:
        offline += end - at
    return min(1.0, offline / span)
