"""A shirt's twin: the microclimate under it fitted to its record (docs/twin.md 3).

The model:

    dH/dt = u(t) - (f + v x(t)) (H - amb)

H the skin's humidity (%RH, the sensor's), x the vent's opening (0..1, as
the device drove it), f the air exchange through the closed fabric and v
what the open vent adds (1/s), amb the humidity of the air around the
wearer, u the sweat coming in: the wearer's exertion, which nobody
measures, estimated with the rest as a session that repeats (a profile
over the phase of a period, itself found by the fit), never negative.

For a period and an ambient humidity the balance of each minute is linear
in f, v and the profile (scipy.optimize.lsq_linear with bounds); the period
and the ambient humidity are searched (scipy.optimize.minimize_scalar).
The quality is the simulation's: fitted on the first three quarters of the
record, the model is run over the last quarter from the measured humidity
at each quarter hour, with the vent as recorded, and compared with the
sensor (RMSE, R^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import lsq_linear, minimize_scalar

from .history import History

Array = NDArray[np.float64]

BLOCK_S = 60.0
BINS = 48  # the exertion profile's resolution over a period, while the period is searched
FINE_BINS = 144  # ... and once it is found, at most: a bin no shorter than a block
PERIOD_S = (900.0, 7200.0)  # the sessions' periods searched
HORIZON_S = 900.0
HOLDOUT = 0.25
THRESHOLD = 63.0  # %RH: the vent's humid_minutes metric's

MIN_HOURS = 2.0
MIN_PERIODS = 3.0
MIN_COVERAGE = 0.8
MAX_RMSE = 3.0  # %RH
MIN_R2 = 0.5
SMALL_RMSE = 1.0


@dataclass
class Series:
    t: Array
    humidity: Array
    x: Array  # the vent's opening 0..1 after the sample at t
    venting: Array  # 1 while the vent feature says it vents (nan: not said)
    opening: Array  # the vent feature's report (nan: not said)
    skin_temperature: float
    battery: float
    segments: list[tuple[int, int]] = field(default_factory=list)

    @property
    def span_s(self) -> float:
        return float(self.t[-1] - self.t[0]) if len(self.t) > 1 else 0.0

    @property
    def covered_s(self) -> float:
        return float(sum(self.t[j] - self.t[i] for i, j in self.segments))


def series(h: History) -> Series:
    from .room import _number, _segments

    t, hum, x, venting, opening = [], [], [], [], []
    skin: list[float] = []
    bat: list[float] = []
    vent = 0.0
    for ts, msg in h.rows:
        sensors = msg.get("sensors") or {}
        value = sensors.get("humidity")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        act = msg.get("actuators") or {}
        v = act.get("vent")
        if isinstance(v, int | float) and not isinstance(v, bool):
            vent = min(max(float(v), 0.0), 100.0) / 100
        report = (msg.get("features") or {}).get("vent") or {}
        t.append(ts)
        hum.append(float(value))
        x.append(vent)
        venting.append(float(report["venting"]) if isinstance(report.get("venting"), bool) else math.nan)
        opening.append(_number(report.get("opening")))
        for key, out in (("skin_temperature", skin), ("battery", bat)):
            s_value = sensors.get(key)
            if isinstance(s_value, int | float) and not isinstance(s_value, bool):
                out.append(float(s_value))
    s = Series(
        np.array(t, dtype=float),
        np.array(hum, dtype=float),
        np.array(x, dtype=float),
        np.array(venting, dtype=float),
        np.array(opening, dtype=float),
        float(np.median(skin)) if skin else 33.0,
        float(np.median(bat)) if bat else 80.0,
    )
    s.segments = _segments(s.t, h.telemetry_s)
    return s


# ---- the device's settings, where it did not reply them ------------------------------


def infer_settings(s: Series) -> dict[str, Any]:
    """The vent's settings as its telemetry shows them: where it started
    and stopped venting, the least opening, and (for the factory's linear
    curve) where it opened fully."""
    out: dict[str, Any] = {}
    on_lo, on_hi, off_lo, off_hi = [], [], [], []
    for i in range(1, len(s.t)):
        a, b = s.venting[i - 1], s.venting[i]
        if not (math.isfinite(a) and math.isfinite(b)) or a == b or s.t[i] - s.t[i - 1] > 60:
            continue
        if b > a:  # started: H[i] >= open_at > H[i-1]
            on_lo.append(s.humidity[i - 1])
            on_hi.append(s.humidity[i])
        else:  # stopped: H[i] < close_at <= H[i-1]
            off_lo.append(s.humidity[i])
            off_hi.append(s.humidity[i - 1])
    if on_lo:
        out["open_at"] = round(float(np.median((np.array(on_lo) + np.array(on_hi)) / 2)), 1)
    if off_lo:
        out["close_at"] = round(float(np.median((np.array(off_lo) + np.array(off_hi)) / 2)), 1)
    open_rows = (s.venting == 1) & np.isfinite(s.opening) & (s.opening > 0)
    if open_rows.any():
        least = float(np.min(s.opening[open_rows]))
        out["min_opening"] = round(least)
        close = out.get("close_at")
        # where the flap just moved it stands where the curve puts it (held,
        # it may be a step off: it turns back only by more than one)
        moved = np.r_[False, s.opening[1:] != s.opening[:-1]]
        mid = open_rows & moved & (s.opening > least + 5) & (s.opening < 100)
        if close is not None and mid.any():
            full = close + (s.humidity[mid] - close) * (100 - least) / (s.opening[mid] - least)
            out["full_at"] = round(float(np.median(full)), 1)
    out["switches"] = len(on_lo) + len(off_lo)
    return out


# ---- the fit ------------------------------------------------------------------------


@dataclass
class _Design:
    block: NDArray[np.int64]
    n_blocks: int
    d_hum: Array
    dt: Array
    mid: Array
    h_int: Array  # per row interval: integral of H
    xh_int: Array  # integral of x H
    x_int: Array  # integral of x


def _design(s: Series, rows: NDArray[np.bool_]) -> _Design:
    n = len(s.t)
    dt = np.diff(s.t)
    block = np.full(n - 1, -1, dtype=np.int64)
    nb = 0
    for a, b in s.segments:
        seg_t = s.t[a : b + 1]
        ids = np.floor((seg_t[:-1] - seg_t[0]) / BLOCK_S).astype(np.int64)
        ok = rows[a:b] & rows[a + 1 : b + 1]
        use = ok & ~np.isin(ids, np.unique(ids[~ok]))
        uniq, inv = np.unique(ids[use], return_inverse=True)
        block[a:b][use] = inv + nb
        nb += len(uniq)
    valid = block >= 0
    d_hum = np.zeros(nb)
    np.add.at(d_hum, block[valid], np.diff(s.humidity)[valid])
    h_mid = (s.humidity[:-1] + s.humidity[1:]) / 2
    x = s.x[:-1]
    return _Design(block, nb, d_hum, dt, s.t[:-1] + dt / 2, h_mid * dt, x * h_mid * dt, x * dt)


def _phase_bins(mid: Array, period: float, bins: int) -> NDArray[np.int64]:
    return np.minimum((np.mod(mid, period) / period * bins).astype(np.int64), bins - 1)


def _solve(d: _Design, period: float, amb: float, bins: int = BINS) -> tuple[Array, float, float]:
    """(x, sse, r2): x = [f, v, profile (bins)] for one period and ambient humidity."""
    valid = d.block >= 0
    bv = d.block[valid]
    X = np.zeros((d.n_blocks, 2 + bins))
    np.add.at(X[:, 0], bv, -(d.h_int - amb * d.dt)[valid])
    np.add.at(X[:, 1], bv, -(d.xh_int - amb * d.x_int)[valid])
    np.add.at(X, (bv, 2 + _phase_bins(d.mid, period, bins)[valid]), d.dt[valid])
    scale = np.sqrt(np.mean(X**2, axis=0)) + 1e-300
    res = lsq_linear(X / scale, d.d_hum, bounds=(0.0, np.inf), method="bvls")
    x = res.x / scale
    r = X @ x - d.d_hum
    sse = float(r @ r)
    sst = float(((d.d_hum - d.d_hum.mean()) ** 2).sum()) or 1e-12
    return x, sse, 1 - sse / sst


@dataclass
class Fit:
    params: dict[str, Any]
    sse: float
    r2_blocks: float


def fit(s: Series, rows: NDArray[np.bool_]) -> Fit:
    """The microclimate fitted to the rows of s marked in rows."""
    d = _design(s, rows)
    amb0 = float(np.percentile(s.humidity[rows], 5))

    def by_period(log_p: float, amb: float) -> float:
        return _solve(d, math.exp(log_p), amb)[1]

    span = float(s.t[rows][-1] - s.t[rows][0])
    hi = math.log(min(PERIOD_S[1], span / 2))
    grid = np.linspace(math.log(PERIOD_S[0]), hi, 160)
    values = [by_period(v, amb0) for v in grid]
    i = int(np.argmin(values))
    step = grid[1] - grid[0]
    log_p = _refine(lambda v: by_period(v, amb0), grid[i] - step, grid[i] + step, float(grid[i]), values[i])
    log_p = _refine(
        lambda v: by_period(v, amb0), log_p - step / 8, log_p + step / 8, log_p, by_period(log_p, amb0)
    )
    amb_grid = np.linspace(0.0, 90.0, 46)
    fine = fine_bins(math.exp(log_p))
    amb_values = [_solve(d, math.exp(log_p), a, fine)[1] for a in amb_grid]
    j = int(np.argmin(amb_values))
    amb = _refine(
        lambda a: _solve(d, math.exp(log_p), a, fine)[1],
        max(amb_grid[j] - 2.0, 0.0),
        min(amb_grid[j] + 2.0, 95.0),
        float(amb_grid[j]),
        amb_values[j],
    )
    period = math.exp(log_p)
    x, sse, r2 = _solve(d, period, amb, fine_bins(period))
    params = {
        "kind": "skin",
        "fabric": float(x[0]),
        "vent_flow": float(x[1]),
        "ambient": amb,
        "period_s": period,
        "sweat": x[2:].tolist(),  # %RH/s by phase bin
        "skin_temperature": s.skin_temperature,
        "battery": s.battery,
    }
    return Fit(params, sse, r2)


def fine_bins(period: float) -> int:
    """The profile's bins once the period is found: as fine as FINE_BINS,
    but none shorter than a block, whose balance alone cannot tell apart
    the sweat of two bins inside it (the fit would trade one against the
    other, and the twin's skin would swing with them)."""
    return max(1, min(FINE_BINS, int(period // BLOCK_S)))


def _refine(f: Any, lo: float, hi: float, at: float, value: float) -> float:
    best = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(best.x) if best.fun <= value else at


def simulate(s: Series, p: dict[str, Any], start: int, end: int) -> Array:
    """The model's humidity at rows start..end from the measured one at start."""
    from .plant import FittedSkin

    plant = FittedSkin(p, float(s.humidity[start]))
    plant.advance(float(s.t[start]))
    out = [plant.humidity]
    for i in range(start, end):
        plant.vent = float(s.x[i]) * 100
        plant.advance(float(s.t[i + 1]))
        out.append(plant.humidity)
    return np.array(out)


def quality(s: Series) -> dict[str, Any]:
    split = s.t[0] + (1 - HOLDOUT) * s.span_s
    f = fit(s, s.t <= split)
    predicted, measured = [], []
    for a, b in s.segments:
        i = max(a, int(np.searchsorted(s.t, split)))
        while i < b:
            end = min(int(np.searchsorted(s.t, s.t[i] + HORIZON_S)), b)
            if end <= i:
                break
            predicted.append(simulate(s, f.params, i, end)[1:])
            measured.append(s.humidity[i + 1 : end + 1])
            i = end
    if not predicted:
        return {"rmse_hum": None, "r2": None, "tail_hours": 0.0, "horizon_s": HORIZON_S}
    p, m = np.concatenate(predicted), np.concatenate(measured)
    rmse = float(np.sqrt(np.mean((p - m) ** 2)))
    sst = float(np.mean((m - m.mean()) ** 2))
    return {
        "rmse_hum": round(rmse, 4),
        "r2": round(1 - rmse**2 / sst, 4) if sst > 0 else None,
        "tail_hours": round(float(s.t[-1] - split) / 3600, 2),
        "horizon_s": HORIZON_S,
        "blocks_r2": round(f.r2_blocks, 4),
    }
