"""A thermostat's twin: its room fitted to its record (docs/twin.md 3).

The model, per unit of the room's heat capacity C (which temperatures
alone cannot tell):

    dT/dt = g q(t) - a (T - T_out(t)) + occ(t)
    dq/dt = (relay(t) - q) / lag

T the room's temperature (the sensor's), relay the heater's relay as the
device drove it, q the heat the radiator gives (0..1 of its full output,
lagging behind the relay), g = P/C the heater's full warming, a = UA/C
the loss to the outdoor temperature T_out, occ the occupants' gains by
local hour of the day (work days and weekends apart, never negative).
T_out is the device's own outdoor sensor where it has one; otherwise it
is estimated with the rest: a level per day (blended from one noon to the
next) and a daily swing.

Fitted by linear least squares (scipy.optimize.lsq_linear, with bounds and
a light ridge that settles what the data cannot tell apart: the constant
and daily parts of the weather and the occupants' gains) on the balance of
each 5 minutes of the record, integrated exactly from the telemetry rows,
for each lag of a search (scipy.optimize.minimize_scalar). Its quality is
the simulation's, not one step's: fitted on the first three quarters of the
record, the model is run over the last quarter from the measured
temperature at each whole hour with the relay as recorded, the weather of
the days it did not see carried on from the last it saw (a forecast), and
compared with what the sensor read (RMSE, R^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import lsq_linear, minimize_scalar

from firmware.features.thermostat import scheduled  # (the thermostat's own rule)

from .history import History
from .plant import DAY_S, HOUR_S, OMEGA, local_hour, weekend

Array = NDArray[np.float64]

BLOCK_S = 300.0  # the balance is fitted over blocks of this long
HORIZON_S = 3600.0  # the quality's simulation runs this long from each measured start
HOLDOUT = 0.25  # the share of the record held out for the quality
LAG_S = (20.0, 900.0)  # the heater lags searched
# Stage 2's priors (docs/twin.md 3): where the device has no outdoor sensor,
# a heating season's weather (its mean, how much one day differs from the
# next, the daily swing's amplitude); occupants' gains, a share of the
# heater's full output at most a few times this; and how well the model can
# hold an hour's balance with occupants coming and going at other times.
OUTDOOR_MEAN_C = 5.0
OUTDOOR_SD_C = 6.0
DAY_SD_C = 3.0
SWING_SD_C = 4.0
OCC_SD = 0.15
HOUR_SIGMA_C = 0.05
LOSS_RANGE = (3.0, 300.0)  # the heater holds the room this many K above outdoors, at most
RIDGE_OCC = 0.3  # stage 1's ridge weights (per unit of a block's balance, K)
RIDGE_DAY = 0.3
RIDGE_SWING = 0.1
OUTDOOR_SENSORS = ("outdoor_temperature", "outside_temperature", "outdoor", "outside")

# what a record needs before a twin is fitted on it, and what a fit needs to be used
MIN_HOURS = 24.0
MIN_COVERAGE = 0.8
MIN_SWITCHES = 6
MAX_RMSE_C = 0.5
MIN_R2 = 0.5
SMALL_RMSE_C = 0.2  # a miss this small passes whatever R^2 says

# the comfort band, around the setpoint the owner set (the schedule's, or
# the setting's): from BELOW_K under it to ABOVE_K over it
BELOW_K = 1.0
ABOVE_K = 1.5


@dataclass
class Series:
    """A thermostat's telemetry as arrays, in the device's time."""

    t: Array
    temp: Array
    relay: Array  # 0/1: as driven after the sample at t
    setpoint: Array  # the thermostat's report (nan where it did not say)
    offset: Array
    mode: list[str | None]
    outdoor: Array | None  # the device's own outdoor sensor, if it has one
    humidity: float
    segments: list[tuple[int, int]] = field(default_factory=list)  # [first, last] row of each unbroken run

    @property
    def span_s(self) -> float:
        return float(self.t[-1] - self.t[0]) if len(self.t) > 1 else 0.0

    @property
    def covered_s(self) -> float:
        return float(sum(self.t[j] - self.t[i] for i, j in self.segments))


def series(h: History) -> Series:
    """The thermostat's arrays from its record; rows without a temperature are left out."""
    t, temp, relay, sp, off, mode, outdoor, hum = [], [], [], [], [], [], [], []
    on = False
    outdoor_key = None
    for ts, msg in h.rows:
        sensors = msg.get("sensors") or {}
        value = sensors.get("temperature")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        if outdoor_key is None:
            outdoor_key = next((k for k in OUTDOOR_SENSORS if k in sensors), "")
        act = msg.get("actuators") or {}
        if isinstance(act.get("relay"), bool):
            on = act["relay"]
        th = (msg.get("features") or {}).get("thermostat") or {}
        t.append(ts)
        temp.append(float(value))
        relay.append(1.0 if on else 0.0)
        sp.append(_number(th.get("setpoint")))
        off.append(_number(th.get("offset"), 0.0))
        mode.append(th.get("mode") if isinstance(th.get("mode"), str) else None)
        if outdoor_key:
            outdoor.append(_number(sensors.get(outdoor_key)))
        h_value = sensors.get("humidity")
        if isinstance(h_value, int | float) and not isinstance(h_value, bool):
            hum.append(float(h_value))
    s = Series(
        np.array(t, dtype=float),
        np.array(temp, dtype=float),
        np.array(relay, dtype=float),
        np.array(sp, dtype=float),
        np.array(off, dtype=float),
        mode,
        np.array(outdoor, dtype=float) if outdoor_key and np.isfinite(outdoor).mean() > 0.9 else None,
        float(np.median(hum)) if hum else 45.0,
    )
    if s.outdoor is not None and not np.isfinite(s.outdoor).all():
        good = np.isfinite(s.outdoor)
        s.outdoor = np.interp(s.t, s.t[good], s.outdoor[good])
    s.segments = _segments(s.t, h.telemetry_s)
    return s


def _number(v: Any, default: float = math.nan) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


def _segments(t: Array, period: float) -> list[tuple[int, int]]:
    """Runs of rows without a gap of more than 4 telemetry periods (at least a minute)."""
    if len(t) < 2:
        return []
    limit = max(4 * (period or 10.0), 60.0)
    breaks = np.nonzero(np.diff(t) > limit)[0]
    starts = [0, *(breaks + 1).tolist()]
    ends = [*breaks.tolist(), len(t) - 1]
    return [(a, b) for a, b in zip(starts, ends, strict=True) if b > a]


# ---- the device's settings, where it did not reply them -------------------------------


def parse_schedule(entries: Any) -> list[tuple[int, float]]:
    out = []
    for e in entries if isinstance(entries, list) else []:
        try:
            hh, mm = str(e[0]).split(":")
            out.append((int(hh) * 60 + int(mm), float(e[1])))
        except (ValueError, TypeError, IndexError):
            continue
    return sorted(out)


def infer_settings(s: Series, utc_offset_min: int) -> dict[str, Any]:
    """The thermostat's settings as its telemetry shows them: the setpoint
    and daily schedule (from the setpoint it reported, less any other
    feature's offset), the hysteresis (from the temperatures at which it
    switched the heater) and the mode it reported first. Each with how well
    it explains the record."""
    base = s.setpoint - s.offset
    good = np.isfinite(base)
    out: dict[str, Any] = {}
    if not good.any():
        return out
    minutes = (((s.t + 60 * utc_offset_min) % DAY_S) // 60).astype(int)
    values = np.round(base[good], 3)
    idx = np.nonzero(good)[0]
    changes: dict[tuple[int, float], int] = {}
    for i in range(1, len(idx)):
        if values[i] != values[i - 1] and idx[i] - idx[i - 1] == 1:
            key = (int(minutes[idx[i]]), float(values[i]))
            changes[key] = changes.get(key, 0) + 1
    days = max(s.span_s / DAY_S, 1.0)
    entries = sorted(k for k, n in changes.items() if n >= 2 or days < 2)
    if len(entries) > 24:
        entries = sorted(sorted(changes, key=lambda k: -changes[k])[:24])
    # the most common setpoint stands for the setting where no entry applies
    vals, counts = np.unique(values, return_counts=True)
    setpoint = float(vals[np.argmax(counts)])
    explained = float(
        np.mean(
            [scheduled(entries, int(m), setpoint) == v for m, v in zip(minutes[idx], values, strict=True)]
        )
    )
    out["setpoint"] = setpoint
    out["schedule"] = [[f"{m // 60:02d}:{m % 60:02d}", v] for m, v in entries]
    out["schedule_explains"] = round(explained, 4)
    # hysteresis: the heater comes on at a reading below setpoint - h, goes
    # off at one above setpoint + h; the reading before did not switch it
    sp = s.setpoint
    lows, highs = [], []
    for i in range(1, len(s.t)):
        if (
            s.relay[i] != s.relay[i - 1]
            and np.isfinite(sp[i])
            and sp[i] == sp[i - 1]
            and s.t[i] - s.t[i - 1] < 60
        ):
            if s.relay[i] > 0:  # on: T[i] < sp - h <= T[i-1]
                lows.append(sp[i] - s.temp[i - 1])
                highs.append(sp[i] - s.temp[i])
            else:  # off: T[i] > sp + h >= T[i-1]
                lows.append(s.temp[i - 1] - sp[i])
                highs.append(s.temp[i] - sp[i])
    if lows:
        mids = (np.array(lows) + np.array(highs)) / 2
        hyst = float(np.median(mids))
        out["hysteresis"] = round(min(max(hyst, 0.1), 3.0), 2)
        out["switches"] = len(lows)
    first_mode = next((m for m in s.mode if m), None)
    if first_mode in ("heat", "off"):
        out["mode"] = first_mode
    return out


# ---- the fit ------------------------------------------------------------------------


@dataclass
class _Design:
    """What the fit reads of a series, per 5-minute block."""

    block: NDArray[np.int64]  # the block of each row interval (-1: none)
    n_blocks: int
    d_temp: Array  # per block: the change of temperature
    dt: Array  # per row interval
    relay: Array  # per row interval
    fixed: Array  # per block x column: everything but the heater's column
    columns: list[str]
    first_day: int
    days: int


def _design(s: Series, rows: NDArray[np.bool_], utc_offset_min: int, block_s: float = BLOCK_S) -> _Design:
    """The linear system of the balance over the blocks whose rows are all in `rows`."""
    n = len(s.t)
    dt = np.diff(s.t)
    valid = np.zeros(n - 1, dtype=bool)
    block = np.full(n - 1, -1, dtype=np.int64)
    nb = 0
    for a, b in s.segments:
        seg_t = s.t[a : b + 1]
        ids = np.floor((seg_t[:-1] - seg_t[0]) / block_s).astype(np.int64)
        ok = rows[a:b] & rows[a + 1 : b + 1]
        # a block is used whole or not at all
        bad = np.unique(ids[~ok])
        use = ok & ~np.isin(ids, bad)
        uniq, inv = np.unique(ids[use], return_inverse=True)
        block[a:b][use] = inv + nb
        valid[a:b] = use
        nb += len(uniq)
    mid = s.t[:-1] + dt / 2
    k = np.floor((mid - DAY_S / 2) / DAY_S).astype(np.int64)
    w = (1 - np.cos(np.pi * ((mid - DAY_S / 2) / DAY_S - k))) / 2
    first_day = int(k[valid].min()) if valid.any() else int(k.min())
    last_day = int(k[valid].max()) + 1 if valid.any() else int(k.max()) + 1
    days = last_day - first_day + 1
    hours = np.array([local_hour(x, utc_offset_min) for x in mid])
    wkend = np.array([weekend(x, utc_offset_min) for x in mid])
    occ_col = hours + 24 * wkend
    t_int = (s.temp[:-1] + s.temp[1:]) / 2 * dt
    cols: list[str] = ["loss"]
    if s.outdoor is not None:
        # a measured outdoor temperature: the loss's column is its difference
        out_int = (s.outdoor[:-1] + s.outdoor[1:]) / 2 * dt
        base = [out_int - t_int]
        cols = ["loss"]
    else:
        base = [-t_int]
        cols = ["loss", *(f"day{d}" for d in range(days)), "cos", "sin"]
    n_cols = len(cols) + 48
    fixed = np.zeros((nb, n_cols))
    bv = block[valid]
    np.add.at(fixed[:, 0], bv, base[0][valid])
    if s.outdoor is None:
        kk = (k - first_day)[valid]
        np.add.at(fixed, (bv, 1 + kk), ((1 - w) * dt)[valid])
        np.add.at(fixed, (bv, 1 + np.minimum(kk + 1, days - 1)), (w * dt)[valid])
        np.add.at(fixed[:, 1 + days], bv, (np.cos(OMEGA * mid) * dt)[valid])
        np.add.at(fixed[:, 2 + days], bv, (np.sin(OMEGA * mid) * dt)[valid])
    np.add.at(fixed, (bv, len(cols) + occ_col[valid]), dt[valid])
    d_temp = np.zeros(nb)
    np.add.at(d_temp, bv, np.diff(s.temp)[valid])
    return _Design(block, nb, d_temp, dt, s.relay[:-1], fixed, cols, first_day, days)


def heat(relay: Array, dt: Array, lag_s: float, q0: float = 0.0) -> tuple[Array, Array]:
    """(q at each row, the integral of q over each row interval) of the
    heater's lag: the relay holds its value from one row to the next."""
    decay = np.exp(-dt / lag_s)
    q = np.empty(len(relay) + 1)
    q[0] = q0
    qi = q0
    r_list = relay.tolist()
    d_list = decay.tolist()
    for i in range(len(r_list)):
        r = r_list[i]
        qi = r + (qi - r) * d_list[i]
        q[i + 1] = qi
    integral = relay * dt + (q[:-1] - relay) * lag_s * (1 - decay)
    return q, integral


@dataclass
class Fit:
    params: dict[str, Any]  # the plant's spec (plant.FittedRoom)
    sse: float
    blocks: int
    r2_blocks: float


def _solve(d: _Design, lag_s: float, measured_outdoor: bool) -> tuple[Array, float, float]:
    """(x, sse, r2 of the blocks) of the balance for one heater lag. x:
    [g, a, (day levels * a, cos * a, sin * a)?, occupancy (48)]."""
    _, q_int = heat(d.relay, d.dt, lag_s)
    valid = d.block >= 0
    q_col = np.zeros(d.n_blocks)
    np.add.at(q_col, d.block[valid], q_int[valid])
    X = np.column_stack([q_col, d.fixed])
    y = d.d_temp
    n = X.shape[1]
    n_occ = 48
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    lo[0], lo[1] = 0.0, 1e-8  # g, a
    lo[n - n_occ :] = 0.0
    # the ridge, in the units of a block's balance: occupants' gains
    # towards none, day levels towards their neighbours' (a day without
    # data carries on its neighbour's), a little on the daily swing
    ridge = []
    for j in range(n - n_occ, n):
        ridge.append(_unit(n, {j: RIDGE_OCC * BLOCK_S}))
    if not measured_outdoor:
        days = len(d.columns) - 3
        for i in range(days - 1):
            ridge.append(_unit(n, {2 + i: RIDGE_DAY * BLOCK_S, 3 + i: -RIDGE_DAY * BLOCK_S}))
        for j in (2 + days, 3 + days):
            ridge.append(_unit(n, {j: RIDGE_SWING * BLOCK_S}))
    scale = np.sqrt(np.mean(X**2, axis=0)) + 1e-12
    A = np.vstack([X, np.array(ridge)]) / scale
    b = np.concatenate([y, np.zeros(len(ridge))])
    res = lsq_linear(A, b, bounds=(lo * scale, hi * scale), method="bvls")
    x = res.x / scale
    resid = X @ x - y
    sse = float(resid @ resid)
    sst = float(((y - y.mean()) ** 2).sum()) or 1e-12
    return x, sse, 1 - sse / sst


def _unit(n: int, entries: dict[int, float]) -> Array:
    row = np.zeros(n)
    for j, v in entries.items():
        row[j] = v
    return row


def _heater(s: Series, rows: NDArray[np.bool_], utc_offset_min: int) -> tuple[float, float, float]:
    """Stage 1: (g, lag, r2) from the balance of every 5 minutes, all else
    free: how the heater warms the room shows in each of its cycles."""
    d = _design(s, rows, utc_offset_min)
    measured = s.outdoor is not None

    def sse(log_lag: float) -> float:
        return _solve(d, math.exp(log_lag), measured)[1]

    grid = np.linspace(math.log(LAG_S[0]), math.log(LAG_S[1]), 9)
    values = [sse(v) for v in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(sse, bounds=(lo, hi), method="bounded", options={"xatol": 0.02})
    lag = math.exp(float(best.x)) if best.fun <= values[i] else math.exp(float(grid[i]))
    x, _, r2 = _solve(d, lag, measured)
    return float(x[0]), lag, r2


@dataclass
class _Conditions:
    """Stage 2's solution for one loss a."""

    objective: float
    levels: Array  # the outdoor day levels (C); empty for a measured outdoor temperature
    cos: float
    sin: float
    occupancy: Array  # 48: work days' hours, then weekends'


def _conditions(d: _Design, q_col: Array, s: Series, a: float, g: float, evidence: bool) -> _Conditions:
    """Stage 2 for one loss a: the weather and occupants that explain each
    hour's balance best, given the heater (g, its q) and their priors; its
    objective, the negative log evidence (a Laplace approximation) when
    asked, else the penalised misfit."""
    measured = s.outdoor is not None
    n_days = 0 if measured else d.days
    nb = d.n_blocks
    occ = d.fixed[:, -48:]
    sig = HOUR_SIGMA_C
    if measured:
        # the loss's column is (outdoor - room), its coefficient a known here
        y = d.d_temp - g * q_col - a * d.fixed[:, 0]
        X = occ
        n = 48
        prior: list[Array] = []
        targets: list[float] = []
        first_occ = 0
    else:
        y = d.d_temp - g * q_col - a * d.fixed[:, 0]  # (the column is -integral of T)
        B = d.fixed[:, 1 : 1 + n_days]
        C = d.fixed[:, 1 + n_days : 3 + n_days]
        # levels, cos, sin, the mean level, occupancy
        X = np.hstack([a * B, a * C, np.zeros((nb, 1)), occ])
        n = X.shape[1]
        mean = n_days + 2
        first_occ = mean + 1
        prior, targets = [], []
        for k in range(n_days):
            prior.append(_unit(n, {k: sig / DAY_SD_C, mean: -sig / DAY_SD_C}))
            targets.append(0.0)
        prior.append(_unit(n, {mean: sig / OUTDOOR_SD_C}))
        targets.append(OUTDOOR_MEAN_C * sig / OUTDOOR_SD_C)
        for j in (n_days, n_days + 1):
            prior.append(_unit(n, {j: sig / SWING_SD_C}))
            targets.append(0.0)
    for j in range(first_occ, n):
        prior.append(_unit(n, {j: sig / (OCC_SD * g)}))
        targets.append(0.0)
    A = np.vstack([X, np.array(prior)])
    b = np.concatenate([y, targets])
    lo = np.full(n, -np.inf)
    lo[first_occ:] = 0.0
    scale = np.sqrt(np.mean(A**2, axis=0)) + 1e-300
    res = lsq_linear(A / scale, b, bounds=(lo * scale, np.full(n, np.inf)), method="bvls")
    x = res.x / scale
    r = A @ x - b
    objective = float(r @ r) / sig**2
    if evidence:
        objective += float(np.linalg.slogdet((A / sig).T @ (A / sig))[1])
    if measured:
        return _Conditions(objective, np.zeros(0), 0.0, 0.0, x)
    return _Conditions(objective, x[:n_days], float(x[n_days]), float(x[n_days + 1]), x[first_occ:])


def fit(s: Series, rows: NDArray[np.bool_], utc_offset_min: int) -> Fit:
    """The room fitted to the rows of s marked in rows: the heater from
    every 5 minutes (stage 1), then the loss, the weather and the occupants
    from every hour (stage 2), the loss the one of the greatest evidence."""
    g, lag, r2 = _heater(s, rows, utc_offset_min)
    d = _design(s, rows, utc_offset_min, HOUR_S)
    _, q_int = heat(d.relay, d.dt, lag)
    valid = d.block >= 0
    q_col = np.zeros(d.n_blocks)
    np.add.at(q_col, d.block[valid], q_int[valid])
    g_safe = max(g, 1e-9)

    def objective(log_a: float) -> float:
        return _conditions(d, q_col, s, math.exp(log_a), g_safe, True).objective

    grid = np.linspace(math.log(g_safe / LOSS_RANGE[1]), math.log(g_safe / LOSS_RANGE[0]), 25)
    values = [objective(v) for v in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 0.01})
    log_a = float(best.x) if best.fun <= values[i] else float(grid[i])
    a = math.exp(log_a)
    c = _conditions(d, q_col, s, a, g_safe, False)
    params: dict[str, Any] = {
        "kind": "room",
        "a": a,
        "g": g,
        "lag_s": lag,
        "humidity": s.humidity,
        "occupancy": {"weekday": c.occupancy[:24].tolist(), "weekend": c.occupancy[24:].tolist()},
    }
    if s.outdoor is not None:
        step = 600.0
        grid_t = np.arange(s.t[0], s.t[-1] + step, step)
        params["outdoor"] = {
            "kind": "measured",
            "t0": float(s.t[0]),
            "step": step,
            "values": np.round(np.interp(grid_t, s.t, s.outdoor), 3).tolist(),
        }
    else:
        params["outdoor"] = {
            "kind": "fitted",
            "first_day": d.first_day,
            "levels": c.levels.tolist(),
            "cos": c.cos,
            "sin": c.sin,
        }
    return Fit(params, c.objective, d.n_blocks, r2)


def simulate(
    s: Series, params: dict[str, Any], start: int, end: int, q0: float, utc_offset_min: int
) -> Array:
    """The model's temperature at rows start..end from the measured one at
    start, with the relay as recorded (exact heater lag, Euler steps)."""
    from .plant import Profile, Weather

    weather = Weather(params["outdoor"])
    occ = Profile(params["occupancy"], utc_offset_min)
    a, g, lag = params["a"], params["g"], params["lag_s"]
    temp = float(s.temp[start])
    q = q0
    out = [temp]
    for i in range(start, end):
        dt = float(s.t[i + 1] - s.t[i])
        r = float(s.relay[i])
        mid = float(s.t[i]) + dt / 2
        decay = math.exp(-dt / lag)
        q_mean = r + (q - r) * lag * (1 - decay) / dt
        q = r + (q - r) * decay
        out_t = float(s.outdoor[i] + s.outdoor[i + 1]) / 2 if s.outdoor is not None else weather.at(mid)
        temp += (g * q_mean + occ.at(mid) - a * (temp - out_t)) * dt
        out.append(temp)
    return np.array(out)


def quality(s: Series, utc_offset_min: int) -> dict[str, Any]:
    """The fit's quality on a held-out tail: fitted on the first 75% of the
    record, simulated over the rest from each whole hour's measured
    temperature for an hour with the relay as recorded."""
    split = s.t[0] + (1 - HOLDOUT) * s.span_s
    train = s.t <= split
    f = fit(s, train, utc_offset_min)
    q, _ = heat(s.relay[:-1], np.diff(s.t), f.params["lag_s"], float(s.relay[0]))
    predicted, measured = [], []
    for a, b in s.segments:
        i = max(a, int(np.searchsorted(s.t, split)))
        while i < b:
            end = min(int(np.searchsorted(s.t, s.t[i] + HORIZON_S)), b)
            if end <= i:
                break
            sim = simulate(s, f.params, i, end, float(q[i]), utc_offset_min)
            predicted.append(sim[1:])
            measured.append(s.temp[i + 1 : end + 1])
            i = end
    if not predicted:
        return {"rmse_c": None, "r2": None, "tail_hours": 0.0, "horizon_s": HORIZON_S}
    p, m = np.concatenate(predicted), np.concatenate(measured)
    rmse = float(np.sqrt(np.mean((p - m) ** 2)))
    sst = float(np.mean((m - m.mean()) ** 2))
    return {
        "rmse_c": round(rmse, 4),
        "r2": round(1 - rmse**2 / sst, 4) if sst > 0 else None,
        "tail_hours": round(float(s.t[-1] - split) / HOUR_S, 2),
        "horizon_s": HORIZON_S,
        "blocks_r2": round(f.r2_blocks, 4),
    }
