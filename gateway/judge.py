"""The health judge (docs/rollouts.md 6), pure: a stage of a rollout against its
control group, metric by metric, and the hard-failure rule. No I/O, no clock:
`now` and the look's number are passed in.

For every metric the devices of the stage (treatment) are compared with the
devices not yet updated (control) over the same clock windows: a one-sided
Mann-Whitney U test in the worse direction (scipy, asymptotic, ties
corrected), stratified by the window each treated device's values cover, and
a robust effect (trimmed means, as a share of the control's level). A metric
fails only when the test is significant at this look's share of the stage's
alpha and the effect reaches the metric's threshold, and both still hold
without the single device whose removal weakens them most: no one device can
halt a stage, and none can pass a bad one. A stage halts when a critical
metric fails or when failed updates and rollbacks exceed the rollout's limit.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy.stats import mannwhitneyu, norm

from .errors import GatewayError

DEFAULT_MAX_FAILURE_RATE = 0.05  # the rollout's --max-failure-rate
MAX_ABS_VALUE = 1e15  # a device's value beyond this (or NaN, or infinite) is ignored
_P_CLIP = 1e-300  # p-values are kept inside (0, 1) before they become z-scores

Values = NDArray[np.float64]


class JudgeError(GatewayError):
    """The judge was given inputs that contradict each other or its rules
    (a policy out of range, a device in both groups, a window that starts
    before the device's update): a caller's mistake, never a device's."""


class Direction(enum.Enum):
    """Which way a metric is better."""

    LOWER = "lower"
    HIGHER = "higher"


class Group(enum.Enum):
    TREATMENT = "treatment"  # updated in this stage
    CONTROL = "control"  # in the cohort, not updated yet


class Result(enum.Enum):
    PASS = "pass"
    MARGINAL = "marginal"
    FAIL = "fail"
    WAITING = "waiting"  # too few devices or too little data to judge


class Spending(enum.Enum):
    """Lan-DeMets alpha-spending functions: how much of a stage's alpha the
    looks up to information fraction t may use."""

    OBRIEN_FLEMING = "obrien-fleming"  # almost nothing early, nearly all at the end
    POCOCK = "pocock"  # about evenly over the looks


@dataclass(frozen=True)
class MetricSpec:
    """A metric a feature (or the runtime) declares. min_effect: the relative
    worsening that matters (0.10: 10% worse than the control's level); floor:
    the smallest control level, in the metric's unit, the effect is taken
    relative to (so that 1 reset against none is not an infinite effect).
    Raises JudgeError for a value out of range."""

    name: str
    better: Direction
    critical: bool = True
    min_effect: float = 0.10
    unit: str = ""
    floor: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise JudgeError("a metric needs a name")
        if not (0.0 <= self.min_effect < math.inf):
            raise JudgeError(f"metric {self.name}: min_effect {self.min_effect} is not >= 0")
        if not (0.0 <= self.floor < math.inf):
            raise JudgeError(f"metric {self.name}: floor {self.floor} is not >= 0")


@dataclass(frozen=True)
class Policy:
    """How a stage is judged. alpha: the chance, per stage, that a release as
    good as the one before is halted by a metric (critical metrics share it;
    non-critical ones share another of the same size, for warnings); looks:
    the looks planned per stage, evenly spread over the soak; min_devices:
    devices with data needed in each group; trim: the share cut from each end
    for the trimmed means (at least one device of min_devices); min_window_s:
    the least time a window must cover before its devices count;
    bucket_s: the width of the update-time strata. Raises JudgeError."""

    alpha: float = 0.01
    looks: int = 3
    spending: Spending = Spending.OBRIEN_FLEMING
    min_devices: int = 20
    trim: float = 0.1
    min_window_s: float = 1800.0
    bucket_s: float = 3600.0
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE
    min_failures: int = 2

    def __post_init__(self) -> None:
        problems = [
            (0.0 < self.alpha < 0.5, f"alpha {self.alpha} is not in (0, 0.5)"),
            (self.looks >= 1, f"looks {self.looks} is not >= 1"),
            (self.min_devices >= 2, f"min_devices {self.min_devices} is not >= 2"),
            (0.0 <= self.trim < 0.5, f"trim {self.trim} is not in [0, 0.5)"),
            (
                int(self.trim * self.min_devices) >= 1,
                f"trim {self.trim} of min_devices {self.min_devices} cuts no device: "
                "one device could move a trimmed mean without bound",
            ),
            (0.0 <= self.min_window_s < math.inf, f"min_window_s {self.min_window_s} is not >= 0"),
            (0.0 < self.bucket_s < math.inf, f"bucket_s {self.bucket_s} is not > 0"),
            (
                0.0 <= self.max_failure_rate <= 1.0,
                f"max_failure_rate {self.max_failure_rate} is not in [0, 1]",
            ),
            (self.min_failures >= 2, f"min_failures {self.min_failures} is not >= 2: one device could halt"),
        ]
        for ok, problem in problems:
            if not ok:
                raise JudgeError(f"policy: {problem}")

    def spent(self, t: float) -> float:
        """The alpha the looks up to information fraction t (0..1) may use in all."""
        if t <= 0.0:
            return 0.0
        t = min(t, 1.0)
        if self.spending is Spending.POCOCK:
            return self.alpha * math.log1p((math.e - 1.0) * t)
        return float(2.0 * norm.sf(norm.isf(self.alpha / 2.0) / math.sqrt(t)))

    def alpha_at(self, look: int, final: bool = False) -> float:
        """The alpha this look may use (before it is split among the metrics):
        what the spending function adds since the last look; a final look
        takes all that is left. Raises JudgeError for a look out of 1..looks."""
        if not 1 <= look <= self.looks:
            raise JudgeError(f"look {look} is not in 1..{self.looks}")
        total = self.alpha if final or look == self.looks else self.spent(look / self.looks)
        return total - self.spent((look - 1) / self.looks)

    def window_start(self, updated_at: float, stage_start: float) -> float:
        """The start of the window a treated device is compared over: the
        first bucket boundary (stage_start + k * bucket_s) at or after its
        update, so devices updated in the same bucket share a window."""
        if updated_at <= stage_start:
            return stage_start
        return stage_start + math.ceil((updated_at - stage_start) / self.bucket_s) * self.bucket_s


@dataclass(frozen=True)
class Observation:
    """One device's values over the clock window [window_start, now], one
    number per metric (None: it lacked data). A treated device gives its
    update time and one observation; a control device gives one per window
    that treated devices use (the same clock window, like with like).
    baseline: the same metrics over a reference window before the stage; a
    metric that any observation gives a baseline for is compared by each
    device's change from it, and a device without one is left out of it."""

    device: str
    group: Group
    window_start: float
    values: Mapping[str, float | None]
    updated_at: float | None = None
    baseline: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class HardCounts:
    """Updates of the stage: offered, and how many failed or rolled back."""

    offered: int
    failed: int = 0
    rolled_back: int = 0


@dataclass(frozen=True)
class HardVerdict:
    offered: int
    failed: int
    rolled_back: int
    rate: float
    limit: float
    result: Result
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, as Judgement.to_dict gives them."""
        return _plain(vars(self))


@dataclass(frozen=True)
class MetricVerdict:
    """One metric at one look. effect: the treated devices' shift from the
    control, as a share of the control's level, positive = worse; p_value:
    one-sided, in the worse direction (None: every value equal); alpha: the
    threshold p had to meet at this look."""

    name: str
    critical: bool
    result: Result
    n_treatment: int
    n_control: int
    median_treatment: float | None
    median_control: float | None
    effect: float | None
    p_value: float | None
    alpha: float
    min_effect: float
    paired: bool  # compared by each device's change from its baseline
    strata: int
    n_pending: int  # treated devices not compared yet: window too young, or no control over it
    n_ignored: int  # values ignored: NaN, infinite or beyond MAX_ABS_VALUE
    unit: str
    reason: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricVerdict:
        """One of Judgement.to_dict's metrics back (a look stored with a
        rollout's decisions). Raises JudgeError for one that is not."""
        try:
            values = {k: d[k] for k in cls.__dataclass_fields__}
            values["result"] = Result(values["result"])
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise JudgeError(f"not a stored metric verdict: {exc}") from None


@dataclass(frozen=True)
class Judgement:
    """A stage at one look: halt when a rule fails; advance (only at the final
    look) when none does and every critical metric could be judged."""

    look: int
    looks: int
    final: bool
    result: Result
    halt: bool
    advance: bool
    reasons: tuple[str, ...]
    metrics: tuple[MetricVerdict, ...]
    hard: HardVerdict

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (strict: a non-finite number becomes null)."""
        return {
            "look": self.look,
            "looks": self.looks,
            "final": self.final,
            "result": self.result.value,
            "halt": self.halt,
            "advance": self.advance,
            "reasons": list(self.reasons),
            "metrics": [_plain(vars(m)) for m in self.metrics],
            "hard": self.hard.to_dict(),
        }


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, enum.Enum):
            v = v.value
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


# ---- the hard-failure rule -------------------------------------------------------


def judge_hard(hard: HardCounts, policy: Policy) -> HardVerdict:
    """Failed updates and rollbacks among the devices offered, against the
    limit: above it with at least min_failures fails; above it with fewer is
    marginal (one device cannot halt a stage). Raises JudgeError."""
    counts = (hard.offered, hard.failed, hard.rolled_back)
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
        raise JudgeError(f"hard counts {counts} are not whole numbers >= 0")
    bad = hard.failed + hard.rolled_back
    if bad > hard.offered:
        raise JudgeError(f"{bad} failed or rolled back of only {hard.offered} offered")
    rate = bad / hard.offered if hard.offered else 0.0
    said = (
        f"hard failures: {hard.failed} failed + {hard.rolled_back} rolled back of {hard.offered} offered = "
        f"{rate:.1%} (limit {policy.max_failure_rate:.1%})"
    )
    if rate <= policy.max_failure_rate:
        result, reason = Result.PASS, said
    elif bad < policy.min_failures:
        result, reason = Result.MARGINAL, f"{said}, but fewer than {policy.min_failures} failures"
    else:
        result, reason = Result.FAIL, said
    return HardVerdict(
        hard.offered, hard.failed, hard.rolled_back, rate, policy.max_failure_rate, result, reason
    )


# ---- the data of one metric ------------------------------------------------------


class _Side(NamedTuple):
    """One group's devices in one window: what is compared (the value, or its
    change from the baseline) and the value itself, both oriented so that
    larger is worse."""

    ids: tuple[str, ...]
    x: Values
    level: Values

    def without(self, device: str) -> _Side:
        keep = [i for i, d in enumerate(self.ids) if d != device]
        return _Side(tuple(self.ids[i] for i in keep), self.x[keep], self.level[keep])


class _Stratum(NamedTuple):
    window: float
    t: _Side
    c: _Side


class _Windows(NamedTuple):
    treated: dict[float, list[Observation]]  # by window, old enough to judge
    controls: dict[float, list[Observation]]
    young: int  # treated devices whose window is younger than min_window_s


def _accepted(v: float | None) -> float | None:
    """A device's value, or None when it lacked data or sent one the judge
    ignores: NaN, infinite, or beyond MAX_ABS_VALUE."""
    if v is None:
        return None
    x = float(v)
    return x if math.isfinite(x) and abs(x) <= MAX_ABS_VALUE else None


def _check_values(o: Observation, names: Collection[str]) -> None:
    """Raise JudgeError if a metric's value or baseline is not a number or
    None (the caller's mistake: the metrics are computed by the gateway)."""
    for kind, values in (("value", o.values), ("baseline", o.baseline)):
        for name in names:
            v = values.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise JudgeError(f"{o.device}: {kind} of {name} is {type(v).__name__}, not a number")


def _windows(
    observations: Iterable[Observation], names: Collection[str], policy: Policy, now: float
) -> _Windows:
    """The observations checked and grouped by window. Raises JudgeError."""
    treated: dict[float, list[Observation]] = {}
    controls: dict[float, list[Observation]] = {}
    seen_treated: set[str] = set()
    seen_control: set[tuple[str, float]] = set()
    young = 0
    for o in observations:
        if not isinstance(o.group, Group):
            raise JudgeError(f"{o.device}: group {o.group!r} is not a Group")
        if not math.isfinite(o.window_start):
            raise JudgeError(f"{o.device}: window_start {o.window_start} is not a time")
        _check_values(o, names)
        if o.group is Group.TREATMENT:
            if o.device in seen_treated:
                raise JudgeError(f"{o.device}: more than one treated observation")
            seen_treated.add(o.device)
            if o.updated_at is None or not math.isfinite(o.updated_at):
                raise JudgeError(f"{o.device}: a treated device needs its update time")
            if o.window_start < o.updated_at:
                raise JudgeError(
                    f"{o.device}: its window starts at {o.window_start}, before its update at "
                    f"{o.updated_at}: it would mix in the old release"
                )
            if now - o.window_start < policy.min_window_s:
                young += 1
            else:
                treated.setdefault(o.window_start, []).append(o)
        else:
            if o.updated_at is not None:
                raise JudgeError(f"{o.device}: a control device has no update time")
            if (o.device, o.window_start) in seen_control:
                raise JudgeError(f"{o.device}: more than one control observation for one window")
            seen_control.add((o.device, o.window_start))
            controls.setdefault(o.window_start, []).append(o)
    both = seen_treated & {d for d, _ in seen_control}
    if both:
        raise JudgeError(f"in both groups: {', '.join(sorted(both)[:5])}")
    return _Windows(treated, controls, young)


def _side(obs: Sequence[Observation], spec: MetricSpec, sign: float, paired: bool) -> tuple[_Side, int]:
    """One group's values of one metric in one window, and how many were
    ignored. Paired: compared by change from the baseline, and a device
    without one is left out."""
    ids: list[str] = []
    xs: list[float] = []
    levels: list[float] = []
    ignored = 0
    for o in obs:
        raw = o.values.get(spec.name)
        x = _accepted(raw)
        b: float | None = 0.0
        if x is not None and paired:
            raw = o.baseline.get(spec.name)
            b = _accepted(raw)
        if x is None or b is None:
            ignored += raw is not None
            continue
        ids.append(o.device)
        xs.append(sign * (x - b))
        levels.append(sign * x)
    return _Side(tuple(ids), np.asarray(xs, dtype=np.float64), np.asarray(levels, dtype=np.float64)), ignored


# ---- evidence: the test and the effect -------------------------------------------


class _Evidence(NamedTuple):
    p: float | None
    effect: float


def _evidence(strata: Sequence[_Stratum], trim: float, floor: float) -> _Evidence:
    """The one-sided p-value that the treated devices are worse (van Elteren's
    stratified rank test: scipy's Mann-Whitney U per window, its z-scores
    combined with weights sqrt(n m / (n + m + 1))), and the effect: the
    trimmed mean of each treated device's excess over its window's control
    (trimmed mean), over the control's level (at least floor)."""
    used = [s for s in strata if len(s.t.x) and len(s.c.x)]
    if not used:
        return _Evidence(None, 0.0)
    ps: list[float] = []
    weights: list[float] = []
    for s in used:
        if np.ptp(np.concatenate((s.t.x, s.c.x))) == 0.0:
            continue  # every value equal: this window says nothing either way
        # asymptotic: the exact distribution is wrong with ties and slow; with
        # continuity correction the normal approximation errs on the side of passing
        res = mannwhitneyu(s.t.x, s.c.x, alternative="greater", method="asymptotic", use_continuity=True)
        ps.append(float(res.pvalue))
        n, m = len(s.t.x), len(s.c.x)
        weights.append(math.sqrt(n * m / (n + m + 1)))
    if not ps:
        p: float | None = None
    elif len(ps) == 1:
        p = ps[0]
    else:
        w = np.asarray(weights)
        z = norm.isf(np.clip(ps, _P_CLIP, 1.0 - 1e-16))
        p = float(norm.sf(float(np.dot(w, z)) / math.sqrt(float(np.dot(w, w)))))
    excess = np.concatenate([s.t.x - _trimmed_mean(s.c.x, trim) for s in used])
    level = abs(_trimmed_mean(np.concatenate([s.c.level for s in used]), trim))
    kept = _trimmed(excess, trim)
    shift = float(np.mean(kept))
    if abs(shift) <= 1e-12 * float(np.max(np.abs(kept))):
        shift = 0.0  # equal groups: an effect of 0, not a rounding error's sign
    scale = max(level, floor)
    if scale > 0.0:
        return _Evidence(p, shift / scale)
    return _Evidence(p, math.copysign(math.inf, shift) if shift else 0.0)


def _trimmed(x: Values, trim: float) -> Values:
    """x sorted, without its int(trim * n) smallest and largest values (as scipy's trim_mean)."""
    cut = int(trim * len(x))
    return np.sort(x)[cut : len(x) - cut]


def _trimmed_mean(x: Values, trim: float) -> float:
    return float(np.mean(_trimmed(x, trim)))


def _without(strata: Sequence[_Stratum], device: str) -> list[_Stratum]:
    """The strata with one device left out (of every window it is in)."""
    return [_Stratum(s.window, s.t.without(device), s.c.without(device)) for s in strata]


def _influential(strata: Sequence[_Stratum]) -> list[str]:
    """The devices whose removal could weaken a fail most: in each window the
    worst treated device and the best control device (for one window these
    are exactly the ones that lower U's z-score and the trimmed-mean effect
    most), and the control device whose ranks weigh most across windows."""
    ids: list[str] = []
    weight: dict[str, float] = {}
    for s in strata:
        t, c = s.t.x, s.c.x
        if not len(t) or not len(c):
            continue
        ids.append(s.t.ids[int(np.argmax(t))])
        ids.append(s.c.ids[int(np.argmin(c))])
        n, m = len(t), len(c)
        ranked = np.sort(t)
        right = np.searchsorted(ranked, c, side="right")
        beaten_by = n - right + 0.5 * (right - np.searchsorted(ranked, c, side="left"))
        # how much leaving each control device out would lower the combined z
        scale = math.sqrt(n * m / (n + m + 1)) / math.sqrt(n * m * (n + m + 1) / 12.0)
        for device, a in zip(s.c.ids, beaten_by - n / 2.0, strict=True):
            weight[device] = weight.get(device, 0.0) + float(a) * scale
    if weight:
        ids.append(max(weight, key=lambda d: weight[d]))
    return list(dict.fromkeys(ids))


def _holds(ev: _Evidence, alpha: float, min_effect: float) -> tuple[bool, bool]:
    """(significant at alpha, effect worse by at least min_effect)."""
    return ev.p is not None and ev.p <= alpha, ev.effect > 0.0 and ev.effect >= min_effect


# ---- one metric ------------------------------------------------------------------


def _median(parts: Iterable[Values], sign: float) -> float | None:
    xs = np.concatenate([np.zeros(0), *parts])
    return float(sign * np.median(xs)) if len(xs) else None


def _judge_metric(spec: MetricSpec, policy: Policy, win: _Windows, alpha: float, look: int) -> MetricVerdict:
    sign = 1.0 if spec.better is Direction.LOWER else -1.0
    paired = any(
        spec.name in o.baseline for obs in (*win.treated.values(), *win.controls.values()) for o in obs
    )
    strata: list[_Stratum] = []
    ignored = 0
    pending = win.young
    for w in sorted(win.treated):
        t, ti = _side(win.treated[w], spec, sign, paired)
        c, ci = _side(win.controls.get(w, []), spec, sign, paired)
        ignored += ti + ci
        if not len(c.x):
            pending += len(t.x)
        elif len(t.x):
            strata.append(_Stratum(w, t, c))
    n_t = sum(len(s.t.x) for s in strata)
    n_c = len({d for s in strata for d in s.c.ids})
    med_t = _median((s.t.level for s in strata), sign)
    med_c = _median((s.c.level for s in strata), sign)
    counts = (
        f"{n_t} treated (median {_num(med_t, spec.unit)}) vs {n_c} control (median {_num(med_c, spec.unit)})"
    )

    def verdict(result: Result, reason: str, ev: _Evidence | None = None) -> MetricVerdict:
        return MetricVerdict(
            name=spec.name,
            critical=spec.critical,
            result=result,
            n_treatment=n_t,
            n_control=n_c,
            median_treatment=med_t,
            median_control=med_c,
            effect=None if ev is None else ev.effect,
            p_value=None if ev is None else ev.p,
            alpha=alpha,
            min_effect=spec.min_effect,
            paired=paired,
            strata=len(strata),
            n_pending=pending,
            n_ignored=ignored,
            unit=spec.unit,
            reason=f"{spec.name} {result.value}: {counts}{reason}",
        )

    if n_t < policy.min_devices or n_c < policy.min_devices:
        return verdict(Result.WAITING, f"; {policy.min_devices} of each needed")
    ev = _evidence(strata, policy.trim, spec.floor)
    said = _said(spec, ev, alpha, look, policy.looks)
    significant, large = _holds(ev, alpha, spec.min_effect)
    if significant and large:
        for device in _influential(strata):
            if not all(
                _holds(_evidence(_without(strata, device), policy.trim, spec.floor), alpha, spec.min_effect)
            ):
                return verdict(Result.MARGINAL, f"{said}; not so without device {device}", ev)
        return verdict(Result.FAIL, f"{said}; so with any one device left out", ev)
    if significant or large:
        return verdict(Result.MARGINAL, said, ev)
    return verdict(Result.PASS, said, ev)


def _num(x: float | None, unit: str) -> str:
    return "-" if x is None else f"{x:.3g}{' ' + unit if unit else ''}"


def _said(spec: MetricSpec, ev: _Evidence, alpha: float, look: int, looks: int) -> str:
    """The effect and the test, in words."""
    if math.isfinite(ev.effect):
        effect = f"{ev.effect:+.1%}"
    else:
        effect = ("worse" if ev.effect > 0 else "better") + " than a control level of 0"
    p = "no p (every value equal)" if ev.p is None else f"p={ev.p:.2g}"
    cmp = "<=" if ev.p is not None and ev.p <= alpha else ">"
    return f": {effect} (threshold +{spec.min_effect:.0%}), {p} {cmp} {alpha:.2g} at look {look} of {looks}"


# ---- the stage -------------------------------------------------------------------


def judge(
    specs: Sequence[MetricSpec],
    policy: Policy,
    observations: Iterable[Observation],
    hard: HardCounts,
    *,
    look: int,
    now: float,
    final: bool = False,
    settled: Mapping[str, MetricVerdict] | None = None,
) -> Judgement:
    """The stage at look `look` (1..policy.looks) at time `now`: every metric
    and the hard-failure rule. `final` (implied by the last planned look)
    spends what is left of alpha and decides whether the stage may advance.
    settled: the verdicts of metrics a final look of this stage judged
    already; they stand, untested again, so that looks after the soak
    (while another metric waits for data) do not spend alpha a second time.
    Raises JudgeError for inconsistent input (never for a device's values)."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise JudgeError(f"metric names repeat: {names}")
    final = final or look == policy.looks
    per_look = policy.alpha_at(look, final)
    win = _windows(observations, names, policy, now)
    family = {
        True: max(1, sum(s.critical for s in specs)),
        False: max(1, sum(not s.critical for s in specs)),
    }
    done = settled or {}
    verdicts = tuple(
        done[s.name] if s.name in done else _judge_metric(s, policy, win, per_look / family[s.critical], look)
        for s in specs
    )
    hard_verdict = judge_hard(hard, policy)
    failing = [v for v in verdicts if v.critical and v.result is Result.FAIL]
    halt = hard_verdict.result is Result.FAIL or bool(failing)
    reasons: list[str] = []
    if hard_verdict.result is not Result.PASS:
        reasons.append(hard_verdict.reason)
    reasons += [v.reason for v in verdicts if v.result is not Result.PASS]
    if halt:
        result = Result.FAIL
    elif any(v.critical and v.result is Result.WAITING for v in verdicts):
        result = Result.WAITING
    elif hard_verdict.result is not Result.PASS or any(
        v.result in (Result.MARGINAL, Result.FAIL) for v in verdicts
    ):
        result = Result.MARGINAL
    else:
        result = Result.PASS
    return Judgement(
        look=look,
        looks=policy.looks,
        final=final,
        result=result,
        halt=halt,
        advance=final and result in (Result.PASS, Result.MARGINAL),
        reasons=tuple(reasons),
        metrics=verdicts,
        hard=hard_verdict,
    )
