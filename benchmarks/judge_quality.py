"""The rollout judge's quality (docs/rollouts.md 10): how often it halts a
release that makes the thermostat hold its room worse, how often it halts a
good one by mistake, and how many device-hours a bad release runs before its
halt, on a fleet of 1,000 thermostats rolled out in stages of 5%, 25% and
100% with a soak of 6 hours a stage, over 200 seeds.

    .venv/bin/python -m benchmarks judge                           # 1,000 thermostats, 200 seeds
    .venv/bin/python -m benchmarks judge --devices 400 --seeds 20  # a quick check
    .venv/bin/python -m benchmarks judge --look-only               # the timed look alone
    .venv/bin/python -m benchmarks judge --look-only --look-devices 400

The rooms. Each thermostat is the firmware's own runtime with the thermostat
feature, stepped every 10 s in its own seeded room (simulator/stepped.py,
simulator/physics.Room: weather, occupants, doors) with its owner's seeded
settings (setpoint, hysteresis, a night setback for half of them): once
with the release before, from the day before the rollout to its end, and
once with the bad release through the rollout: its thermostat code takes
the hysteresis 1.35 times wider, about 20% more mean deviation from the
setpoint over the fleet (the run measures and prints it). The telemetry is
reduced to sums per hour of what the feature's metrics read; a window's
value from those sums is checked against gateway/metrics.compute on the raw
telemetry of the first rooms in every run. The rooms are simulated once for
a given code (minutes) and kept in bench-results/.

A seed. The rollout starts at a whole hour of the second day (0 to 3 hours
later, by seed), its stages assigned by gateway/rollout_plan.assign with the
seed; each member commits 90 s to 10 min after its stage starts (drawn by
seed) and runs the bad release's room from the next whole hour, if the
release is bad. The plan (rollout_plan.step), the looks
(rollout_judging.look_due), the judge's policy (rollout_judging.policy_for),
the rule that leaves a stage to the failure counts
(rollout_judging.failures_only) and the judge (rollout_judging.judge_stage,
gateway/judge.py: baselines of the day before, Mann-Whitney, O'Brien-Fleming
spending) are the gateway's own; only the values come from the rooms' sums
instead of the store. A rollout not over 24 hours after it started is
counted as it stands then.

Each release is judged three ways in the same run: as the gateway does, the
same judge without the baselines of the day before (plain), and by failures
alone (no product metric: a bad release that boots fine is never halted, and
its exposure is the baseline of the exposure ratio). Figures go to
bench-results/judge.json.

A look on the store. The gateway's own final look (rollout_judging.look)
at a first stage in a real gateway store, filled through the store's own
writes: 1,000 thermostats (--look-devices) reporting every 10 s, each
message shaped as the thermostat's (the room a seeded random walk through
its owner's band), over the stage's 6 hours and the same hours of the day
before; 5% treated, committed over the first 3 hours (3 windows), the rest
the control. Timed against reading and parsing once the rows its windows
cover; its figures go under "look" (--look-only runs it alone and keeps the
file's other figures).
"""

from __future__ import annotations

import argparse
import bisect
import calendar
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.judge import HardCounts, Policy
from gateway.metrics import MIN_COVERAGE, Sample, compute, declared
from gateway.paths import firmware_dir
from gateway.rollout_judging import (
    BASELINE_S,
    LOOKS,
    Measure,
    Reader,
    Stage,
    Values,
    failures_only,
    judge_stage,
    look,
    look_due,
    measures,
    policy_for,
    verdict_of,
)
from gateway.rollout_plan import Member, Verdict, assign, step
from gateway.rollouts import Rollout
from gateway.store import Store, TelemetryRow
from simulator.stepped import STEP_S, thermostat_in_a_room
from tests.support.messages import hello

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "judge.json"
HOUR = 3600.0
G0 = float(calendar.timegm((2024, 1, 15, 0, 0, 0)))  # a Monday, 00:00 UTC: the rooms' first hour
FIRST_T0_H = 26  # the earliest rollout start, hours after G0 (a day of baselines and warm-up before)
T0_SPREAD_H = 4  # starts at FIRST_T0_H + 0..3 h, by seed
HORIZON_H = 24  # a rollout is counted as it stands this long after its start
GOOD_H = FIRST_T0_H + T0_SPREAD_H + HORIZON_H  # hours of the release before, from G0
BAD_FROM_H = FIRST_T0_H - 2  # the bad release's rooms: two hours to settle before the first rollout
BAD_H = GOOD_H - BAD_FROM_H
BAD_PATCH = ('h = cfg["hysteresis"]', 'h = cfg["hysteresis"] * 1.35')  # the bad release's code
ROOM_TEMP = 21.0  # when a room's run starts: the thermostat ran before
STAGES = (0.05, 0.25, 1.0)
SOAK_S = 6 * HOUR
COMMIT_S = (90.0, 600.0)  # offer to commit, per member
HEALTH_VALUE = 0.0  # no resets, feature errors or offline time: the releases differ in the room only
VARIANTS = ("judge", "plain", "failures")
VALIDATED_ROOMS = 2
_SUMS = ("error", "heating", "relay", "samples")  # per hour: sum |T - setpoint| while heating, ...

Sums = NDArray[np.float64]  # (rooms, hours, len(_SUMS))


def _manifests() -> dict[str, Any]:
    path = firmware_dir() / "features" / "thermostat" / "manifest.json"
    return {"thermostat": json.loads(path.read_text())}


# ---- the rooms ---------------------------------------------------------------------


def _hourly(run: Any, start: float, hours: int, keep: list[Sample] | None) -> Sums:
    """Sums per hour of a thermostat's telemetry from start."""
    out = np.zeros((hours, len(_SUMS)))
    for t, data in run:
        h = int((t - start) // HOUR)
        if h >= hours:
            break
        if keep is not None:
            keep.append(Sample(t, data))
        th = data["features"]["thermostat"]
        row = out[h]
        if th["mode"] == "heat":
            row[0] += abs(data["sensors"]["temperature"] - th["setpoint"])
            row[1] += 1
        row[2] += 1.0 if data["actuators"]["relay"] else 0.0
        row[3] += 1
    return out


def owner_settings(seed: int) -> dict[str, Any]:
    """What room seed's owner set, seeded: a setpoint of 19 to 23 C, most
    keeping the default hysteresis, half of them a night setback."""
    rng = random.Random(f"owner:{seed}")
    sp = rng.choice([19.0, 19.5, 20.0, 20.5, 21.0, 21.0, 21.5, 22.0, 22.5, 23.0])
    settings: dict[str, Any] = {
        "setpoint": sp,
        "hysteresis": rng.choice([0.2, 0.3, 0.3, 0.3, 0.4, 0.5]),
    }
    if rng.random() < 0.5:
        morning = f"{rng.randint(5, 7):02d}:{rng.choice(['00', '30'])}"
        night = f"{rng.randint(21, 23):02d}:{rng.choice(['00', '30'])}"
        settings["schedule"] = [[morning, sp], [night, sp - rng.choice([2.0, 3.0, 4.0])]]
    return settings


def _room(seed: int) -> tuple[int, Sums, Sums, list[Sample]]:
    """Room `seed`: the release before from G0, the bad release from BAD_FROM_H
    (and the raw telemetry of the release before, for the first rooms)."""
    base = Path(tempfile.mkdtemp(prefix=f"judge-room-{seed}-"))
    try:
        keep: list[Sample] | None = [] if seed < VALIDATED_ROOMS else None
        settings = owner_settings(seed)
        good_run = thermostat_in_a_room(
            base / "good",
            seed,
            G0,
            GOOD_H * HOUR,
            config=settings,
            room_temp=ROOM_TEMP,
        )
        good = _hourly(good_run, G0, GOOD_H, keep)
        bad_start = G0 + BAD_FROM_H * HOUR
        bad_run = thermostat_in_a_room(
            base / "bad",
            seed,
            bad_start,
            BAD_H * HOUR,
            config=settings,
            patch=BAD_PATCH,
            room_temp=ROOM_TEMP,
        )
        bad = _hourly(bad_run, bad_start, BAD_H, None)
        return seed, good, bad, keep or []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _code_key(devices: int) -> str:
    """What the rooms depend on: the firmware, the simulator's physics and
    stepping, and this benchmark's settings."""
    h = hashlib.sha256()
    files = sorted(firmware_dir().rglob("*.py")) + sorted(
        (firmware_dir() / "features" / "thermostat").glob("*")
    )
    files += [ROOT / "simulator" / n for n in ("physics.py", "stepped.py", "hal.py", "loader.py")]
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    h.update(
        repr(
            (
                devices,
                G0,
                GOOD_H,
                BAD_FROM_H,
                BAD_PATCH,
                ROOM_TEMP,
                STEP_S,
                [owner_settings(i) for i in range(devices)],
            )
        ).encode()
    )
    return h.hexdigest()[:16]


@dataclass
class Rooms:
    good: Sums  # prefix sums over hours: good[:, h] = sum of hours < h
    bad: Sums
    samples: list[list[Sample]]  # raw telemetry of the release before, first rooms
    simulated_s: float
    cached: bool


def _prefix(sums: Sums) -> Sums:
    out = np.zeros((sums.shape[0], sums.shape[1] + 1, sums.shape[2]))
    np.cumsum(sums, axis=1, out=out[:, 1:])
    return out


def simulate_rooms(devices: int, jobs: int) -> Rooms:
    """Every room's sums, from bench-results/ when this code simulated them before."""
    cache = OUT.parent / f"judge-rooms-{_code_key(devices)}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            kept = [
                [Sample(float(t), json.loads(d)) for t, d in zip(z[f"t{i}"], z[f"d{i}"], strict=True)]
                for i in range(VALIDATED_ROOMS)
                if f"t{i}" in z
            ]
            return Rooms(_prefix(z["good"]), _prefix(z["bad"]), kept, float(z["simulated_s"]), True)
    t0 = time.monotonic()
    good = np.zeros((devices, GOOD_H, len(_SUMS)))
    bad = np.zeros((devices, BAD_H, len(_SUMS)))
    samples: list[list[Sample]] = [[] for _ in range(min(devices, VALIDATED_ROOMS))]
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for n, (seed, g, b, keep) in enumerate(pool.imap_unordered(_room, range(devices), chunksize=4), 1):
            good[seed], bad[seed] = g, b
            if keep:
                samples[seed] = keep
            if n % 100 == 0 or n == devices:
                print(f"  rooms simulated: {n}/{devices} ({time.monotonic() - t0:.0f} s)", flush=True)
    took = time.monotonic() - t0
    cache.parent.mkdir(parents=True, exist_ok=True)
    for old in cache.parent.glob("judge-rooms-*.npz"):
        old.unlink()
    raw: dict[str, Any] = {}
    for i, room in enumerate(samples):
        raw[f"t{i}"] = np.array([s.t for s in room])
        raw[f"d{i}"] = np.array([json.dumps(s.data) for s in room])
    np.savez_compressed(cache, good=good, bad=bad, simulated_s=took, **raw)
    return Rooms(_prefix(good), _prefix(bad), samples, took, False)


# ---- a rollout over the rooms ---------------------------------------------------


class RoomReader(Reader):
    """The metrics of the rooms' sums: a member updated to a bad release
    runs the bad release's room from the first whole hour after its commit."""

    def __init__(
        self,
        rooms: Rooms,
        ms: Sequence[Measure],
        now: float,
        index: dict[str, int],
        switch_h: dict[str, int],
        baselines: bool,
    ) -> None:
        super().__init__(ms, now)
        self.rooms = rooms
        self.index = index
        self.switch_h = switch_h
        self.baselines = baselines

    def values(self, dev: str, starts: Sequence[float], until: float) -> list[tuple[Values, Values]]:
        got = super().values(dev, starts, until)
        return got if self.baselines else [(cur, {}) for cur, _ in got]

    def _sums(self, dev: str, start: float, end: float) -> Sums:
        a, b = (start - G0) / HOUR, (end - G0) / HOUR
        if a != int(a) or b != int(b) or not 0 <= a <= b <= GOOD_H:
            raise ValueError(f"a window of whole hours within the rooms' is needed, not {a}..{b}")
        i, lo, hi = self.index[dev], int(a), int(b)
        s = min(max(self.switch_h.get(dev, hi), lo), hi)  # hours from s on: the bad release
        good = self.rooms.good[i]
        out: Sums = good[s] - good[lo]
        if s < hi:
            bad = self.rooms.bad[i]
            out = out + bad[hi - BAD_FROM_H] - bad[s - BAD_FROM_H]
        return out

    def over(self, dev: str, start: float, end: float) -> Values:
        error, heating, relay, n = self._sums(dev, start, end)
        span = end - start
        out: Values = {}
        for m in self.ms:
            name = m.spec.name
            if name == "thermostat.setpoint_error":
                out[name] = error / heating if heating * STEP_S >= MIN_COVERAGE * span else None
            elif name == "thermostat.heater_duty":
                out[name] = relay / n if n * STEP_S >= MIN_COVERAGE * span else None
            else:
                out[name] = HEALTH_VALUE
        return out


@dataclass
class Outcome:
    seed: int
    release: str  # good | bad
    variant: str
    state: str  # halted | completed | running (at the horizon)
    stage: int  # the stage it ended (or stood) in, 0 first
    hours: float  # from its start to its halt or completion, or the horizon
    exposure_h: float  # device-hours the release ran before the halt (or the horizon)
    looks: int
    reason: str
    effect: float | None  # the judge's effect on the setpoint error at its last look (None: not judged)


def _rollout(seed: int, t0: float, devices: int) -> Rollout:
    return Rollout(
        id=f"bench-{seed}",
        release="r",
        ref="thermostat@2",
        model="thermostat",
        cohort="model=thermostat",
        stages=STAGES,
        soak_s=SOAK_S,
        max_failure_rate=0.05,
        metrics=("default",),
        reverts={},
        seed=seed,
        state="running",
        stage=0,
        stage_started=t0,
        created=t0,
        updated=t0,
    )


def run_rollout(rooms: Rooms, devices: int, seed: int, release: str, variant: str) -> Outcome:
    """One rollout of `release` to the fleet, judged the `variant` way."""
    rng = random.Random(f"judge-bench:{seed}")
    t0 = G0 + (FIRST_T0_H + rng.randrange(T0_SPREAD_H)) * HOUR
    ids = [f"th-{i:05d}" for i in range(devices)]
    index = {d: i for i, d in enumerate(ids)}
    delay = {d: rng.uniform(*COMMIT_S) for d in ids}
    stage_of = assign(ids, STAGES, seed)
    ms = measures(_manifests(), ("default",))
    r = _rollout(seed, t0, devices)
    policy: Policy = policy_for(r.soak_s, r.max_failure_rate)
    committed: dict[str, float] = {}  # device -> when it committed
    offered: dict[str, float] = {dev: t0 for dev, s in stage_of.items() if s == 0}
    end = t0 + HORIZON_H * HOUR
    looks = 0
    done_this_stage = 0
    effect: float | None = None
    while True:
        now = r.stage_started + max(r.soak_s / LOOKS, 1.0) * (done_this_stage + 1)
        if now > end:
            return _outcome(seed, release, variant, r, "running", end, t0, committed, looks, "", effect)
        for dev, at in offered.items():
            if dev not in committed and at + delay[dev] <= now:
                committed[dev] = at + delay[dev]
        verdict, seen = _verdict(
            rooms, r, stage_of, offered, committed, index, release, variant, policy, ms, done_this_stage, now
        )
        done_this_stage += 1
        looks += 1
        effect = seen if seen is not None else effect
        members = [
            Member(
                dev,
                stage_of[dev],
                online=True,
                update="committed" if dev in committed else ("offered" if dev in offered else None),
            )
            for dev in ids
        ]
        plan = step(r.state, r.stage, r.stage_started, len(r.stages), r.soak_s, members, verdict, now, False)
        if plan.state == "halted":
            return _outcome(
                seed, release, variant, r, "halted", now, t0, committed, looks, plan.reason, effect
            )
        if plan.state == "completed":
            return _outcome(
                seed, release, variant, r, "completed", now, t0, committed, looks, plan.reason, effect
            )
        if plan.stage is not None:
            r = Rollout(**(asdict(r) | {"stage": plan.stage, "stage_started": now}))
            done_this_stage = 0
            offered |= {dev: now for dev, s in stage_of.items() if s == plan.stage}


def _verdict(
    rooms: Rooms,
    r: Rollout,
    stage_of: dict[str, int],
    offered: dict[str, float],
    committed: dict[str, float],
    index: dict[str, int],
    release: str,
    variant: str,
    policy: Policy,
    ms: Sequence[Measure],
    done: int,
    now: float,
) -> tuple[Verdict, float | None]:
    """What the gateway's runner decides at look k (gateway/rollout_service.py
    verdict): no failed updates here, so the metrics decide, where a control
    group is left."""
    treated = tuple(sorted(committed.items()))
    control = tuple(dev for dev, s in stage_of.items() if s > r.stage and dev not in offered)
    reached = sum(1 for s in stage_of.values() if s <= r.stage)
    hard = HardCounts(offered=len(offered), failed=0, rolled_back=0)
    due = look_due(r, done, now)
    assert due is not None
    k, final = due
    why = failures_only(reached, len(control), done, policy.min_devices)
    if variant == "failures" or why is not None:
        return Verdict(halt=False, passing=final), None
    switch_h = {}
    if release == "bad":
        switch_h = {dev: math.ceil((c - G0) / HOUR) for dev, c in committed.items()}
    reader = RoomReader(rooms, ms, now, index, switch_h, baselines=variant == "judge")
    j = judge_stage(reader, Stage(r.stage_started, treated, control, hard), ms, policy, k, final, now)
    sp = [m.effect for m in j.metrics if m.name == "thermostat.setpoint_error"]
    return verdict_of(j), sp[0] if sp else None


def _outcome(
    seed: int,
    release: str,
    variant: str,
    r: Rollout,
    state: str,
    at: float,
    t0: float,
    committed: dict[str, float],
    looks: int,
    reason: str,
    effect: float | None,
) -> Outcome:
    exposure = sum(max(0.0, at - c) for c in committed.values()) / HOUR
    return Outcome(seed, release, variant, state, r.stage, (at - t0) / HOUR, exposure, looks, reason, effect)


# ---- a look on the store ----------------------------------------------------------

LOOK_DEVICES = 1000
LOOK_COMMIT_S = 3 * HOUR  # the first stage's members commit over its first 3 hours: several windows
LOOK_BATCH_STEPS = 30  # telemetry stored in batches of 5 minutes of the fleet's, as the gateway flushes


@dataclass
class LookStage:
    """A first stage in a gateway store, as a final look finds it."""

    db: Path
    stage: Stage
    now: float
    rows: int  # telemetry rows stored
    filled_s: float


def _telemetry(store: Store, ids: Sequence[str], start: float, hours: float, rng: np.random.Generator) -> int:
    """Every thermostat's telemetry every STEP_S for `hours` from start, each
    at its own second of the period, shaped as the thermostat's: the room a
    seeded random walk that the relay drives through its owner's band."""
    n = len(ids)
    owners = [owner_settings(i) for i in range(n)]
    sp = np.array([o["setpoint"] for o in owners])
    band = np.array([o["hysteresis"] for o in owners])
    temp = sp + rng.uniform(-1.0, 1.0, n) * band
    relay = rng.random(n) < 0.5
    humidity = rng.uniform(35.0, 55.0, n)
    phase = rng.uniform(0.0, STEP_S, n)
    setpoints = sp.tolist()
    stored = 0
    batch: list[TelemetryRow] = []
    for k in range(1, int(hours * HOUR / STEP_S) + 1):
        temp += np.where(relay, 0.012, -0.007) + rng.normal(0.0, 0.01, n)
        humidity += rng.normal(0.0, 0.05, n)
        relay = np.where(temp < sp - band, True, np.where(temp > sp + band, False, relay))
        at = (start + k * STEP_S + phase).tolist()
        for i, (t, x, h, on) in enumerate(
            zip(at, temp.tolist(), humidity.tolist(), relay.tolist(), strict=True)
        ):
            data = {
                "sensors": {"humidity": h, "temperature": x},
                "actuators": {"relay": on},
                "features": {
                    "thermostat": {"setpoint": setpoints[i], "heating": on, "mode": "heat", "offset": 0}
                },
            }
            batch.append(TelemetryRow(ids[i], t, t, k, data))
        if k % LOOK_BATCH_STEPS == 0:
            stored += store.add_telemetry(batch)[0]
            batch = []
    return stored + store.add_telemetry(batch)[0]


def fill_look_store(db: Path, devices: int, seed: int) -> LookStage:
    """A gateway store (gateway/store.py, filled through its own writes) of
    `devices` thermostats: their hellos and states, telemetry every STEP_S
    over the same 6 hours of the day before and a first stage's soak, a few
    crashes and feature errors; the stage 5% of them, committed over its
    first LOOK_COMMIT_S, the rest its control."""
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    pick = random.Random(f"look:{seed}")
    ids = [f"th-{i:05d}" for i in range(devices)]
    start = G0 + FIRST_T0_H * HOUR
    now = start + SOAK_S
    with Store(db) as store:
        for dev in ids:
            store.upsert_hello(dev, hello(dev), start - BASELINE_S - HOUR)
            store.set_state(dev, True, None, start - BASELINE_S - HOUR)
        rows = _telemetry(store, ids, start - BASELINE_S, SOAK_S / HOUR, rng)
        rows += _telemetry(store, ids, start, SOAK_S / HOUR, rng)
        for dev in ids:
            if pick.random() < 0.02:  # a crash and its reconnect, the day before or in the stage
                at = pick.choice((start - BASELINE_S, start)) + pick.uniform(0.0, SOAK_S - 60.0)
                store.set_state(dev, False, "lost", at)
                store.upsert_hello(dev, hello(dev, boot_count=2, reset_cause="crash"), at + 20.0)
                store.set_state(dev, True, "active", at + 20.0)
            if pick.random() < 0.05:
                at = pick.choice((start - BASELINE_S, start)) + pick.uniform(0.0, SOAK_S)
                store.add_event(dev, "feature_error", "thermostat", "ValueError: sensor", at)
    stage_of = assign(ids, STAGES, seed)
    treated = tuple(
        sorted((dev, start + pick.uniform(COMMIT_S[0], LOOK_COMMIT_S)) for dev in ids if stage_of[dev] == 0)
    )
    control = tuple(dev for dev in ids if stage_of[dev] > 0)
    stage = Stage(start, treated, control, HardCounts(offered=len(treated), failed=0, rolled_back=0))
    return LookStage(db, stage, now, rows, time.monotonic() - t0)


def _read_once(s: LookStage, policy: Policy) -> tuple[float, int, int]:
    """The baseline: every telemetry row the look's windows cover, read from
    the store and parsed once (a device's span from its earliest window, and
    the same hours of the day before): seconds, rows, and the rows of every
    window and baseline counted apiece (what reading each alone reads)."""
    st = s.stage
    windows = sorted({policy.window_start(t, st.stage_started) for _, t in st.treated})
    starts = [(dev, [policy.window_start(t, st.stage_started)]) for dev, t in st.treated]
    starts += [(dev, windows) for dev in st.control]
    rows = apiece = 0
    t0 = time.perf_counter()
    with Store(s.db, readonly=True) as store:
        for dev, ws in starts:
            for shift in (0.0, BASELINE_S):
                got = store.telemetry_between(dev, ws[0] - shift, s.now - shift)
                for _, data in got:
                    json.loads(data)
                rows += len(got)
                at = [t for t, _ in got]
                apiece += sum(len(at) - bisect.bisect_left(at, w - shift) for w in ws)
    return time.perf_counter() - t0, rows, apiece


def look_on_the_store(devices: int, seed: int = 0) -> dict[str, Any]:
    """Time the gateway's final look (rollout_judging.look) at a first stage
    of `devices` thermostats in a real store, against reading and parsing
    the rows its windows cover once."""
    ms = measures(_manifests(), ("default",))
    policy = policy_for(SOAK_S, 0.05)
    with tempfile.TemporaryDirectory(prefix="judge-look-") as tmp:
        s = fill_look_store(Path(tmp) / "gateway.db", devices, seed)
        windows = len({policy.window_start(t, s.stage.stage_started) for _, t in s.stage.treated})
        print(
            f"a store of {devices} thermostats: {s.rows:,} telemetry rows "
            f"({SOAK_S / HOUR:g} h of a first stage and of the day before, every {STEP_S:g} s) "
            f"stored in {s.filled_s:.0f} s; {len(s.stage.treated)} treated in {windows} windows, "
            f"{len(s.stage.control)} control",
            flush=True,
        )
        once_s, rows, apiece = _read_once(s, policy)
        t0 = time.perf_counter()
        j = look(s.db, s.stage, ms, policy, LOOKS, True, s.now)
        look_s = time.perf_counter() - t0
    digest = hashlib.sha256(json.dumps(j.to_dict(), sort_keys=True).encode()).hexdigest()
    print(
        f"the final look: {look_s:.1f} s for the {rows:,} rows its windows cover "
        f"({apiece:,} counted window by window): {rows / look_s:,.0f} rows/s; "
        f"reading and parsing them once: {once_s:.1f} s ({rows / once_s:,.0f} rows/s); "
        f"the look takes {look_s / once_s:.2f} x that"
    )
    print(f"  its judgement: {j.result.value} (sha256 {digest[:16]})")
    return {
        "devices": devices,
        "treated": len(s.stage.treated),
        "control": len(s.stage.control),
        "windows": windows,
        "store_rows": s.rows,
        "filled_s": s.filled_s,
        "rows": rows,
        "rows_window_by_window": apiece,
        "look_s": look_s,
        "rows_per_s": rows / look_s,
        "read_once_s": once_s,
        "read_once_rows_per_s": rows / once_s,
        "look_over_read_once": look_s / once_s,
        "result": j.result.value,
        "judgement_sha256": digest,
    }


# ---- checks and figures -----------------------------------------------------------


def check_sums(rooms: Rooms, devices: int) -> list[str]:
    """A window's values from the sums against gateway/metrics.compute on the
    raw telemetry of the first rooms: the problems found."""
    decls = {d.key: d for d in declared(_manifests())}
    ms = measures(_manifests(), ("default",))
    problems = []
    for i, samples in enumerate(rooms.samples):
        reader = RoomReader(rooms, ms, 0.0, {"d": i}, {}, baselines=False)
        for a_h, b_h in ((2, 5), (13, 14), (FIRST_T0_H, FIRST_T0_H + 6), (3, GOOD_H)):
            a, b = G0 + a_h * HOUR, G0 + b_h * HOUR
            mine = reader.over("d", a, b)
            for key in ("thermostat.setpoint_error", "thermostat.heater_duty"):
                want = compute(decls[key], samples, a, b)
                got = mine[key]
                if want is None or got is None or abs(want - got) > 1e-9 * max(1.0, abs(want)):
                    problems.append(f"room {i} {key} over hours {a_h}..{b_h}: sums {got}, compute {want}")
    return problems


def measured_effect(rooms: Rooms) -> float:
    """The bad release's mean deviation from the setpoint against the release
    before's, over the rollouts' hours, all rooms together."""
    lo, hi = FIRST_T0_H, GOOD_H
    good = rooms.good[:, hi] - rooms.good[:, lo]
    bad = rooms.bad[:, hi - BAD_FROM_H] - rooms.bad[:, lo - BAD_FROM_H]
    g = float(np.sum(good[:, 0]) / np.sum(good[:, 1]))
    b = float(np.sum(bad[:, 0]) / np.sum(bad[:, 1]))
    return b / g - 1.0


_ROOMS: Rooms | None = None  # for the worker processes (forked)
_DEVICES = 0


def _one(job: tuple[int, str, str]) -> Outcome:
    assert _ROOMS is not None
    return run_rollout(_ROOMS, _DEVICES, *job)


def summarize(outcomes: Sequence[Outcome], release: str, variant: str) -> dict[str, Any]:
    runs = [o for o in outcomes if o.release == release and o.variant == variant]
    halted = [o for o in runs if o.state == "halted"]
    first = [o for o in halted if o.stage == 0]
    effects = [o.effect for o in runs if o.effect is not None]
    return {
        "runs": len(runs),
        "halted": len(halted),
        "halted_in_stage_1": len(first),
        "share_halted": len(halted) / len(runs) if runs else None,
        "share_halted_in_stage_1": len(first) / len(runs) if runs else None,
        "completed": sum(o.state == "completed" for o in runs),
        "still_running": sum(o.state == "running" for o in runs),
        "exposure_device_h_mean": float(np.mean([o.exposure_h for o in runs])) if runs else None,
        "exposure_device_h_mean_halted": float(np.mean([o.exposure_h for o in halted])) if halted else None,
        "hours_to_halt_mean": float(np.mean([o.hours for o in halted])) if halted else None,
        "looks_mean": float(np.mean([o.looks for o in runs])) if runs else None,
        "halted_at_look": {
            str(k): sum(o.looks == k for o in halted) for k in sorted({o.looks for o in halted})
        },
        "effect_median": float(np.median(effects)) if effects else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    global _ROOMS, _DEVICES
    p = argparse.ArgumentParser(prog="benchmarks judge", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: one a CPU)")
    p.add_argument(
        "--look-devices",
        type=int,
        default=LOOK_DEVICES,
        help=f"thermostats in the store of the timed look (default {LOOK_DEVICES}; 0: no look)",
    )
    p.add_argument(
        "--look-only", action="store_true", help="only the timed look: its figures replace those in the file"
    )
    args = p.parse_args(argv)
    if args.devices < 100 or args.seeds < 1:
        print("--devices must be at least 100 (a first stage of 5%) and --seeds at least 1", file=sys.stderr)
        return 2
    if not (args.look_devices >= 400 or (args.look_devices == 0 and not args.look_only)):
        print(
            "--look-devices must be 0 or at least 400 (a first stage of 20 devices to judge), "
            "and not 0 with --look-only",
            file=sys.stderr,
        )
        return 2
    if args.look_only:
        figures = json.loads(OUT.read_text()) if OUT.exists() else {}
        figures["look"] = look_on_the_store(args.look_devices)
        _write(figures)
        return 0
    print(
        f"{args.devices} thermostats, stages {', '.join(f'{s:.0%}' for s in STAGES)}, "
        f"soak {SOAK_S / HOUR:g} h, "
        f"{args.seeds} seeds; the bad release's thermostat: {BAD_PATCH[1]!r}",
        flush=True,
    )
    rooms = simulate_rooms(args.devices, args.jobs)
    how = "kept from an earlier run of this code" if rooms.cached else "simulated now"
    print(f"rooms: {args.devices} x ({GOOD_H} + {BAD_H}) h of 10-s steps, {how} ({rooms.simulated_s:.0f} s)")
    problems = check_sums(rooms, args.devices)
    if problems:
        print(
            "the rooms' sums disagree with gateway/metrics.compute:", *problems, sep="\n  ", file=sys.stderr
        )
        return 1
    effect = measured_effect(rooms)
    print(
        f"the bad release's mean deviation from the setpoint: {effect:+.1%} (all rooms, the rollouts' hours)"
    )

    _ROOMS, _DEVICES = rooms, args.devices
    jobs = [
        (seed, release, variant)
        for seed in range(args.seeds)
        for release in ("good", "bad")
        for variant in VARIANTS
    ]
    t0 = time.monotonic()
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        outcomes = pool.map(_one, jobs, chunksize=2)
    judged_s = time.monotonic() - t0
    print(f"{len(jobs)} rollouts judged in {judged_s:.0f} s")

    summary = {f"{rel}/{var}": summarize(outcomes, rel, var) for rel in ("good", "bad") for var in VARIANTS}
    bad, good = summary["bad/judge"], summary["good/judge"]
    plain_bad, plain_good = summary["bad/plain"], summary["good/plain"]
    fail_bad = summary["bad/failures"]
    print(f"\n{'':34}{'judge':>10}{'plain':>10}{'failures':>10}")
    for label, key in (
        ("bad halted by the end of stage 1", "share_halted_in_stage_1"),
        ("bad halted at all", "share_halted"),
        ("good halted (false halts)", "share_halted"),
        ("bad: device-hours exposed", "exposure_device_h_mean"),
    ):
        rel = "good" if label.startswith("good") else "bad"
        cells = [summary[f"{rel}/{v}"][key] for v in VARIANTS]
        shown = [f"{c:.1%}" if key.startswith("share") else f"{c:.0f}" for c in cells]
        print(f"{label:34}" + "".join(f"{c:>10}" for c in shown))
    ratio = bad["exposure_device_h_mean"] / fail_bad["exposure_device_h_mean"]
    print(
        f"\nexposure to a bad release: {bad['exposure_device_h_mean']:.0f} device-hours, "
        f"{ratio:.3f} x a rollout judged by failures alone ({fail_bad['exposure_device_h_mean']:.0f}); "
        f"plain judge {plain_bad['exposure_device_h_mean']:.0f}"
    )
    goal_bad = bad["share_halted_in_stage_1"] >= 0.95
    goal_good = good["share_halted"] <= 0.025
    print(
        f"goals: bad halted in stage 1 >= 95%: {'met' if goal_bad else 'NOT met'} "
        f"({bad['share_halted_in_stage_1']:.1%}); good halted <= 2.5%: {'met' if goal_good else 'NOT met'} "
        f"({good['share_halted']:.1%}; plain judge {plain_good['share_halted']:.1%})"
    )
    look_figures = look_on_the_store(args.look_devices) if args.look_devices else None
    _write(
        {
            "devices": args.devices,
            "seeds": args.seeds,
            "stages": list(STAGES),
            "soak_h": SOAK_S / HOUR,
            "bad_patch": list(BAD_PATCH),
            "bad_effect": effect,
            "rooms_simulated_s": rooms.simulated_s,
            "rooms_cached": rooms.cached,
            "judged_s": judged_s,
            "goals": {"bad_halted_in_stage_1": goal_bad, "good_halted": goal_good},
            "summary": summary,
            "runs": [asdict(o) for o in outcomes],
            "look": look_figures,
        }
    )
    return 0


def _write(figures: dict[str, Any]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=1))
    print(f"figures: {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
