"""The twin preview's accuracy (docs/twin.md 7): on simulated devices whose
physics is known, the metrics a preview predicts for a candidate release
against what each device then actually does when it runs the candidate
under the same conditions.

    .venv/bin/python -m benchmarks twin                          # 24 thermostats, 24 shirts
    .venv/bin/python -m benchmarks twin --thermostats 8 --shirts 4

Each thermostat is the firmware's own runtime with the factory thermostat in
its own seeded room (simulator/physics.Room: weather, occupants, doors),
its owner's seeded settings (setpoint, hysteresis, a night setback for half
of them) and the day's prices sent by the gateway every midnight, recorded
for --days days (3) into a real gateway store (simulator/recorded.py). The
gateway's own preview (gateway/twin/preview.py: gather from the store,
fit, the two runs in the sandbox) predicts each candidate, a release signed
and verified as a device would:

- eco: the factory thermostat and eco (pre-heats in the cheapest hours);
- wide: a thermostat whose hysteresis is taken 1.5 times wider (a changed
  setpoint behaviour).

Then the same device runs the candidate in the same room over the same days
(the world is a function of time and the seed: the same weather, occupants
and prices), and its telemetry is measured as the preview measures its
runs. The preview knows only what the gateway stored, and the heater's
rated power (its nameplate, the one figure temperatures cannot tell).

Each shirt is the factory vent on its own seeded wearer (simulator/physics.Skin),
recorded for --shirt-hours hours (6), its candidate a vent whose curve opens
wider early (eager).

Per metric, the error of the prediction is (predicted - actual) / actual,
the actual floored for metrics that can be near zero (minutes outside the
comfort band: 60 min; minutes above the humidity threshold and vent
actuations: 10; vent open hours: 0.05 h). The baseline, measured in the same
run, is today's open-loop replay (simulator/trace.py): the candidate's
features fed the recorded sensor values, so that what they drive cannot
change what they read. Figures go to bench-results/twin-thermostat.json and
bench-results/twin-shirt.json; the goal is a mean error within 10% per metric.
"""

from __future__ import annotations

import argparse
import calendar
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.paths import firmware_dir
from gateway.releases import ReleaseStore, StoredRelease
from gateway.store import Store
from gateway.twin import history, preview, room, skin
from ota.keys import Keys, keygen
from ota.release import build
from simulator.recorded import Recorded, shirt_after, shirt_record, thermostat_after, thermostat_record
from simulator.stepped import shirt_on_a_wearer, thermostat_in_a_room
from simulator.trace import Trace, TracePlant

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results"
G0 = float(calendar.timegm((2024, 1, 15, 0, 0, 0)))  # a Monday, 00:00 UTC
DAY = 86400.0
GOAL = 0.10
WIDE_PATCH = ('h = cfg["hysteresis"]', 'h = cfg["hysteresis"] * 1.5')
EAGER_CURVE = "POINTS = ((0.0, 0.0), (0.4, 0.8), (1.0, 1.0))\n"
FLOORS = preview.FLOORS
THERMOSTAT_METRICS = ("minutes_outside_band", "heater_energy_kwh", "heater_cost", "heater_hours")
SHIRT_METRICS = ("minutes_above_threshold", "vent_actuations", "vent_open_hours")


# ---- the candidates, built and signed once per process ------------------------------------


class World:
    def __init__(self, work: Path) -> None:
        self.work = work
        keys: Keys = keygen(work / "keys")
        self.root = keys.root_bytes
        self.features: dict[str, Path] = {}
        self.releases: dict[str, Path] = {}
        self._feature_set("eco", ["thermostat", "eco"])
        wide = self._feature_set("wide", ["thermostat"])
        code = wide / "thermostat" / "__init__.py"
        code.write_text(code.read_text().replace(*WIDE_PATCH))
        self._bump(wide / "thermostat")
        eager = self._feature_set("eager", ["vent"])
        (eager / "vent" / "curve.py").write_text(EAGER_CURVE)
        self._bump(eager / "vent")
        for n, (name, model) in enumerate(
            (("eco", "thermostat"), ("wide", "thermostat"), ("eager", "shirt"))
        ):
            folder = self.features[name]
            dirs = sorted(p for p in folder.iterdir() if p.is_dir())
            rel = build(model, dirs, f"bench-{name}", work / f"release-{name}", counter=10 + n, keys=keys)
            self.releases[name] = rel.path

    def _feature_set(self, name: str, features: list[str]) -> Path:
        out = self.work / f"features-{name}"
        for f in features:
            shutil.copytree(
                firmware_dir() / "features" / f,
                out / f,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        self.features[name] = out
        return out

    @staticmethod
    def _bump(folder: Path) -> None:
        m = json.loads((folder / "manifest.json").read_text())
        m["version"] = "1.1.0"
        (folder / "manifest.json").write_text(json.dumps(m, indent=1))

    def store(self, tmp: Path) -> tuple[Store, ReleaseStore, dict[str, StoredRelease]]:
        store = Store(tmp / "gw.db")
        releases = ReleaseStore(store, root=self.root)
        stored = {name: releases.add(path, G0)[0] for name, path in self.releases.items()}
        return store, releases, stored


_WORLD: World | None = None


def world() -> World:
    global _WORLD
    if _WORLD is None:
        _WORLD = World(Path(tempfile.mkdtemp(prefix="pb-bench-twin-")))
    return _WORLD


def _adopt(w: World) -> None:
    """A worker process's world: the parent's releases."""
    global _WORLD
    _WORLD = w


# ---- one thermostat -----------------------------------------------------------------


def owner_settings(seed: int) -> dict[str, Any]:
    rng = random.Random(f"owner:{seed}")
    setpoint = rng.choice([20.0, 20.5, 21.0, 21.5, 22.0])
    cfg: dict[str, Any] = {"setpoint": setpoint, "hysteresis": rng.choice([0.2, 0.3, 0.4, 0.5])}
    if seed % 2:
        cfg["schedule"] = [["06:30", setpoint], ["22:30", setpoint - rng.choice([2.0, 3.0, 4.0])]]
    return cfg


def _history(rows: list[tuple[float, dict[str, Any]]], rec: Recorded, model: str) -> history.History:
    h = history.History(rec.device, model, None, 0, 10.0, {}, None, [], rows)
    for t, key, value in rec.data:
        h.commands.append(history.Command(t, "data.set", {"key": key, "value": value}, {"key": key}))
    return h


def thermostat_measured(
    rec: Recorded, rows: list[tuple[float, dict[str, Any]]], heater_w: float
) -> dict[str, Any]:
    """A thermostat's telemetry measured as the preview measures its runs."""
    h = _history(rows, rec, "thermostat")
    s = room.series(h)
    band = {
        "setpoint": rec.config["setpoint"],
        "schedule": [[m, v] for m, v in room.parse_schedule(rec.config.get("schedule", []))],
        "below": room.BELOW_K,
        "above": room.ABOVE_K,
    }
    return preview._thermostat_metrics(preview._recorded_hours(s, band, 0), preview._prices(h), heater_w, 0)


def thermostat_job(args: tuple[int, float]) -> dict[str, Any]:
    seed, days = args
    w = world()
    with tempfile.TemporaryDirectory(prefix="pb-bench-th-") as t:
        tmp = Path(t)
        store, releases, stored = w.store(tmp)
        cfg = owner_settings(seed)
        dev = f"th-{seed}"
        rec = thermostat_record(store, dev, seed, G0, days * DAY, tmp / "flash", config=cfg)
        assert rec.room is not None
        heater_w = rec.room.heater_w
        recorded_rows = [(t_, d) for t_, d in _rows_of(store, dev)]
        out: dict[str, Any] = {"seed": seed, "settings": cfg, "heater_w": heater_w, "candidates": {}}
        fits: dict[str, Any] = {}
        for name in ("eco", "wide"):
            t0 = time.monotonic()
            try:
                answer = preview.compute(
                    preview.gather(store, releases, dev, stored[name], heater_w), fits=fits
                )
            except preview.Failed as exc:
                answer = {"state": "failed", "reason": str(exc)}
            preview_s = time.monotonic() - t0
            rows, _ = thermostat_after(rec, tmp / f"after-{name}", w.features[name])
            actual = thermostat_measured(rec, rows, heater_w)
            trace = Trace(dev, "thermostat")
            for t_, d in recorded_rows:
                trace.add(t_, d)
            open_rows = list(
                thermostat_in_a_room(
                    tmp / f"open-{name}",
                    seed,
                    G0,
                    days * DAY,
                    config=cfg,
                    room_temp=None,
                    data=rec.data,
                    features_from=w.features[name],
                    room=TracePlant(trace),  # type: ignore[arg-type]
                )
            )
            open_loop = thermostat_measured(rec, open_rows, heater_w)
            out["candidates"][name] = _outcome(answer, actual, open_loop, THERMOSTAT_METRICS, preview_s)
        out["record"] = thermostat_measured(rec, recorded_rows, heater_w)
        out["truth"] = {"a": rec.room.loss / rec.room.capacity, "g": rec.room.heater_w / rec.room.capacity}
        store.close()
    return out


def _rows_of(store: Store, dev: str) -> list[tuple[float, dict[str, Any]]]:
    h = history.load(store, dev)
    assert h is not None
    return h.rows


def _outcome(
    answer: dict[str, Any],
    actual: dict[str, Any],
    open_loop: dict[str, Any],
    metrics: tuple[str, ...],
    preview_s: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "state": answer["state"],
        "reason": answer.get("reason"),
        "preview_s": round(preview_s, 2),
        "quality": (answer.get("fit") or {}).get("quality"),
        "check": (answer.get("fit") or {}).get("check"),
        "actual": actual,
        "open_loop": open_loop,
    }
    if answer["state"] == "ready":
        m = answer["metrics"]
        out["predicted"] = {k: m[k]["candidate"] for k in metrics}
        out["current"] = {k: m[k]["current"] for k in metrics}
        out["recorded"] = {k: m[k]["recorded"] for k in metrics}
        out["reliable"] = {k: m[k]["reliable"] for k in metrics}
    return out


# ---- one shirt ----------------------------------------------------------------------


def shirt_measured(rows: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    h = history.History("sh", "shirt", None, 0, 10.0, {}, None, [], rows)
    return preview._shirt_metrics(preview._shirt_recorded_hours(skin.series(h)))


def shirt_job(args: tuple[int, float]) -> dict[str, Any]:
    seed, hours = args
    w = world()
    with tempfile.TemporaryDirectory(prefix="pb-bench-sh-") as t:
        tmp = Path(t)
        store, releases, stored = w.store(tmp)
        dev = f"sh-{seed}"
        rec = shirt_record(store, dev, seed, G0, hours * 3600, tmp / "flash")
        recorded_rows = _rows_of(store, dev)
        t0 = time.monotonic()
        try:
            answer = preview.compute(preview.gather(store, releases, dev, stored["eager"], None))
        except preview.Failed as exc:
            answer = {"state": "failed", "reason": str(exc)}
        preview_s = time.monotonic() - t0
        rows, _ = shirt_after(rec, tmp / "after", w.features["eager"])
        actual = shirt_measured(rows)
        trace = Trace(dev, "shirt")
        for t_, d in recorded_rows:
            trace.add(t_, d)
        open_rows = list(
            shirt_on_a_wearer(
                tmp / "open",
                seed,
                G0,
                hours * 3600,
                features_from=w.features["eager"],
                skin=TracePlant(trace),  # type: ignore[arg-type]
            )
        )
        out = {
            "seed": seed,
            "record": shirt_measured(recorded_rows),
            "candidates": {
                "eager": _outcome(answer, actual, shirt_measured(open_rows), SHIRT_METRICS, preview_s)
            },
        }
        store.close()
    return out


# ---- the figures --------------------------------------------------------------------


def _err(predicted: float, actual: float, metric: str) -> float:
    return (predicted - actual) / max(abs(actual), FLOORS.get(metric, 1e-9))


def summarize(runs: list[dict[str, Any]], candidate: str, metrics: tuple[str, ...]) -> dict[str, Any]:
    outcomes = [r["candidates"][candidate] for r in runs]
    ready = [o for o in outcomes if o["state"] == "ready"]
    out: dict[str, Any] = {
        "devices": len(outcomes),
        "ready": len(ready),
        "insufficient": sum(o["state"] == "insufficient" for o in outcomes),
        "failed": sum(o["state"] == "failed" for o in outcomes),
        "preview_s_mean": float(np.mean([o["preview_s"] for o in outcomes])) if outcomes else None,
        "metrics": {},
    }
    for m in metrics:
        errs = np.array(
            [_err(o["predicted"][m], o["actual"][m], m) for o in ready if o["predicted"][m] is not None]
        )
        base = np.array([_err(o["open_loop"][m], o["actual"][m], m) for o in ready])
        if not len(errs):
            continue
        twin_mean, base_mean = float(np.mean(np.abs(errs))), float(np.mean(np.abs(base)))
        # the change the release makes, predicted (candidate - current) against
        # actual (candidate - record), relative to the actual level
        change = np.array(
            [
                ((o["predicted"][m] - o["current"][m]) - (o["actual"][m] - o["recorded"][m]))
                / max(abs(o["actual"][m]), FLOORS.get(m, 1e-9))
                for o in ready
                if o["predicted"][m] is not None
            ]
        )
        flagged = np.array(
            [
                abs(_err(o["predicted"][m], o["actual"][m], m))
                for o in ready
                if o["predicted"][m] is not None and o["reliable"][m]
            ]
        )
        out["metrics"][m] = {
            "n": len(errs),
            "n_reliable": len(flagged),
            "reliable_mean_abs_error": float(np.mean(flagged)) if len(flagged) else None,
            "mean_abs_error": twin_mean,
            "median_abs_error": float(np.median(np.abs(errs))),
            "p90_abs_error": float(np.percentile(np.abs(errs), 90)),
            "max_abs_error": float(np.max(np.abs(errs))),
            "mean_error": float(np.mean(errs)),
            "within_10pct": float(np.mean(np.abs(errs) <= GOAL)),
            "open_loop_mean_abs_error": base_mean,
            "ratio_to_open_loop": twin_mean / base_mean if base_mean > 0 else math.inf,
            "change_mean_abs_error": float(np.mean(np.abs(change))),
            "goal_met": twin_mean <= GOAL,
        }
    return out


def _print(title: str, summary: dict[str, Any]) -> None:
    print(
        f"\n{title}: {summary['ready']} of {summary['devices']} previews ready "
        f"({summary['insufficient']} insufficient, {summary['failed']} failed), "
        f"{summary['preview_s_mean']:.1f} s each"
    )
    print(
        f"  {'metric':24}{'mean err':>9}{'p90':>7}{'max':>8}{'<=10%':>7}{'open loop':>10}{'ratio':>7}"
        f"{'change':>8}{'reliable':>15}  goal"
    )
    for m, f in summary["metrics"].items():
        rel = f["reliable_mean_abs_error"]
        shown = f"{rel:.1%} ({f['n_reliable']})" if rel is not None else "-"
        print(
            f"  {m:24}{f['mean_abs_error']:>9.1%}{f['p90_abs_error']:>7.1%}{f['max_abs_error']:>8.1%}"
            f"{f['within_10pct']:>7.0%}{f['open_loop_mean_abs_error']:>10.1%}{f['ratio_to_open_loop']:>7.2f}"
            f"{f['change_mean_abs_error']:>8.1%}{shown:>15}  {'met' if f['goal_met'] else 'NOT met'}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks twin", description=__doc__.split("\n\n")[0])
    p.add_argument("--thermostats", type=int, default=24)
    p.add_argument("--shirts", type=int, default=24)
    p.add_argument("--days", type=float, default=3.0, help="days of a thermostat's record (default 3)")
    p.add_argument("--shirt-hours", type=float, default=6.0, help="hours of a shirt's record (default 6)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: one a CPU)")
    args = p.parse_args(argv)
    if args.thermostats < 0 or args.shirts < 0 or args.days <= 0 or args.shirt_hours <= 0:
        print("sizes must be positive", file=sys.stderr)
        return 2
    print(
        f"{args.thermostats} thermostats ({args.days:g} days recorded; candidates eco, wide) and "
        f"{args.shirts} shirts ({args.shirt_hours:g} h; candidate eager), {args.jobs} processes",
        flush=True,
    )
    t0 = time.monotonic()
    w = world()  # (the releases built and signed once: the processes inherit them)
    # fresh interpreters (spawn) whose numerical libraries use one thread
    # each: the fits' small problems run many times slower when the
    # processes' BLAS threads fight over the cores
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    with multiprocessing.get_context("spawn").Pool(args.jobs, initializer=_adopt, initargs=(w,)) as pool:
        th = pool.map(thermostat_job, [(s, args.days) for s in range(1, args.thermostats + 1)], chunksize=1)
        sh = pool.map(shirt_job, [(s, args.shirt_hours) for s in range(1, args.shirts + 1)], chunksize=1)
    elapsed = time.monotonic() - t0
    shutil.rmtree(w.work, ignore_errors=True)
    figures_t = {
        "devices": args.thermostats,
        "days": args.days,
        "wide_patch": list(WIDE_PATCH),
        "summary": {c: summarize(th, c, THERMOSTAT_METRICS) for c in ("eco", "wide")} if th else {},
        "runs": th,
    }
    figures_s = {
        "devices": args.shirts,
        "hours": args.shirt_hours,
        "eager_curve": EAGER_CURVE.strip(),
        "summary": {"eager": summarize(sh, "eager", SHIRT_METRICS)} if sh else {},
        "runs": sh,
    }
    for c, s in figures_t["summary"].items():
        _print(f"thermostats, candidate {c}", s)
    for c, s in figures_s["summary"].items():
        _print(f"shirts, candidate {c}", s)
    print(f"\n({elapsed:.0f} s)")
    OUT.mkdir(parents=True, exist_ok=True)
    for name, figures in (("twin-thermostat.json", figures_t), ("twin-shirt.json", figures_s)):
        figures["elapsed_s"] = elapsed
        (OUT / name).write_text(json.dumps(figures, indent=1, default=float))
        print(f"figures: {(OUT / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
