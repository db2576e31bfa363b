"""Record and replay: a device's telemetry trace, and a plant that plays a
trace's sensor readings back into a virtual device.

A trace is JSON lines: a header, then one line per telemetry message, oldest
first:

    {"trace": 1, "device": "th-1", "model": "thermostat", "rows": 240}
    {"t": 1795400125.0, "sensors": {"temperature": 19.2, "humidity": 45.0},
     "actuators": {"relay": true}, "features": {"thermostat": {...}}}

Replayed, the recorded sensors drive the device's features as the real
room or shirt did, and what the features drive now can be set against what
they drove then. The replay is open-loop: what the features drive cannot
change what they read. The owner's twin preview of a candidate release is
closed-loop (gateway/twin/, docs/twin.md); its benchmark takes this replay
for its baseline.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.store import Store

VERSION = 1


@dataclass
class Trace:
    device: str
    model: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # {"t", "sensors", "actuators", "features"}

    @property
    def start(self) -> float:
        return float(self.rows[0]["t"]) if self.rows else 0.0

    @property
    def duration(self) -> float:
        return float(self.rows[-1]["t"]) - self.start if self.rows else 0.0

    def add(self, t: float, telemetry: dict[str, Any]) -> None:
        """A telemetry message (or the stored part of one) at device time t."""
        if self.rows and t < self.rows[-1]["t"]:
            return  # out of order (a clock stepped back): a trace only goes forward
        self.rows.append(
            {
                "t": float(t),
                "sensors": dict(telemetry.get("sensors") or {}),
                "actuators": dict(telemetry.get("actuators") or {}),
                "features": dict(telemetry.get("features") or {}),
            }
        )

    # ---- files ---------------------------------------------------------------------

    def save(self, path: Path) -> None:
        head = {"trace": VERSION, "device": self.device, "model": self.model, "rows": len(self.rows)}
        lines = [json.dumps(head)] + [json.dumps(r, separators=(",", ":")) for r in self.rows]
        path.write_text("\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: Path) -> Trace:
        """Raises ConfigError for a file that is not a trace, naming the line."""
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read trace {path}: {exc.strerror}") from exc
        if not lines:
            raise ConfigError(f"{path} is empty, not a trace")
        try:
            head = json.loads(lines[0])
        except ValueError as exc:
            raise ConfigError(f"{path}:1: not a trace header: {exc}") from exc
        if not isinstance(head, dict) or head.get("trace") != VERSION:
            raise ConfigError(f"{path}:1: not a version {VERSION} trace header")
        trace = cls(str(head.get("device", "?")), str(head.get("model", "?")))
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                t = float(row["t"])
                sensors = row["sensors"]
                if not isinstance(sensors, dict) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in sensors.values()
                ):
                    raise ValueError("sensors must map names to numbers")
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{n}: not a trace row: {exc}") from exc
            trace.add(t, row)
        if not trace.rows:
            raise ConfigError(f"{path} holds no rows")
        return trace


def record(store: Store, dev: str, limit: int = 100_000) -> Trace:
    """The telemetry a gateway stored of a device (its newest `limit`
    messages) as a trace, in the device's own time. Raises ConfigError for
    an unknown device or one without telemetry."""
    d = store.device(dev)
    if d is None:
        raise ConfigError(f"no device {dev!r} in {store.path}")
    trace = Trace(dev, d.model or "?")
    for row in store.telemetry(dev, limit):
        trace.add(row.ts if row.ts is not None else row.received, row.data)
    if not trace.rows:
        raise ConfigError(f"device {dev} has no telemetry stored")
    return trace


class TracePlant:
    """A plant whose sensors read a trace: the trace's first row at the
    first time it is asked (advance or sensors), then on, step by step, at
    the pace of the clock; after the trace's end, its last row. Actuators
    the HAL writes are kept (relay, vent) with when they changed."""

    def __init__(self, trace: Trace) -> None:
        if not trace.rows:
            raise ConfigError("an empty trace cannot be replayed")
        self.trace = trace
        self._times = [r["t"] for r in trace.rows]
        self.t0: float | None = None
        self.t: float | None = None
        self.relay = False
        self.vent = 0.0

    def _row(self, t: float) -> dict[str, Any]:
        if self.t0 is None:
            self.t0 = t
        at = self.trace.start + (t - self.t0)
        i = bisect.bisect_right(self._times, at) - 1
        return self.trace.rows[max(i, 0)]

    def done(self, t: float) -> bool:
        return self.t0 is not None and t - self.t0 > self.trace.duration

    def advance(self, t: float) -> None:
        self._row(t)
        self.t = t

    def step(self, t: float, dt: float) -> None:
        self.advance(t)

    def sensors(self, t: float) -> dict[str, float]:
        return {k: float(v) for k, v in self._row(t)["sensors"].items()}

    def recorded(self, t: float) -> dict[str, Any]:
        """What the device drove at this point of the recording."""
        return dict(self._row(t)["actuators"])

    def truth(self) -> dict[str, Any]:
        t = self.t if self.t is not None else self.trace.start
        return {
            "sensors": self.sensors(t),
            "recorded": self.recorded(t),
            "relay": self.relay,
            "vent": self.vent,
        }


@dataclass
class Comparison:
    """What the replayed features drove against what was recorded, per
    actuator: the mean of each (the share of time on, for a relay), the
    share of samples where they agree (on/off) or their mean absolute
    difference (numbers), over the samples that have both."""

    samples: int = 0
    _sums: dict[str, list[float]] = field(default_factory=dict)  # name -> [rec sum, rec n, rep sum, rep n]
    _both: dict[str, list[float]] = field(default_factory=dict)  # name -> [agree or diff sum, n]
    _bool: set[str] = field(default_factory=set)

    def add(self, recorded: dict[str, Any], replayed: dict[str, Any]) -> None:
        self.samples += 1
        for name in set(recorded) | set(replayed):
            a, b = _number(recorded.get(name)), _number(replayed.get(name))
            if isinstance(recorded.get(name), bool) or isinstance(replayed.get(name), bool):
                self._bool.add(name)
            sums = self._sums.setdefault(name, [0.0, 0, 0.0, 0])
            if a is not None:
                sums[0] += a
                sums[1] += 1
            if b is not None:
                sums[2] += b
                sums[3] += 1
            if a is not None and b is not None:
                both = self._both.setdefault(name, [0.0, 0])
                both[0] += (a == b) if name in self._bool else abs(a - b)
                both[1] += 1

    def report(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name in sorted(self._sums):
            rec_sum, rec_n, rep_sum, rep_n = self._sums[name]
            r: dict[str, float] = {}
            if rec_n:
                r["recorded_mean"] = rec_sum / rec_n
            if rep_n:
                r["replayed_mean"] = rep_sum / rep_n
            both = self._both.get(name)
            if both and both[1]:
                r["agreement" if name in self._bool else "mean_abs_diff"] = both[0] / both[1]
            out[name] = r
        return out

    def lines(self) -> Iterable[str]:
        for name, r in self.report().items():
            rec, rep = r.get("recorded_mean"), r.get("replayed_mean")
            if name in self._bool:
                text = f"{name}: on {_pct(rec)} of the time as recorded, {_pct(rep)} replayed"
                if "agreement" in r:
                    text += f"; the same in {r['agreement']:.0%} of the samples"
            else:
                text = f"{name}: mean {_num(rec)} as recorded, {_num(rep)} replayed"
                if "mean_abs_diff" in r:
                    text += f"; they differ by {r['mean_abs_diff']:.1f} on average"
            yield text + f" ({self.samples} samples)"


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) else None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


async def replay(
    trace: Trace,
    workdir: Path,
    *,
    features: list[str] | None = None,
    speed: float = 600.0,
    sample_s: float = 0.05,
    config: dict[str, Any] | None = None,
) -> Comparison:
    """Run the trace's model, with `features` (default: its board's), on a
    virtual device whose sensors replay the trace, `speed` times faster
    than it was recorded; returns what its features drove set against the
    recording. The device runs offline (no broker): only its features and
    their actuators matter here."""
    import asyncio
    import contextlib

    from gateway.broker import BrokerUrl, free_port

    from .clock import SimClock
    from .device import PLANTS, VirtualDevice

    if trace.model not in PLANTS:
        raise ConfigError(f"trace of a {trace.model!r}: no such model")
    plant = TracePlant(trace)
    clock = SimClock(speed, trace.start)
    nowhere = BrokerUrl("127.0.0.1", free_port())  # nothing listens: the device stays offline
    dev = VirtualDevice(
        f"twin-{trace.device}"[:32],
        trace.model,
        nowhere,
        workdir,
        clock,
        0,
        features=features,
        sample_s=sample_s,
        telemetry_s=3600,
        config=config,
        plant=plant,
    )
    task = asyncio.create_task(dev.run(), name=f"twin-{trace.device}")
    result = Comparison()
    try:
        while not plant.done(clock.now()):
            await asyncio.sleep(sample_s)
            if task.done():
                task.result()  # what went wrong
                raise RuntimeError("the replayed device stopped")
            d = dev.device
            if d is None or not d.actuators:
                continue
            now = clock.now()
            result.add(plant.recorded(now), dict(d.actuators))
    finally:
        dev.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 10)
    return result
