"""What the judge is shown of a rollout's stage (docs/rollouts.md 6, 7): who
is the treatment (members that committed the release) and who the control
(members of later stages, not offered it yet), one number per device,
metric and window from the store (gateway/metrics.py), when to look, and
what the hard-failure rule counts. The judgement is gateway/judge.py's.

The metrics of a look are computed in a worker thread on a read-only
connection of its own (SQLite's WAL lets it read while the gateway writes):
a thousand devices' telemetry must not hold up the event loop. Each
device's records are read and parsed once for all its windows
(StoreReader.over_each).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .judge import (
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
    judge,
)
from .metrics import (
    HEALTH,
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
from .rollout_plan import Verdict
from .rollouts import Rollout
from .store import Store
from .updates import GATEWAY_ENDED, Update

LOOKS = 3  # looks per stage, evenly over its soak (the last at its end)
BASELINE_S = 86400.0  # a device's baseline: the same hours of the day before
# the health metrics as the judge weighs them: (critical, min_effect, floor)
_HEALTH = {
    "resets_per_hour": (True, 0.5, 0.05),
    "feature_errors_per_hour": (True, 0.5, 0.05),
    "offline_fraction": (False, 0.5, 0.02),
}
NOT_FAILURES = (GATEWAY_ENDED,)  # failed updates the rollout itself ended, or that were cancelled
BY_ROLLOUT = "cancelled: rollout "  # (those the rollout ended: halted, aborted, reverted)


@dataclass(frozen=True)
class Measure:
    """One metric the stage is judged on: the judge's spec, and how one
    device's value over a window is computed."""

    spec: MetricSpec
    decl: MetricDecl | None  # a feature's product metric; None for a health metric


def measures(manifests: Mapping[str, Any], names: Sequence[str]) -> list[Measure]:
    """The metrics a rollout judges: ("default",): every product metric its
    release's features declare, and the health ones; else those named."""
    out = []
    for d in declared(manifests):
        spec = MetricSpec(
            name=d.key,
            better=Direction(d.better.value),
            critical=d.critical,
            min_effect=d.min_effect,
            unit=d.unit,
            floor=d.floor,
        )
        out.append(Measure(spec, d))
    for name, (critical, effect, floor) in _HEALTH.items():
        better = Direction(HEALTH[name].value)
        out.append(Measure(MetricSpec(name, better, critical, effect, floor=floor), None))
    if tuple(names) == ("default",):
        return out
    return [m for m in out if m.spec.name in names]


def hard_counts(updates: Sequence[Update | None]) -> HardCounts:
    """The release's updates so far (None: a member not offered it, or one
    that left): offered, and how many failed (not by the rollout's own
    cancel) or were rolled back."""
    offered = failed = rolled_back = 0
    for u in updates:
        if u is None:
            continue
        offered += 1
        if u.state == "rolled_back":
            rolled_back += 1
        elif u.state == "failed" and not (u.reason or "").startswith(NOT_FAILURES):
            failed += 1
    return HardCounts(offered=offered, failed=failed, rolled_back=rolled_back)


def look_due(r: Rollout, looks_done: int, now: float) -> tuple[int, bool] | None:
    """(look number, final) if a look of the current stage is due now, else
    None: look k at k/LOOKS of the soak; after the last, looks go on at the
    same pace, each final, for a stage still waiting for data."""
    step = max(r.soak_s / LOOKS, 1.0)
    k = looks_done + 1
    if now < r.stage_started + step * k:
        return None
    return min(k, LOOKS), k >= LOOKS


def policy_for(soak_s: float, max_failure_rate: float) -> Policy:
    """How a rollout's stages are judged (docs/rollouts.md 6.8): a soak
    shorter than 4 hours gets windows of a quarter of it (update times
    bucketed by a quarter, judged after a quarter), so that its looks can
    judge."""
    quarter = soak_s / 4
    return Policy(
        looks=LOOKS,
        max_failure_rate=max_failure_rate,
        bucket_s=max(1.0, min(3600.0, quarter)),
        min_window_s=min(1800.0, quarter),
    )


def verdict_of(j: Judgement) -> Verdict:
    """What the plan acts on."""
    return Verdict(halt=j.halt, passing=j.advance, reason="; ".join(j.reasons) or j.result.value)


# ---- the look itself (in a worker thread) ----------------------------------------


@dataclass(frozen=True)
class Stage:
    """What a look needs, taken on the event loop: plain values only."""

    stage_started: float
    treated: tuple[tuple[str, float], ...]  # (device, time it committed)
    control: tuple[str, ...]
    hard: HardCounts
    settled: Mapping[str, MetricVerdict] = field(default_factory=dict)  # see settled()


def look(
    db: Path | str, stage: Stage, ms: Sequence[Measure], policy: Policy, k: int, final: bool, now: float
) -> Judgement:
    """The judge's look k at the stage: every device's values from the store db."""
    with Store(db, readonly=True) as store:
        return judge_stage(StoreReader(store, ms, now), stage, ms, policy, k, final, now)


def settled(looks: Sequence[Mapping[str, Any]]) -> dict[str, MetricVerdict]:
    """The metrics the stage's final looks judged already (the looks'
    stored numbers, oldest first): each one's first verdict that did not
    wait for data. A stored look that is not one is skipped."""
    out: dict[str, MetricVerdict] = {}
    for numbers in looks:
        if not numbers.get("final"):
            continue
        for d in numbers.get("metrics") or ():
            try:
                v = MetricVerdict.from_dict(d)
            except JudgeError:
                continue
            if v.result is not Result.WAITING and v.name not in out:
                out[v.name] = v
    return out


def judge_stage(
    reader: Reader, stage: Stage, ms: Sequence[Measure], policy: Policy, k: int, final: bool, now: float
) -> Judgement:
    """The judge's look k at the stage, each device's values from reader:
    a treated device over its window from the first bucket boundary after
    its update, each control device over every treated device's window;
    the metrics in stage.settled stand as judged."""
    windows = sorted({policy.window_start(t, stage.stage_started) for _, t in stage.treated})
    observations: list[Observation] = []
    for dev, t in stage.treated:
        ws = policy.window_start(t, stage.stage_started)
        [(values, base)] = reader.values(dev, [ws], until=t)
        observations.append(Observation(dev, Group.TREATMENT, ws, values, updated_at=t, baseline=base))
    for dev in stage.control:
        for ws, (values, base) in zip(windows, reader.values(dev, windows, until=now), strict=True):
            observations.append(Observation(dev, Group.CONTROL, ws, values, baseline=base))
    observations = _baselines_where_enough(observations, ms, policy.min_devices)
    specs = [m.spec for m in ms]
    return judge(specs, policy, observations, stage.hard, look=k, now=now, final=final, settled=stage.settled)


def failures_only(reached: int, control: int, looks_done: int, min_devices: int) -> str | None:
    """Why a stage is judged by the hard-failure rule alone (docs/rollouts.md
    1), or None when its metrics are judged too: no control group left (the
    last stage), groups that can never hold min_devices (reached: members
    of the stages so far that may still take the release), or a soak and
    as long again of looks without the data to judge."""
    if not control:
        return "no control group"
    if looks_done >= 2 * LOOKS:
        return "too long without data to judge"
    if min(reached, control) < min_devices:
        return f"fewer than {min_devices} devices a group"
    return None


def _baselines_where_enough(obs: list[Observation], ms: Sequence[Measure], need: int) -> list[Observation]:
    """Keep a metric's baselines only where enough devices of each group
    have one: the judge compares changes from baselines for a metric any
    device has one for, and leaves out the devices without."""
    keep = set()
    for m in ms:
        name = m.spec.name
        with_base = {
            g: {o.device for o in obs if o.group is g and o.baseline.get(name) is not None} for g in Group
        }
        if all(len(devs) >= need for devs in with_base.values()):
            keep.add(name)
    return [
        Observation(
            o.device,
            o.group,
            o.window_start,
            o.values,
            o.updated_at,
            {n: o.baseline[n] for n in keep if n in o.baseline},
        )
        for o in obs
    ]


Values = dict[str, float | None]  # metric -> its value, None where the device lacked data
Window = tuple[float, float]  # [start, end)


class Reader:
    """A device's metrics over windows. Where the values come from is the
    subclass's `over` (one window), or its `over_each` (several at once)."""

    def __init__(self, ms: Sequence[Measure], now: float) -> None:
        self.ms = ms
        self.now = now

    def values(self, dev: str, starts: Sequence[float], until: float) -> list[tuple[Values, Values]]:
        """dev's metrics over [ws, now) for each window start ws, and over
        the same hours of the day before (its baseline, {} unless it ends
        by `until`: a treated device's baseline is of the release before)."""
        pairs: list[tuple[Window, Window | None]] = []
        for ws in starts:
            b0, b1 = ws - BASELINE_S, self.now - BASELINE_S
            pairs.append(((ws, self.now), (b0, b1) if b1 <= until and b1 - b0 >= 1.0 else None))
        got = self.over_each(dev, [w for pair in pairs for w in pair if w is not None])
        return [(got[cur], {} if base is None else got[base]) for cur, base in pairs]

    def over_each(self, dev: str, windows: Sequence[Window]) -> dict[Window, Values]:
        """Every metric of dev over each window: by default each on its own."""
        return {w: self.over(dev, *w) for w in windows}

    def over(self, dev: str, start: float, end: float) -> Values:
        """Every metric of dev over [start, end), None where it lacks data."""
        raise NotImplementedError


class StoreReader(Reader):
    """The values from the gateway's store: telemetry through the features'
    metric declarations, the health metrics from boots, states and events.

    A look asks each control device for several windows that end together
    (now, and the same hour the day before for the baselines), a thousand
    devices' telemetry every 10 s: `over_each` reads and parses a device's
    records once per span (the windows that end together, from the earliest
    start), takes each product metric's inputs from them once, and computes
    every window from those. `over` reads one window's records on its own:
    the same values, window by window."""

    def __init__(self, store: Store, ms: Sequence[Measure], now: float) -> None:
        super().__init__(ms, now)
        self.store = store
        self._decls = [m.decl for m in ms if m.decl is not None]  # the product metrics

    def over(self, dev: str, start: float, end: float) -> Values:
        if end - start < 1.0:
            return self._none()
        samples = list(self._samples(dev, start, end)) if self._decls else []
        health = _Health.read(self.store, dev, start, end)
        return {
            m.spec.name: health.value(m.spec.name, start, end)
            if m.decl is None
            else compute(m.decl, samples, start, end)
            for m in self.ms
        }

    def over_each(self, dev: str, windows: Sequence[Window]) -> dict[Window, Values]:
        out = {w: self._none() for w in windows if w[1] - w[0] < 1.0}
        for end in sorted({e for s, e in windows if e - s >= 1.0}):
            starts = sorted({s for s, e in windows if e == end and e - s >= 1.0})
            series: dict[MetricDecl, Series] = {}
            if self._decls:
                samples = self._samples(dev, starts[0], end)
                series = {s.decl: s for s in Series.each(self._decls, samples, starts[0], end)}
            health = _Health.read(self.store, dev, starts[0], end)
            for start in starts:
                since = health.since(start)
                out[(start, end)] = {
                    m.spec.name: since.value(m.spec.name, start, end)
                    if m.decl is None
                    else series[m.decl].compute(start, end)
                    for m in self.ms
                }
        return out

    def _none(self) -> Values:
        return dict.fromkeys((m.spec.name for m in self.ms), None)

    def _samples(self, dev: str, start: float, end: float) -> Iterator[Sample]:
        """dev's telemetry from start to end, each row parsed as it is taken
        (a sample no one keeps is freed at once: a look parses millions)."""
        return (Sample(t, _json(data)) for t, data in self.store.telemetry_between(dev, start, end))


@dataclass(frozen=True)
class _Health:
    """A device's records for the health metrics over [start, end] as the
    store keeps them: its boots and states from start, each list with the
    last one before start (what held then), by time; its events."""

    boots: list[HelloRecord]
    states: list[Transition]
    events: list[EventRecord]

    @classmethod
    def read(cls, store: Store, dev: str, start: float, end: float) -> _Health:
        return cls(
            [
                HelloRecord(r["at"], r["boot_count"], r["reset_cause"])
                for r in store.history("device_boots", dev, start, end)
            ],
            [
                Transition(r["at"], bool(r["online"]), r["reason"])
                for r in store.history("device_states", dev, start, end)
            ],
            [
                EventRecord(r["received"], r["kind"], r["feature"])
                for r in store.events_between(dev, start, end)
            ],
        )

    def since(self, start: float) -> _Health:
        """The records read() gives for [start, end], from these of a span
        with the same end that begins at or before start."""
        return _Health(
            _from(self.boots, start), _from(self.states, start), [e for e in self.events if e.t >= start]
        )

    def value(self, name: str, start: float, end: float) -> float | None:
        """Health metric `name` over [start, end)."""
        if name == "offline_fraction":
            return offline_fraction(self.states, start, end)
        if name == "resets_per_hour":
            return resets_per_hour(self.boots, self.states, start, end)
        return feature_errors_per_hour(self.events, start, end)


_R = TypeVar("_R", HelloRecord, Transition)


def _from(records: list[_R], start: float) -> list[_R]:
    """records (by time) from start, with the last one before it."""
    i = bisect.bisect_left([r.t for r in records], start)
    return records[max(i - 1, 0) :]


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
