"""One twin preview, end to end (docs/twin.md): the device's record, its
twin fitted to it, and the same conditions run through that twin twice,
with the feature set the device runs and with a candidate release's, each
in the sandbox; what both did, side by side.

gather() reads what the preview needs from the gateway (its database, the
release store): the record, the device's settings, the prices sent, the
two feature sets' verified files. compute() does the rest without the
database: the fit, the sandboxed runs, the metrics. The answer is the JSON
docs/twin.md 2 describes (without the fields the cache adds: state's
times, the release's summary).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from firmware.features.thermostat import scheduled  # (the thermostat's own rule)

from ..provision import board_for
from ..releases import ReleaseStore, StoredRelease
from ..store import Store
from ..streams import twin_withheld
from . import history as hist
from . import room, sandbox, skin
from .code import CodeError, factory_features, release_features
from .plant import DAY_S, HOUR_S, OMEGA, local_hour

STEP_S = 10.0  # the twin samples as the simulated devices do
CHECK_MAX = 0.25  # the twin with the current features must redo the record's heater time within this
MODELS = ("thermostat", "shirt")


class Insufficient(Exception):
    """The record is too short or too poor for a twin: the reasons."""

    def __init__(self, reasons: list[str], details: dict[str, Any] | None = None) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons
        self.details = details or {}


class Failed(Exception):
    """The preview could not be computed: the message says why; `code` a word for it."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class FeatureSet:
    ref: str  # MODEL@COUNTER, or "factory"
    id: str | None  # the release id
    versions: dict[str, str | None]
    files: dict[str, bytes]


@dataclass
class Inputs:
    history: hist.History
    board: dict[str, Any]
    current: FeatureSet
    candidate: FeatureSet
    heater_w: float | None


def _set_of(release: StoredRelease, files: dict[str, bytes]) -> FeatureSet:
    versions = {n: f.get("version") for n, f in sorted(release.body["features"].items())}
    return FeatureSet(release.ref, release.id, versions, files)


def gather(
    store: Store, releases: ReleaseStore, dev: str, release: StoredRelease, heater_w: float | None
) -> Inputs:
    """What a preview of release on dev is computed from, all of it from the
    gateway. Raises Failed (an unknown device or model, code it may not run)."""
    h = hist.load(store, dev)
    if h is None:
        raise Failed(f"no device {dev!r}", "unknown_device")
    if h.model not in MODELS:
        raise Failed(
            f"the twin does not know a {h.model}'s plant yet (it knows {', '.join(MODELS)})", "unknown_model"
        )
    try:
        board = board_for(h.model, h.board)
    except Exception as exc:
        raise Failed(f"no board file for {h.board}: {exc}", "unknown_model") from exc
    caps = h.caps or sorted(board["capabilities"])
    api = int((store.device(dev) or _NoHello).hello.get("api") or 1)
    try:
        candidate = _set_of(release, release_features(releases, release, h.model, caps, api))
        running = (h.ota or {}).get("manifest")
        if isinstance(running, str) and running:
            now = releases.get(running)
            if now is None:
                raise Failed(
                    f"{dev} runs release {running[:12]}, which the gateway does not hold: "
                    "its code is unknown",
                    "unknown_code",
                )
            current = _set_of(now, release_features(releases, now, h.model, caps, api))
        else:
            versions = {
                n: (f.get("version") if isinstance(f, dict) else None) for n, f in sorted(h.features.items())
            }
            current = FeatureSet("factory", None, versions, factory_features(h.features))
    except CodeError as exc:
        raise Failed(str(exc), exc.code) from exc
    return Inputs(h, board, current, candidate, heater_w)


def plugged(inp: Inputs) -> list[str]:
    """The add-ons plugged into the device, as its hello says: its twin has
    them too (a feature that needs one runs there as it would on the device)."""
    return [c for c in inp.history.caps if c in (inp.board.get("addons") or {})]


class _NoHello:
    hello: dict[str, Any] = {}


# ---- computing ----------------------------------------------------------------------


def compute(
    inp: Inputs, limits: sandbox.Limits | None = None, fits: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The preview's answer (state ready or insufficient). Raises Failed.
    fits: where a device's fit and its quality are kept for the next
    preview of other releases on the same record (the benchmark's)."""
    limits = limits or sandbox.Limits()
    fits = {} if fits is None else fits
    if inp.history.model == "thermostat":
        return _thermostat(inp, limits, fits)
    if inp.history.model == "shirt":
        return _shirt(inp, limits, fits)
    raise Failed(f"the twin does not know a {inp.history.model}'s plant yet", "unknown_model")


def _insufficient(e: Insufficient, base: dict[str, Any]) -> dict[str, Any]:
    return base | {"state": "insufficient", "reason": e.reasons[0], "reasons": e.reasons} | e.details


_CHOSEN = {"local": "kept on the device", "off": "off"}


def _withheld(h: hist.History, base: dict[str, Any]) -> dict[str, Any] | None:
    """The answer when the owner keeps back a stream the twin is fitted
    from: insufficient, naming each and what sharing it would give (None:
    the twin has them). What was stored before is not fitted either: the
    owner's choice now is what the twin follows."""
    held = twin_withheld(h.model, h.withheld)
    if not held:
        return None
    reasons = [
        f"{w['stream']} is {_CHOSEN.get(w['choice'], w['choice'])} by the owner's choice: shared, it would "
        f"give the twin {w['gives']}, and this preview its numbers"
        for w in held
    ]
    return _insufficient(Insufficient(reasons, {"withheld": held}), base)


def _base(inp: Inputs) -> dict[str, Any]:
    h = inp.history
    return {
        "device": h.device,
        "model": h.model,
        "current": {"ref": inp.current.ref, "id": inp.current.id, "features": inp.current.versions},
        "candidate": {"ref": inp.candidate.ref, "id": inp.candidate.id, "features": inp.candidate.versions},
    }


def _record(h: hist.History, covered_s: float, rows: int) -> dict[str, Any]:
    span = h.end - h.start
    return {
        "start": h.start,
        "end": h.end,
        "hours": round(span / HOUR_S, 2),
        "rows": rows,
        "coverage": round(covered_s / span, 4) if span > 0 else 0.0,
    }


def _too_short(s: room.Series | skin.Series, what: str, min_hours: float, min_coverage: float) -> list[str]:
    """Why a record is too short or too broken for a twin (none: it is not)."""
    if len(s.t) < 2 or s.span_s < min_hours * HOUR_S:
        return [f"{s.span_s / HOUR_S:.1f} h of {what} telemetry; the twin needs at least {min_hours:g} h"]
    if s.covered_s < min_coverage * s.span_s:
        return [
            f"the telemetry covers {s.covered_s / s.span_s:.0%} of its {s.span_s / HOUR_S:.1f} h; "
            f"the twin needs {min_coverage:.0%}"
        ]
    return []


def _thermostat(inp: Inputs, limits: sandbox.Limits, fits: dict[str, Any]) -> dict[str, Any]:
    h = inp.history
    base = _base(inp)
    s = room.series(h)
    base["record"] = _record(h, s.covered_s, len(s.t))
    if (held := _withheld(h, base)) is not None:
        return held
    reasons = _too_short(s, "temperature", room.MIN_HOURS, room.MIN_COVERAGE)
    switches = int(np.sum(np.abs(np.diff(s.relay)) > 0)) if len(s.t) > 1 else 0
    if not reasons and switches < room.MIN_SWITCHES:
        reasons.append(
            f"the heater switched {switches} times in the record; the twin needs {room.MIN_SWITCHES} to tell "
            "how it warms the room"
        )
    if reasons:
        return _insufficient(Insufficient(reasons), base)

    settings, source = _thermostat_settings(h, s)
    if "room" not in fits:
        fits["room"] = (
            room.quality(s, h.utc_offset_min),
            room.fit(s, np.ones(len(s.t), dtype=bool), h.utc_offset_min),
        )
    quality, f = dict(fits["room"][0]), fits["room"][1]
    quality |= {
        "thresholds": {"rmse_c": room.MAX_RMSE_C, "r2": room.MIN_R2, "small_rmse_c": room.SMALL_RMSE_C}
    }
    poor = []
    if quality["rmse_c"] is None:
        poor.append("no held-out data to judge the fit on")
    else:
        if quality["rmse_c"] > room.MAX_RMSE_C:
            poor.append(
                f"the fit misses the held-out temperatures by {quality['rmse_c']:.2f} C "
                "(RMSE over an hour ahead); "
                f"a twin needs {room.MAX_RMSE_C:g} C at most"
            )
        elif (
            quality["r2"] is not None
            and quality["r2"] < room.MIN_R2
            and quality["rmse_c"] > room.SMALL_RMSE_C
        ):
            # (a room held steady varies too little for R^2 to judge: a
            # small miss in degrees is then enough)
            poor.append(
                f"the fit explains {quality['r2']:.0%} of the held-out temperatures, missing them by "
                f"{quality['rmse_c']:.2f} C; a twin needs {room.MIN_R2:.0%}, "
                f"or a miss of {room.SMALL_RMSE_C:g} C at most"
            )
    if f.params["g"] <= 0 or f.params["a"] <= 1e-8:
        poor.append("the fit finds no heating or no loss: the record does not show how the room behaves")
    quality["ok"] = not poor
    fit_out = {"quality": quality, "room": _room_summary(f.params, inp.heater_w)}
    conditions = _room_conditions(f.params, s, h, settings, source, inp.heater_w)
    base |= {"fit": fit_out, "conditions": conditions}
    if poor:
        return _insufficient(Insufficient(poor), base)

    band = {
        "setpoint": float(settings.get("setpoint", 21.0)),
        "schedule": [[m, v] for m, v in room.parse_schedule(settings.get("schedule", []))],
        "below": room.BELOW_K,
        "above": room.ABOVE_K,
    }
    commands = _replayed(h)
    disabled = [n for n, f_ in h.features.items() if isinstance(f_, dict) and f_.get("enabled") is False]
    spec = {
        "board": inp.board,
        "addons": plugged(inp),
        "utc_offset_min": h.utc_offset_min,
        "start": float(s.t[0]),
        "end": float(s.t[-1]),
        "step_s": STEP_S,
        "plant": f.params | {"q0": float(s.relay[0])},
        "initial": {"temperature": float(s.temp[0])},
        "settings": _owner_settings(
            {"thermostat": {k: v for k, v in settings.items() if k in THERMOSTAT_SETTINGS}}
            | _replied_settings(h, "thermostat"),
            inp.current,
            TOLERANCE if source == "estimated" else {},
        ),
        "disabled": disabled,
        "commands": commands,
        "meter": {"kind": "thermostat", "band": band},
    }
    runs = _run_both(inp, spec, limits)
    prices = _prices(h)
    hours_rec = _recorded_hours(s, band, h.utc_offset_min)
    m_rec = _thermostat_metrics(hours_rec, prices, inp.heater_w, h.utc_offset_min)
    m_cur = _thermostat_metrics(runs["current"]["hours"], prices, inp.heater_w, h.utc_offset_min)
    m_can = _thermostat_metrics(runs["candidate"]["hours"], prices, inp.heater_w, h.utc_offset_min)
    rec_h, twin_h = m_rec["heater_hours"], m_cur["heater_hours"]
    error = (twin_h - rec_h) / rec_h if rec_h > 0 else None
    fit_out["check"] = {
        "metric": "heater_hours",
        "recorded": round(rec_h, 3),
        "twin": round(twin_h, 3),
        "error": round(error, 4) if error is not None else None,
        "max_error": CHECK_MAX,
        "minutes_outside_band": {
            "recorded": round(m_rec["minutes_outside_band"], 1),
            "twin": round(m_cur["minutes_outside_band"], 1),
        },
    }
    if error is not None and abs(error) > CHECK_MAX:
        return _insufficient(
            Insufficient(
                [
                    f"run with the current features, the twin heats {twin_h:.1f} h where the device heated "
                    f"{rec_h:.1f} h ({error:+.0%}); a twin must redo the record within {CHECK_MAX:.0%}"
                ]
            ),
            base,
        )
    metrics = _table(THERMOSTAT_METRICS, m_rec, m_cur, m_can)
    return base | {
        "state": "ready",
        "reason": None,
        "metrics": metrics,
        "series": _thermostat_series(runs, band, prices, h.utc_offset_min),
        "warnings": _warnings(metrics, runs),
    }


THERMOSTAT_SETTINGS = ("setpoint", "hysteresis", "mode", "schedule")
THERMOSTAT_METRICS = (
    ("minutes_outside_band", "min", "lower"),
    ("heater_energy_kwh", "kWh", "lower"),
    ("heater_cost", "price*kWh", "lower"),
    ("heater_hours", "h", "lower"),
)
# below these, a metric's error is counted against the floor (a metric near
# zero is not missed by a large share when it is missed by a little)
FLOORS = {
    "minutes_outside_band": 60.0,
    "minutes_above_threshold": 10.0,
    "vent_actuations": 10.0,
    "vent_open_hours": 0.05,
}
# how far a setting estimated from telemetry may be from its default and
# still be taken for the default (one the owner never set)
TOLERANCE = {"hysteresis": 0.05, "open_at": 1.0, "close_at": 1.0, "full_at": 2.0, "min_opening": 2.0}


def _table(
    names: tuple[tuple[str, str, str], ...],
    recorded: dict[str, Any],
    current: dict[str, Any],
    candidate: dict[str, Any],
) -> dict[str, Any]:
    out = {}
    for name, unit, better in names:
        cur, can, rec = current[name], candidate[name], recorded[name]
        # the twin run with the current features against what the device did
        reliable = None
        if cur is not None and rec is not None:
            reliable = abs(cur - rec) <= CHECK_MAX * max(abs(rec), FLOORS.get(name, 1e-9))
        out[name] = {
            "unit": unit,
            "better": better,
            "current": _round(cur),
            "candidate": _round(can),
            "change": _round(can - cur) if cur is not None and can is not None else None,
            "relative": _round((can - cur) / cur, 4) if cur and can is not None else None,
            "recorded": _round(rec),
            "reliable": reliable,
        }
    return out


def _warnings(metrics: dict[str, Any], runs: dict[str, dict[str, Any]]) -> list[str]:
    out = [str(w) for w in runs["current"]["refused"] + runs["candidate"]["refused"]]
    for name, m in metrics.items():
        if m["reliable"] is False:
            out.append(
                f"run with the current features, the twin does not redo the record's "
                f"{name.replace('_', ' ')} ({m['recorded']:g} recorded, {m['current']:g} in the twin): "
                "take its prediction with care"
            )
    return out


def _run_both(inp: Inputs, spec: dict[str, Any], limits: sandbox.Limits) -> dict[str, dict[str, Any]]:
    """The same conditions run through the twin with each feature set, each in the sandbox."""
    runs = {}
    for which, fs in (("current", inp.current), ("candidate", inp.candidate)):
        files = dict(fs.files) | {"input.json": json.dumps(spec).encode()}
        try:
            answer = sandbox.run(files, limits=limits)
        except sandbox.SandboxError as exc:
            raise Failed(f"the {which} feature set ({fs.ref}) in the twin: {exc}", exc.code) from exc
        _check_features(answer, which, fs)
        runs[which] = answer
    return runs


def _defaults(fs: FeatureSet) -> dict[str, dict[str, Any]]:
    """Feature -> its settings' defaults, from a set's manifests."""
    out = {}
    for path, data in fs.files.items():
        parts = path.split("/")
        if len(parts) == 3 and parts[2] == "manifest.json":
            try:
                config = json.loads(data).get("config") or {}
                out[parts[1]] = {
                    k: spec.get("default") for k, spec in config.items() if isinstance(spec, dict)
                }
            except (ValueError, AttributeError):
                continue
    return out


def _owner_settings(
    settings: dict[str, dict[str, Any]], current: FeatureSet, tolerance: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """The settings the owner set, as the twin applies them to both runs:
    those that differ from the current set's defaults. A setting left at
    its default is left out, so that a release that changes a default
    runs with its own, as it would on the device."""
    defaults = _defaults(current)
    out: dict[str, dict[str, Any]] = {}
    for name, values in settings.items():
        kept = {}
        for key, value in values.items():
            default = defaults.get(name, {}).get(key, object())
            same = value == default
            if not same and isinstance(value, int | float) and isinstance(default, int | float):
                same = abs(value - default) <= tolerance.get(key, 1e-9)
            if not same:
                kept[key] = value
        if kept:
            out[name] = kept
    return out


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, digits)


def _check_features(answer: dict[str, Any], which: str, fs: FeatureSet) -> None:
    """A feature that failed in the twin fails the preview: on a device, a
    feature that fails on trial rolls the update back."""
    failed = {n: f.get("error") for n, f in (answer.get("features") or {}).items() if f.get("error")}
    if failed:
        name, error = sorted(failed.items())[0]
        raise Failed(
            f"in the twin, feature {name} of the {which} set ({fs.ref}) failed: {error}"
            + (" (a device would roll the update back)" if which == "candidate" else ""),
            "feature_failed",
        )


def _thermostat_settings(h: hist.History, s: room.Series) -> tuple[dict[str, Any], str]:
    """The thermostat's settings at the record's start."""
    return _settings_at_start(h, "thermostat", lambda: room.infer_settings(s, h.utc_offset_min))


def _settings_at_start(
    h: hist.History, feature: str, infer: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], str]:
    """A feature's settings at the record's start, and where they come from:
    as the device last replied them before it; else as it replied them later,
    but for what the owner changed during the record, which is taken as its
    telemetry shows it (infer()); else all as its telemetry shows them."""
    replied = h.configs(before=h.start).get(feature)
    if replied:
        return dict(replied), "device"
    inferred = infer()
    later = h.configs().get(feature)
    if not later:
        return inferred, "estimated"
    changed = {
        k
        for c in h.commands
        if c.op == "config.set" and c.t > h.start and c.args.get("feature") == feature
        for k in (c.args.get("values") or {})
    }
    return {**later, **{k: inferred[k] for k in changed if k in inferred}}, "device"


def _replied_settings(h: hist.History, but: str) -> dict[str, dict[str, Any]]:
    """Every other feature's settings as the device replied them before the record."""
    return {n: c for n, c in h.configs(before=h.start).items() if n != but}


def _replayed(h: hist.History) -> list[dict[str, Any]]:
    """The commands the twin replays at their times: data the gateway sent
    (the last of each key before the record, and all after) and settings
    changed during the record."""
    last: dict[str, hist.Command] = {}
    out = []
    for c in h.commands:
        if c.op == "data.set" and isinstance(c.args.get("key"), str):
            if c.t <= h.start:
                last[c.args["key"]] = c
            else:
                out.append(c)
        elif c.op == "config.set" and c.t > h.start:
            out.append(c)
    return [{"t": c.t, "op": c.op, "args": c.args} for c in [*last.values(), *out]]


def _prices(h: hist.History) -> list[tuple[float, list[float]]]:
    """(since, the 24 hourly prices) of each price table the gateway sent."""
    out = []
    for t, value in h.data_sent("prices"):
        if (
            isinstance(value, list)
            and len(value) == 24
            and all(isinstance(p, int | float) and not isinstance(p, bool) for p in value)
        ):
            out.append((t, [float(p) for p in value]))
    return out


def _price_at(prices: list[tuple[float, list[float]]], t: float, offset: int) -> float | None:
    table = None
    for since, values in prices:
        if since <= t:
            table = values
        else:
            break
    return None if table is None else table[local_hour(t, offset)]


def _recorded_hours(s: room.Series, band: dict[str, Any], offset: int) -> list[dict[str, Any]]:
    """The record's hours as the runner measures the twin's."""
    hours: dict[int, list[float]] = {}
    sched = [(int(m), float(v)) for m, v in band["schedule"]]
    for i in range(len(s.t) - 1):
        dt = float(s.t[i + 1] - s.t[i])
        if dt > 120:
            continue
        t = float(s.t[i])
        minute = int(((t + 60 * offset) % DAY_S) // 60)
        sp = scheduled(sched, minute, band["setpoint"])
        temp = float(s.temp[i + 1])
        out = temp < sp - band["below"] or temp > sp + band["above"]
        k = int(t // HOUR_S)
        acc = hours.setdefault(k, [0.0, 0.0, 0.0, 0.0])
        acc[0] += float(s.relay[i]) * dt
        acc[1] += dt if out else 0.0
        acc[2] += temp
        acc[3] += 1
    return [
        {"t": k * HOUR_S, "on_s": v[0], "outside_s": v[1], "temp": v[2] / v[3]}
        for k, v in sorted(hours.items())
    ]


def _thermostat_metrics(
    hours: list[dict[str, Any]], prices: list[tuple[float, list[float]]], heater_w: float | None, offset: int
) -> dict[str, Any]:
    on_s = sum(x["on_s"] for x in hours)
    outside = sum(x["outside_s"] for x in hours) / 60
    energy = heater_w * on_s / 3.6e6 if heater_w else None
    cost = None
    if heater_w and prices:
        priced = [(x, _price_at(prices, x["t"] + HOUR_S / 2, offset)) for x in hours]
        if any(p is not None for _, p in priced):
            cost = sum(heater_w * x["on_s"] / 3.6e6 * p for x, p in priced if p is not None)
    return {
        "minutes_outside_band": outside,
        "heater_hours": on_s / HOUR_S,
        "heater_energy_kwh": energy,
        "heater_cost": cost,
    }


def _thermostat_series(
    runs: dict[str, dict[str, Any]],
    band: dict[str, Any],
    prices: list[tuple[float, list[float]]],
    offset: int,
) -> dict[str, Any]:
    hours = [x["t"] for x in runs["current"]["hours"]]
    out: dict[str, Any] = {"step_s": HOUR_S, "t": hours}
    for which in ("current", "candidate"):
        by_t = {x["t"]: x for x in runs[which]["hours"]}
        rows = [by_t.get(t) for t in hours]
        out[which] = {
            "temperature": [round(r["temp"], 2) if r else None for r in rows],
            "heater_duty": [
                round(r["on_s"] / (r["samples"] * STEP_S), 3) if r and r["samples"] else None for r in rows
            ],
        }
    mids = [x["band_mid"] for x in runs["current"]["hours"]]
    out["band"] = {
        "low": [round(m - band["below"], 2) for m in mids],
        "high": [round(m + band["above"], 2) for m in mids],
    }
    out["price"] = [_price_at(prices, t + HOUR_S / 2, offset) for t in hours]
    return out


def _room_summary(p: dict[str, Any], heater_w: float | None) -> dict[str, Any]:
    out = {
        "time_constant_h": round(1 / p["a"] / HOUR_S, 2),
        "heater_warming_c_per_h": round(p["g"] * HOUR_S, 3),
        "heater_lag_s": round(p["lag_s"], 1),
        "heater_w": heater_w,
        "loss_w_per_k": None,
        "capacity_kwh_per_k": None,
    }
    if heater_w:
        capacity = heater_w / p["g"]  # J/K
        out["loss_w_per_k"] = round(p["a"] * capacity, 1)
        out["capacity_kwh_per_k"] = round(capacity / 3.6e6, 3)
    return out


def _room_conditions(
    p: dict[str, Any],
    s: room.Series,
    h: hist.History,
    settings: dict[str, Any],
    source: str,
    heater_w: float | None,
) -> dict[str, Any]:
    o = p["outdoor"]
    if o["kind"] == "measured":
        values = np.array(o["values"])
        outdoor = {"source": "sensor", "mean_c": round(float(values.mean()), 2), "days": []}
    else:
        swing = math.hypot(o["cos"], o["sin"])
        peak = (math.atan2(o["sin"], o["cos"]) / OMEGA / HOUR_S + h.utc_offset_min / 60) % 24
        days = []
        first = int(o["first_day"])
        for i, level in enumerate(o["levels"]):
            noon = (first + i) * DAY_S + DAY_S / 2
            if s.t[0] - DAY_S / 2 <= noon <= s.t[-1] + DAY_S / 2:
                days.append({"date": time.strftime("%Y-%m-%d", time.gmtime(noon)), "mean_c": round(level, 2)})
        outdoor = {
            "source": "estimated",
            "mean_c": round(
                float(np.mean([d["mean_c"] for d in days])) if days else float(np.mean(o["levels"])), 2
            ),
            "swing_c": round(swing, 2),
            "peak_hour": round(peak, 1),
            "days": days,
        }
    # occupants' gains: watts where the heater's power is known, else its warming
    scale, unit = ((heater_w / p["g"]), "W") if heater_w else (HOUR_S, "C/h")
    occupancy = {
        "unit": unit,
        "weekday": [
            round(max(v, 0.0) * scale, 3 if unit == "C/h" else 0) + 0.0 for v in p["occupancy"]["weekday"]
        ],
        "weekend": [
            round(max(v, 0.0) * scale, 3 if unit == "C/h" else 0) + 0.0 for v in p["occupancy"]["weekend"]
        ],
    }
    prices = _prices(h)
    return {
        "outdoor": outdoor,
        "occupancy": occupancy,
        "settings": {"source": source, "thermostat": settings},
        "prices": {"tables": len(prices), "first": prices[0][0] if prices else None} if prices else None,
        "heater_w": heater_w,
    }


# ---- the shirt ----------------------------------------------------------------------

SHIRT_METRICS = (
    ("minutes_above_threshold", "min", "lower"),
    ("vent_actuations", "count", "lower"),
    ("vent_open_hours", "h", "lower"),
)
VENT_SETTINGS = ("open_at", "close_at", "full_at", "min_opening")


def _shirt(inp: Inputs, limits: sandbox.Limits, fits: dict[str, Any]) -> dict[str, Any]:
    h = inp.history
    base = _base(inp)
    s = skin.series(h)
    base["record"] = _record(h, s.covered_s, len(s.t))
    if (held := _withheld(h, base)) is not None:
        return held
    reasons = _too_short(s, "humidity", skin.MIN_HOURS, skin.MIN_COVERAGE)
    moves = int(np.sum(np.abs(np.diff(s.x)) > 0)) if len(s.t) > 1 else 0
    if not reasons and moves < 4:
        reasons.append(
            f"the vent moved {moves} times in the record; the twin needs 4 to tell how it dries the skin"
        )
    if reasons:
        return _insufficient(Insufficient(reasons), base)
    settings, source = _settings_at_start(h, "vent", lambda: skin.infer_settings(s))
    if "skin" not in fits:
        fits["skin"] = (skin.quality(s), skin.fit(s, np.ones(len(s.t), dtype=bool)))
    quality, f = dict(fits["skin"][0]), fits["skin"][1]
    p = f.params
    quality |= {
        "thresholds": {"rmse_hum": skin.MAX_RMSE, "r2": skin.MIN_R2, "small_rmse_hum": skin.SMALL_RMSE}
    }
    poor = []
    if quality["rmse_hum"] is None:
        poor.append("no held-out data to judge the fit on")
    elif quality["rmse_hum"] > skin.MAX_RMSE:
        poor.append(
            f"the fit misses the held-out humidity by {quality['rmse_hum']:.1f} %RH "
            f"(RMSE over a quarter hour ahead); a twin needs {skin.MAX_RMSE:g} %RH at most"
        )
    elif quality["r2"] is not None and quality["r2"] < skin.MIN_R2 and quality["rmse_hum"] > skin.SMALL_RMSE:
        poor.append(
            f"the fit explains {quality['r2']:.0%} of the held-out humidity; a twin needs {skin.MIN_R2:.0%}"
        )
    if p["period_s"] * skin.MIN_PERIODS > s.span_s:
        poor.append(
            f"the record holds {s.span_s / p['period_s']:.1f} of the wearer's sessions (every "
            f"{p['period_s'] / 60:.0f} min); the twin needs {skin.MIN_PERIODS:g}"
        )
    if p["vent_flow"] <= 0:
        poor.append("the fit finds the vent does not dry the skin: the record does not show how it does")
    quality["ok"] = not poor
    fit_out: dict[str, Any] = {
        "quality": quality,
        "skin": {
            "fabric_per_h": round(p["fabric"] * HOUR_S, 3),
            "vent_flow_per_h": round(p["vent_flow"] * HOUR_S, 3),
            "closed_time_constant_min": round(1 / p["fabric"] / 60, 1) if p["fabric"] > 0 else None,
            "open_time_constant_min": round(1 / (p["fabric"] + p["vent_flow"]) / 60, 1)
            if p["fabric"] + p["vent_flow"] > 0
            else None,
        },
    }
    peak = max(p["sweat"]) or 1.0
    base |= {
        "fit": fit_out,
        "conditions": {
            "ambient_humidity": round(p["ambient"], 1),
            "exertion": {
                "period_min": round(p["period_s"] / 60, 1),
                "sweat_peak_per_min": round(peak * 60, 3),
                "profile": [round(v / peak, 3) for v in p["sweat"]],
            },
            "settings": {"source": source, "vent": settings},
        },
    }
    if poor:
        return _insufficient(Insufficient(poor), base)
    spec = {
        "board": inp.board,
        "addons": plugged(inp),
        "utc_offset_min": h.utc_offset_min,
        "start": float(s.t[0]),
        "end": float(s.t[-1]),
        "step_s": STEP_S,
        "plant": p,
        "initial": {"humidity": float(s.humidity[0])},
        "settings": _owner_settings(
            {"vent": {k: v for k, v in settings.items() if k in VENT_SETTINGS}}
            | _replied_settings(h, "vent"),
            inp.current,
            TOLERANCE if source == "estimated" else {},
        ),
        "disabled": [
            n for n, f_ in h.features.items() if isinstance(f_, dict) and f_.get("enabled") is False
        ],
        "commands": _replayed(h),
        "meter": {"kind": "shirt", "threshold": skin.THRESHOLD},
    }
    runs = _run_both(inp, spec, limits)
    m_rec = _shirt_metrics(_shirt_recorded_hours(s))
    m_cur = _shirt_metrics(runs["current"]["hours"])
    m_can = _shirt_metrics(runs["candidate"]["hours"])
    metric = (
        "vent_open_hours"
        if m_rec["vent_open_hours"] >= 0.02 * s.span_s / HOUR_S
        else "minutes_above_threshold"
    )
    rec_v, twin_v = m_rec[metric], m_cur[metric]
    error = (twin_v - rec_v) / rec_v if rec_v > 0 else None
    fit_out["check"] = {
        "metric": metric,
        "recorded": round(rec_v, 3),
        "twin": round(twin_v, 3),
        "error": round(error, 4) if error is not None else None,
        "max_error": CHECK_MAX,
    }
    if error is not None and abs(error) > CHECK_MAX:
        return _insufficient(
            Insufficient(
                [
                    f"run with the current features, the twin gives {metric.replace('_', ' ')} {twin_v:.2f} "
                    f"where the device had {rec_v:.2f} ({error:+.0%}); a twin must redo the record within "
                    f"{CHECK_MAX:.0%}"
                ]
            ),
            base,
        )
    metrics = _table(SHIRT_METRICS, m_rec, m_cur, m_can)
    return base | {
        "state": "ready",
        "reason": None,
        "metrics": metrics,
        "series": _shirt_series(runs),
        "warnings": _warnings(metrics, runs),
    }


def _shirt_recorded_hours(s: skin.Series) -> list[dict[str, Any]]:
    hours: dict[int, list[float]] = {}
    for i in range(len(s.t) - 1):
        dt = float(s.t[i + 1] - s.t[i])
        if dt > 120:
            continue
        k = int(s.t[i] // HOUR_S)
        acc = hours.setdefault(k, [0.0, 0.0, 0.0, 0.0, 0.0])
        hum = float(s.humidity[i + 1])
        acc[0] += dt if hum > skin.THRESHOLD else 0.0
        acc[1] += 1.0 if s.x[i + 1] != s.x[i] else 0.0
        acc[2] += float(s.x[i]) * dt
        acc[3] += hum
        acc[4] += 1
    return [
        {"t": k * HOUR_S, "above_s": v[0], "actuations": v[1], "open_s": v[2], "humidity": v[3] / v[4]}
        for k, v in sorted(hours.items())
    ]


def _shirt_metrics(hours: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "minutes_above_threshold": sum(x["above_s"] for x in hours) / 60,
        "vent_actuations": float(sum(x["actuations"] for x in hours)),
        "vent_open_hours": sum(x["open_s"] for x in hours) / HOUR_S,
    }


def _shirt_series(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    hours = [x["t"] for x in runs["current"]["hours"]]
    out: dict[str, Any] = {"step_s": HOUR_S, "t": hours, "threshold": skin.THRESHOLD}
    for which in ("current", "candidate"):
        by_t = {x["t"]: x for x in runs[which]["hours"]}
        rows = [by_t.get(t) for t in hours]
        out[which] = {
            "humidity": [round(r["humidity"], 2) if r else None for r in rows],
            "vent_opening": [
                round(100 * r["open_s"] / (r["samples"] * STEP_S), 1) if r and r["samples"] else None
                for r in rows
            ],
            "vent_actuations": [r["actuations"] if r else None for r in rows],
        }
    return out
