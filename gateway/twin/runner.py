"""The closed loop, run in the sandbox (sandbox.py starts it as
``python -m gateway.twin.runner`` in a folder of its own):

    input.json   what to run: the fitted plant and its initial state, the
                 span and step, the device's settings, the commands to
                 replay at their times (the data the gateway sent, settings
                 it changed), what to measure
    features/    the feature set to run: copies of a release's verified files

The firmware's own runtime (firmware.pb.runtime.Device) runs those
features on the simulator's HAL (simulator/hal.SimHal) against the fitted
plant (plant.py), stepped as the device samples, without a network or an
event loop (as simulator/stepped.py steps a thermostat in a seeded room).
What the features drive changes the plant they read: the loop is closed.

It prints one line of JSON, its answer: per hour, what the metrics are
made of (docs/twin.md 4), and any feature that failed. Before the feature
code is imported the runner installs an audit hook (sys.addaudithook)
that refuses, from then on, files outside this folder and Python's own,
sockets, new processes and ctypes; the sandbox's limits and its user
(nobody, when the gateway runs as root) are set by sandbox.py.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
from pathlib import Path
from typing import Any

# The runtime and the HAL are imported before the hook: they are the
# gateway's code; only what is imported after it is the release's.
from firmware.features.thermostat import scheduled  # (the thermostat's own rule)
from firmware.pb.runtime import Device
from firmware.pb.store import Store
from simulator.hal import SimHal
from simulator.loader import import_feature

from .plant import HOUR_S, make_plant

INPUT = "input.json"
FEATURES = "features"
_DENIED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "ctypes.", "os.fork")
_DENIED = {
    "os.system",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "pty.spawn",
    "sys.remote_exec",
    "webbrowser.open",
}
_WRITES = {
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.mkdir",
    "os.symlink",
    "os.link",
    "os.chmod",
    "os.chown",
    "os.truncate",
    "os.utime",
    "shutil.rmtree",
    "shutil.move",
    "shutil.copyfile",
}
_LISTS = {"os.listdir", "os.scandir", "glob.glob", "os.walk"}


class Refused(PermissionError):
    pass


def guard(work: Path) -> None:
    """From now on, refuse what the feature code has no business doing:
    files outside `work` and Python's own (read only), directories listed
    outside them, sockets, processes, signals to others, ctypes."""
    work_s = str(work.resolve())
    readable = [work_s]
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        readable.append(os.path.realpath(p))
    import firmware
    import gateway
    import simulator

    for mod in (firmware, gateway, simulator):
        readable.append(os.path.realpath(os.path.dirname(mod.__file__ or "")))
    for p in sys.path:  # the interpreter's library, site-packages
        if p and os.path.isdir(p) and ("python" in p.lower() or "site-packages" in p):
            readable.append(os.path.realpath(p))

    # What the hook uses is its own, taken now: the feature code may rebind
    # the module's names, os.path.realpath or the builtins, not these.
    realpath, fsdecode, any_, isinstance_ = os.path.realpath, os.fsdecode, any, isinstance
    denied, prefixes = frozenset(_DENIED), tuple(_DENIED_PREFIXES)
    writes, lists = frozenset(_WRITES), frozenset(_LISTS)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT
    work_only, read_roots = (work_s,), tuple(readable)
    refused, path_types = Refused, (str, bytes, os.PathLike)

    def inside(path: Any, roots: tuple[str, ...]) -> bool:
        if isinstance_(path, int):
            return True  # an open descriptor: what was opened was checked
        try:
            p = realpath(fsdecode(path))
        except (TypeError, ValueError):
            return False
        return any_(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in denied or event.startswith(prefixes):
            raise refused(f"the twin's sandbox refuses {event}")
        if event == "open":
            path, mode = args[0], args[1]
            writing = isinstance_(mode, str) and any_(c in mode for c in "wax+")
            flags = args[2] if len(args) > 2 and isinstance_(args[2], int) else 0
            writing = writing or bool(flags & write_flags)
            if not inside(path, work_only if writing else read_roots):
                raise refused(f"the twin's sandbox refuses to open {path!r}")
        elif event in writes:
            for a in args:
                if isinstance_(a, path_types) and not inside(a, work_only):
                    raise refused(f"the twin's sandbox refuses {event} of {a!r}")
        elif event in lists and args and not inside(args[0] if args[0] is not None else ".", read_roots):
            raise refused(f"the twin's sandbox refuses to list {args[0]!r}")

    sys.addaudithook(hook)


class _Clock:
    """Time that moves only when the steps move it."""

    def __init__(self, t: float) -> None:
        self.t = t
        self.speed = 1.0

    def now(self) -> float:
        return self.t


class _Link:
    """The device's MQTT client, standing in: what the runtime publishes goes nowhere."""

    up = False

    def publish(self, topic: str, data: bytes, qos: int, retain: bool) -> bool:
        return True

    def subscribe(self, topic: str, qos: int) -> None:
        pass

    def pending(self) -> int:
        return 0


class ThermostatMeter:
    """Per hour: the room's temperature (mean, min, max), the seconds the
    relay was on, the seconds outside the comfort band (around the
    setpoint the owner set) and the band's middle."""

    def __init__(self, spec: dict[str, Any], offset_min: int) -> None:
        band = spec["band"]
        self.schedule = [list(e) for e in band["schedule"]]
        self.setpoint = float(band["setpoint"])
        self.below = float(band["below"])
        self.above = float(band["above"])
        self.offset = offset_min
        self.hours: dict[int, list[float]] = {}

    def add(self, t: float, step: float, plant: Any, on_s: float, actuators: dict[str, Any]) -> None:
        minute = int(((t + 60 * self.offset) % 86400) // 60)
        sp = scheduled(self.schedule, minute, self.setpoint)
        temp = plant.temp
        out = temp < sp - self.below or temp > sp + self.above
        h = self.hours.get(int(t // HOUR_S))
        if h is None:
            h = self.hours[int(t // HOUR_S)] = [0, 0.0, temp, temp, 0.0, 0.0, 0.0]
        h[0] += 1
        h[1] += temp
        h[2] = min(h[2], temp)
        h[3] = max(h[3], temp)
        h[4] += on_s
        h[5] += step if out else 0.0
        h[6] += sp

    def result(self) -> list[dict[str, Any]]:
        return [
            {
                "t": k * HOUR_S,
                "samples": int(h[0]),
                "temp": round(h[1] / h[0], 3),
                "temp_min": round(h[2], 3),
                "temp_max": round(h[3], 3),
                "on_s": round(h[4], 1),
                "outside_s": round(h[5], 1),
                "band_mid": round(h[6] / h[0], 3),
            }
            for k, h in sorted(self.hours.items())
        ]


class ShirtMeter:
    """Per hour: the skin's humidity (mean), the seconds above the
    threshold, the times the vent moved, the seconds it was open weighted
    by its opening."""

    def __init__(self, spec: dict[str, Any], offset_min: int) -> None:
        self.threshold = float(spec["threshold"])
        self.hours: dict[int, list[float]] = {}
        self.last: Any = None

    def add(self, t: float, step: float, plant: Any, on_s: float, actuators: dict[str, Any]) -> None:
        vent = actuators.get("vent", 0)
        h = self.hours.get(int(t // HOUR_S))
        if h is None:
            h = self.hours[int(t // HOUR_S)] = [0, 0.0, 0.0, 0.0, 0.0]
        h[0] += 1
        h[1] += plant.humidity
        h[2] += step if plant.humidity > self.threshold else 0.0
        h[3] += 1.0 if self.last is not None and vent != self.last else 0.0
        h[4] += min(max(float(self.last or 0), 0.0), 100.0) / 100 * step
        self.last = vent

    def result(self) -> list[dict[str, Any]]:
        return [
            {
                "t": k * HOUR_S,
                "samples": int(h[0]),
                "humidity": round(h[1] / h[0], 3),
                "above_s": round(h[2], 1),
                "actuations": int(h[3]),
                "open_s": round(h[4], 1),
            }
            for k, h in sorted(self.hours.items())
        ]


METERS: dict[str, Any] = {"thermostat": ThermostatMeter, "shirt": ShirtMeter}


def run(work: Path, spec: dict[str, Any]) -> dict[str, Any]:
    from gateway.broker import BrokerUrl
    from gateway.provision import make_config

    board = spec["board"]
    offset = int(spec.get("utc_offset_min", 0))
    start, end, step = float(spec["start"]), float(spec["end"]), float(spec["step_s"])
    clock = _Clock(start)
    plant = make_plant(spec["plant"], spec["initial"], offset)
    plant.advance(start)
    config = make_config("twin", board, BrokerUrl("127.0.0.1", 1), "twin")
    config["utc_offset_min"] = offset
    log: list[str] = []
    meter = METERS[spec["meter"]["kind"]](spec["meter"], offset)
    guard(work)
    hal = SimHal(board, plant, clock)  # type: ignore[arg-type]
    hal.plugged_in = {str(a) for a in spec.get("addons", [])}  # (those the device has: docs/protocol.md 13)
    dev = Device(
        config,
        hal,
        Store(str(work / "data")),
        str(work / FEATURES),
        importer=import_feature,
        client=_Link(),
        log=lambda d, m: log.append(m),
    )
    dev.boot()
    refused: list[str] = []
    for name in spec.get("disabled", []):
        if name in dev.features.manifests:
            dev.execute("feature.disable", {"feature": name})
    for name, values in sorted((spec.get("settings") or {}).items()):
        m = dev.features.manifests.get(name)
        if m is None:
            continue
        known = {k: v for k, v in values.items() if k in m.get("config", {})}
        if known:
            reply = dev.execute("config.set", {"feature": name, "values": known})
            if not reply.get("ok"):
                refused.append(f"{name}: {reply.get('error', {}).get('message')}")
    commands = sorted(spec.get("commands", []), key=lambda c: c["t"])
    i = 0

    def replay(until: float) -> None:
        nonlocal i
        while i < len(commands) and commands[i]["t"] <= until:
            c = commands[i]
            i += 1
            reply = dev.execute(c["op"], c["args"])
            if not reply.get("ok") and c["op"] != "config.set":
                refused.append(f"{c['op']}: {reply.get('error', {}).get('message')}")

    replay(start)
    n = int((end - start) // step)
    on_before = getattr(plant, "on_s", 0.0)
    for k in range(1, n + 1):
        t = start + k * step
        replay(t)
        clock.t = t
        dev.sample()
        plant.advance(t)
        on_now = getattr(plant, "on_s", 0.0)
        meter.add(t - step, step, plant, on_now - on_before, dev.actuators)
        on_before = on_now
    errors = [m for m in log if m.startswith("feature_error")]
    status = dev.features.status()
    return {
        "ok": True,
        "steps": n,
        "hours": meter.result(),
        "features": status,
        "errors": errors,
        "refused": refused,
    }


# Modules a feature may well import, loaded before the runner gives up root
# (where the interpreter's library is readable by root alone, nobody could
# not load them later).
PRELOAD = (
    "math",
    "json",
    "time",
    "random",
    "struct",
    "re",
    "collections",
    "hashlib",
    "binascii",
    "errno",
    "io",
    "array",
    "heapq",
    "bisect",
    "functools",
    "itertools",
    "operator",
    "firmware.pb.startup",
    "firmware.pb.manifest",
    "firmware.pb.values",
    "firmware.pb.commands",
    "firmware.pb.configure",
    "firmware.pb.net.wire_in",
    "gateway.broker",
    "gateway.provision",
)


def drop_to(ids: str) -> None:
    """Become uid:gid for good (the gateway ran us as root)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    uid, gid = (int(x) for x in ids.split(":"))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise SystemExit("could not drop privileges")
    # and no process more: whatever goes around the audit hook cannot fork
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def main() -> int:
    work = Path.cwd()
    if len(sys.argv) == 3 and sys.argv[1] == "--user":
        drop_to(sys.argv[2])
    try:
        spec = json.loads((work / INPUT).read_text())
        answer = run(work, spec)
    except MemoryError:
        answer = {"ok": False, "error": "the feature set ran out of memory"}
    except Exception as exc:  # noqa: BLE001 - told to the gateway, which says it
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {tb[-1].filename.rsplit('/', 2)[-1]}:{tb[-1].lineno}" if tb else ""
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500] + where}
    sys.stdout.write("\n" + json.dumps(answer, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return 0 if answer.get("ok") else 3


if __name__ == "__main__":
    sys.exit(main())
