"""What the judge is shown of a rollout's stage (docs/rollouts.md 6, 7): who
is the treatment (members that committed the release) and who the control
(members of later stages, not offered it yet), one number per device,
metric and window from the store (gateway/metrics.py), when to look, and
what the hard-failure rule counts. The judgement is gateway/judge.py's.

The metrics of a look are computed in a worker thread on a read-only
connection of its own (SQLite's WAL lets it read while the gateway writes):
a thousand devices' telemetry must not hold up the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from .updates import Update

LOOKS = 3  # looks per stage, evenly over its soak (the last at its end)
BASELINE_S = 86400.0  # a device's baseline: the same hours of the day before
# the health metrics as the judge weighs them: (critical, min_effect, floor)
_HEALTH = {
    "resets_per_hour": (True, 0.5, 0.05),
    "feature_errors_per_hour": (True, 0.5, 0.05),
    "offline_fraction": (False, 0.5, 0.02),
}
_NOT_FAILURES = ("cancelled: ",)  # failed updates the rollout itself ended


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
        elif u.state == "failed" and not (u.reason or "").startswith(_NOT_FAILURES):
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
    db: Path, stage: Stage, ms: Sequence[Measure], policy: Policy, k: int, final: bool, now: float
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
        values, base = reader.values(dev, ws, until=t)
        observations.append(Observation(dev, Group.TREATMENT, ws, values, updated_at=t, baseline=base))
    for dev in stage.control:
        for ws in windows:
            values, base = reader.values(dev, ws, until=now)
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


class Reader:
    """One device's metrics over a window, and over the same hours of the
    day before (its baseline, used only if it ends before `until`: a
    treated device's baseline is of the release before). Where the values
    come from is the subclass's `_over`."""

    def __init__(self, ms: Sequence[Measure], now: float) -> None:
        self.ms = ms
        self.now = now

    def values(
        self, dev: str, ws: float, until: float
    ) -> tuple[dict[str, float | None], dict[str, float | None]]:
        cur = self._over(dev, ws, self.now)
        b0, b1 = ws - BASELINE_S, self.now - BASELINE_S
        base = self._over(dev, b0, b1) if b1 <= until and b1 - b0 >= 1.0 else {}
        return cur, base

    def _over(self, dev: str, start: float, end: float) -> dict[str, float | None]:
        """Every metric of dev over [start, end), None where it lacks data."""
        raise NotImplementedError


class StoreReader(Reader):
    """The values from the gateway's store: telemetry through the features'
    metric declarations, the health metrics from boots, states and events."""

    def __init__(self, store: Store, ms: Sequence[Measure], now: float) -> None:
        super().__init__(ms, now)
        self.store = store

    def _over(self, dev: str, start: float, end: float) -> dict[str, float | None]:
        if end - start < 1.0:
            return dict.fromkeys((m.spec.name for m in self.ms), None)
        samples: list[Sample] | None = None
        out: dict[str, float | None] = {}
        for m in self.ms:
            if m.decl is not None:
                if samples is None:
                    samples = [
                        Sample(t, _json(data)) for t, data in self.store.telemetry_between(dev, start, end)
                    ]
                out[m.spec.name] = compute(m.decl, samples, start, end)
            else:
                out[m.spec.name] = self._health(m.spec.name, dev, start, end)
        return out

    def _health(self, name: str, dev: str, start: float, end: float) -> float | None:
        states = [
            Transition(r["at"], bool(r["online"]), r["reason"])
            for r in self.store.history("device_states", dev, start, end)
        ]
        if name == "offline_fraction":
            return offline_fraction(states, start, end)
        if name == "resets_per_hour":
            boots = [
                HelloRecord(r["at"], r["boot_count"], r["reset_cause"])
                for r in self.store.history("device_boots", dev, start, end)
            ]
            return resets_per_hour(boots, states, start, end)
        events = [
            EventRecord(r["received"], r["kind"], r["feature"])
            for r in self.store.events_between(dev, start, end)
        ]
        return feature_errors_per_hour(events, start, end)


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
