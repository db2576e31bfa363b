"""The gateway at fleet scale: 10,000 virtual devices through one Mosquitto
to one gateway, and an update of 1,000 of them at once, each against a
baseline measured in the same run.

    .venv/bin/python -m benchmarks fleet                  # 10,000 devices, 1,000 updated
    .venv/bin/python -m benchmarks fleet --devices 200 --update-devices 20   # a quick check

Everything is real and a process of its own, as in production: a Mosquitto
started here (its own config on a free loopback port, no connection limit,
the file limit raised to the hard limit), the gateway as `permabeta gateway
run` (through a thin wrapper that can switch cProfile on and off with
SIGUSR1/SIGUSR2), and the fleet (simulator.fleet.Fleet: the firmware's own
runtime under CPython, half thermostats, half shirts) in one process or
split across several (--fleet-procs).

Scale: the time until the gateway has every device online (and, for
comparison, until the broker has delivered every device's birth), then
telemetry rows stored per second in the gateway's SQLite over steady
windows at rising offered loads (devices' telemetry period 10 s, then
shorter), each against a bare paho subscriber to the same stream over the
same window; the fleet's RSS per device. Update: the thermostats take a
release whose new files are ~32 KB of incompressible data, offered to all
at once through the gateway's API; the OTA bytes per second against raw
QoS 0 throughput of 1 KB publishes (socket -> Mosquitto -> paho) through
the same broker. CPU time per process over each window names the busiest
process; cProfile over a separate window (scale) and a second, profiled
update round names its functions. Figures go to bench-results/fleet.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import ctypes
import getpass
import json
import os
import pstats
import random
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gateway.broker import GATEWAY_USER, MosquittoProcess, free_port, mosquitto_config, password_line

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "fleet.json"
GATEWAY_PASSWORD = "gateway-secret"
# each its own user: the broker takes a client's id from its user name, so a
# second connection under one name would throw the first off (and a bare
# paho client does not subscribe again when it reconnects)
BENCH_USERS = ("bench-sub", "bench-pub", "bench-raw")
DEVICE_PASSWORD = "bench-device-secret"  # every device's (a hash per user in the password file)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# ---- sizes and defaults ----------------------------------------------------------------

DEVICES = 10_000
UPDATE_DEVICES = 1_000
TELEMETRY_S = 10.0
LOADS = (10.0, 5.0, 2.5, 1.25)  # telemetry periods of the steady windows (s)
WINDOW_S = 20.0
RELEASE_KB = 32
RAW_S = 3.0
RAW_PAYLOAD = 1024
ONLINE_TIMEOUT_S = 600.0
UPDATE_TIMEOUT_S = 900.0
PROFILE_S = 10.0
TOP = 12  # functions kept per profile
FLUSH_S = 0.5  # the gateway writes buffered telemetry this often (Gateway.flush_interval)
# waiting for I/O or a lock: idle, left out of the profiles' busy time
_IDLE = ("'poll' of 'select.epoll'", "'select' of 'select", "'acquire' of '_thread.lock'")


# ---- processes ---------------------------------------------------------------------------


def _child_setup() -> None:
    """In a child before exec: the most file descriptors allowed, and death
    with the benchmark (PR_SET_PDEATHSIG) so nothing outlives it."""
    _raise_nofile()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def _stop_process(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, wait: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Broker(MosquittoProcess):
    """Mosquitto with the product's configuration (gateway/broker.py: passwords,
    ACLs) and no connection limit; every device in the password file."""

    def __init__(
        self,
        directory: Path,
        devices: Sequence[str],
        accounts: Sequence[str] = BENCH_USERS,
        hosts: Sequence[str] = ("127.0.0.1",),
    ) -> None:
        port = free_port()
        # the same port on more loopback addresses: one address pair holds only
        # about 28,000 connections (the ephemeral ports), so a large fleet's
        # shards connect to different ones
        more = "".join(f"listener {port} {h}\nuse_username_as_clientid true\n" for h in hosts[1:])
        self.files = mosquitto_config(
            directory,
            port,
            # the bare subscriber and publisher have accounts of their own (with the gateway's
            # rights): a client's id is its user name, one account is one connection
            users={GATEWAY_USER: GATEWAY_PASSWORD, **dict.fromkeys(accounts, GATEWAY_PASSWORD)},
            operators=accounts,
            run_as=getpass.getuser(),
            extra=more + "max_connections -1",
        )
        # one hash for every device: 10,000 PBKDF2 rounds would only add time
        line = password_line("x", DEVICE_PASSWORD).split(":", 1)[1]
        with self.files.passwords.open("a") as f:
            f.writelines(f"{d}:{line}\n" for d in devices)
        super().__init__(self.files.conf, port, directory / "mosquitto.log", preexec_fn=_child_setup)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class GatewayProc:
    """`permabeta gateway run` (gateway.cli.main) in its own process, with
    cProfile switched on by SIGUSR1 and dumped by SIGUSR2 (see _gateway_child)."""

    def __init__(self, broker: Broker, work: Path, keys: Path | None) -> None:
        self.db = work / "gateway.db"
        self.log = work / "gateway.log"
        self.profile = work / "gateway.prof"
        url = f"mqtt://gateway:{GATEWAY_PASSWORD}@127.0.0.1:{broker.port}"
        args = ["gateway", "run", "--broker", url, "--db", str(self.db), "--api", "127.0.0.1:0"]
        args += ["--client-id", f"bench-gw-{os.getpid()}"]
        if keys is not None:
            args += ["--keys", str(keys)]
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.api: Any = None
        self._db: sqlite3.Connection | None = None

    def start(self) -> GatewayProc:
        from gateway.client import ApiClient

        env = dict(os.environ, PB_BENCH_PROFILE=str(self.profile))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.fleet_scale", "_gateway", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup,
                cwd=ROOT,
                env=env,
            )
        deadline = time.monotonic() + 30
        while "API http" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.api = ApiClient.from_db(self.db)
        return self

    def stats(self) -> dict[str, Any]:
        return dict(self.api.request("GET", "/api/v1/stats"))

    def rows(self) -> int:
        """Rows in the telemetry table (its largest rowid: no scan)."""
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, isolation_level=None)
        row = self._db.execute("SELECT max(rowid) FROM telemetry").fetchone()
        return int(row[0] or 0)

    def rows_received(self, after_rowid: int, t0: float, t1: float) -> int:
        """Telemetry rows the gateway received (its clock) in [t0, t1)."""
        self.rows()
        assert self._db is not None
        q = "SELECT count(*) FROM telemetry WHERE rowid > ? AND received >= ? AND received < ?"
        return int(self._db.execute(q, (after_rowid, t0, t1)).fetchone()[0])

    def profile_start(self) -> None:
        assert self.proc is not None
        self.profile.unlink(missing_ok=True)
        os.kill(self.proc.pid, signal.SIGUSR1)

    def profile_stop(self) -> dict[str, Any]:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not self.profile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # dump_stats writes in one go; let it finish
        return top_functions(self.profile)

    def samples(self) -> dict[str, Any]:
        """What the stack sampler saw since the last call (SIGHUP)."""
        assert self.proc is not None
        path = Path(str(self.profile) + ".samples")
        path.unlink(missing_ok=True)
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return dict(json.loads(path.read_text()))
            time.sleep(0.05)
        return {"error": "no samples written"}

    def stop(self) -> None:
        if self._db is not None:
            self._db.close()
        _stop_process(self.proc, signal.SIGINT, 20)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class FleetProc:
    """A fleet of virtual devices in its own process (_fleet_child), driven
    by JSON lines on stdin; it answers with JSON lines on stdout."""

    def __init__(self, index: int, spec: dict[str, Any], work: Path) -> None:
        self.index = index
        self.log = work / f"fleet-{index}.log"
        self.profile = work / f"fleet-{index}.prof"
        spec = spec | {"workdir": str(work / f"devices-{index}")}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.fleet_scale", "_fleet", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=_child_setup,
                cwd=ROOT,
                text=True,
                bufsize=1,
            )

    def send(self, cmd: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float = 600) -> dict[str, Any]:
        """The next line, which must be this event. Raises RuntimeError."""
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, timeout)
        if not line:
            raise RuntimeError(f"fleet {self.index} exited: {self.log.read_text()[-3000:]}")
        msg: dict[str, Any] = json.loads(line)
        if msg.get("event") != event:
            raise RuntimeError(f"fleet {self.index}: expected {event}, got {msg}")
        return msg

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("stop")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid


def _readline(f: IO[str], timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(f.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise RuntimeError(f"no answer from a fleet within {timeout:g} s")
    return out[0]


def fleet_ids(procs: int, models: dict[str, int], index: int) -> list[str]:
    """The ids of fleet process `index` of `procs`, as Fleet names them."""
    ids = []
    for model, count in models.items():
        share = count // procs + (1 if index < count % procs else 0)
        ids += [f"{_prefix(model, index)}-{i}" for i in range(1, share + 1)]
    return ids


def _prefix(model: str, index: int) -> str:
    return f"{model[:2]}{index}"


class StackSampler:
    """A sampling profiler of one thread: every `every` seconds, the function
    it is in (own) and every function on its stack (cumulative). Light
    enough to leave on while a phase is timed, unlike cProfile."""

    def __init__(self, thread_id: int, every: float = 0.01) -> None:
        self.thread_id = thread_id
        self.every = every
        self.own: dict[str, int] = {}
        self.cum: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StackSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-sampler")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            frame = sys._current_frames().get(self.thread_id)
            if frame is None:
                continue
            self.samples += 1
            top = _frame_name(frame)
            self.own[top] = self.own.get(top, 0) + 1
            seen = set()
            while frame is not None:
                name = _frame_name(frame)
                if name not in seen:
                    seen.add(name)
                    self.cum[name] = self.cum.get(name, 0) + 1
                frame = frame.f_back

    def stop(self) -> dict[str, Any]:
        """The busiest functions: own and cumulative shares of the samples;
        the idle loop (the selector's wait) counts as idle."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        idle = sum(n for f, n in self.own.items() if f.endswith("(select)"))
        n = self.samples or 1

        def top(d: dict[str, int], project: bool) -> list[dict[str, Any]]:
            rows = [(f, c) for f, c in d.items() if not f.endswith("(select)")]
            if project:
                rows = [(f, c) for f, c in rows if f.split(":")[0].split("/")[0] in _PROJECT]
            return [
                {"function": f, "share": round(c / n, 4)} for f, c in sorted(rows, key=lambda x: -x[1])[:TOP]
            ]

        out = {
            "samples": self.samples,
            "busy": round(1 - idle / n, 4),
            "own_time": top(self.own, False),
            "cumulative": top(self.cum, True),
        }
        self.own, self.cum, self.samples = {}, {}, 0
        return out


_PROJECT = ("gateway", "firmware", "simulator", "ota")


def _frame_name(frame: Any) -> str:
    code = frame.f_code
    return f"{_short(code.co_filename)}:{code.co_firstlineno}({code.co_name})"


def _short(file: str) -> str:
    for base in (str(ROOT) + "/", "/site-packages/", "/lib/python3"):
        if base in file:
            return file.split(base, 1)[1]
    return file


# ---- the children ------------------------------------------------------------------------


def _gateway_child(argv: list[str]) -> int:
    """gateway.cli.main(argv) with cProfile on SIGUSR1 and a dump to
    $PB_BENCH_PROFILE on SIGUSR2 (the handlers run on the loop's thread)."""
    from gateway.cli import main as cli_main

    prof = cProfile.Profile()
    path = os.environ["PB_BENCH_PROFILE"]

    def on(*_: Any) -> None:
        prof.enable()

    def off(*_: Any) -> None:
        prof.disable()
        prof.dump_stats(path)

    sampler = StackSampler(threading.get_ident()).start()

    def samples(*_: Any) -> None:
        Path(path + ".samples").write_text(json.dumps(sampler.stop()))
        sampler.start()

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    signal.signal(signal.SIGHUP, samples)
    return cli_main(argv)


def _period(d: Any, ms: int) -> None:
    """Set a virtual device's telemetry period (and sampling with it), now
    and for its next boot."""
    d.config["telemetry_ms"] = d.config["sample_ms"] = ms
    if d.device is not None:
        d.device.telemetry_ms = d.device.sample_ms = ms


def _fleet_child(spec: dict[str, Any]) -> int:
    import asyncio
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gateway.broker import BrokerUrl
    from simulator.fleet import Fleet

    def say(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def reader() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
            loop.call_soon_threadsafe(commands.put_nowait, {"cmd": "stop"})

        threading.Thread(target=reader, daemon=True, name="fleet-commands").start()
        rss0 = rss_bytes(os.getpid())
        t0 = time.monotonic()
        index = spec["index"]
        fleet = Fleet(
            BrokerUrl(spec.get("host", "127.0.0.1"), spec["port"]),
            Path(spec["workdir"]),
            models={m: n for m, n in spec["models"].items() if n},
            seed=index,
            telemetry_s=spec["telemetry_s"],
            sample_s=spec["sample_s"],
            prefix={m: _prefix(m, index) for m in spec["models"]},
            root=base64.b64decode(spec["root"]) if spec.get("root") else None,
            trial_s=spec.get("trial_s"),
            in_memory=spec.get("in_memory", False),
        )
        for d in fleet.devices:
            d.config["broker"]["password"] = DEVICE_PASSWORD
        say("built", n=len(fleet.devices), rss_before=rss0, rss_built=rss_bytes(os.getpid()),
            build_s=time.monotonic() - t0)  # fmt: skip
        task: asyncio.Task[None] | None = None
        prof = cProfile.Profile()
        sampler = StackSampler(threading.get_ident())
        while True:
            cmd = await commands.get()
            op = cmd["cmd"]
            if op == "run":
                task = asyncio.create_task(fleet.run(), name="bench-fleet")
                say("running")
            elif op == "rate":
                ms = int(cmd["telemetry_s"] * 1000)
                if cmd.get("spread"):
                    # a period of its own (T..2T) for two long periods: every
                    # device's telemetry then falls at its own phase of T
                    rnd = random.Random(index)
                    for d in fleet.devices:
                        _period(d, ms + rnd.randrange(ms))
                    await asyncio.sleep(4 * ms / 1000)
                for d in fleet.devices:
                    _period(d, ms)
                say("rate")
            elif op == "sample":
                if cmd["on"]:
                    sampler.start()
                    say("sample")
                else:
                    say("sample", profile=sampler.stop())
            elif op == "profile":
                if cmd["on"]:
                    prof.enable()
                else:
                    prof.disable()
                    prof.dump_stats(cmd["path"])
                say("profile")
            elif op == "stop":
                fleet.stop()
                if task is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(task, 20)
                say("stopped")
                return

    asyncio.run(run())
    return 0


# ---- watching the broker -----------------------------------------------------------------


class Subscriber:
    """A bare paho subscriber (the gateway's user, its own client id): counts
    telemetry, notes when each device's state and update status arrive."""

    def __init__(self, port: int, topics: list[tuple[str, int]], user: str = "bench-sub") -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.telemetry = 0
        self.bytes = 0
        self.online: dict[str, float] = {}
        self.status: dict[str, dict[str, float]] = {}  # device -> state -> first arrival
        self.status_bytes: dict[str, int] = {}  # device -> bytes of its last downloading status
        self.lock = threading.Lock()
        ready = threading.Event()
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{secrets.token_hex(3)}", protocol=paho.MQTTv311
        )
        self.c.username_pw_set(user, GATEWAY_PASSWORD)
        self.c.on_connect = lambda *a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the bare subscriber could not connect")
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topics)
        if not done.wait(10):
            raise RuntimeError("the bare subscriber could not subscribe")

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        topic: str = m.topic
        if topic.endswith("/telemetry"):
            self.telemetry += 1
            self.bytes += len(m.payload)
            return
        dev = topic.split("/")[1]
        if topic.endswith("/state"):
            if b'"online"' in m.payload:
                self.online.setdefault(dev, time.monotonic())
            return
        with contextlib.suppress(ValueError):
            msg = json.loads(m.payload)
            with self.lock:
                self.status.setdefault(dev, {}).setdefault(msg.get("state"), time.monotonic())

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# ---- measuring ---------------------------------------------------------------------------


@dataclass
class Cpu:
    """CPU seconds of the named processes between start() and stop()."""

    pids: dict[str, int]
    t0: float = 0.0
    start_s: dict[str, float] = field(default_factory=dict)

    def start(self) -> Cpu:
        self.t0 = time.monotonic()
        self.start_s = {n: cpu_s(p) for n, p in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        """Each process's share of one core over the interval (1.0: a core busy)."""
        dt = time.monotonic() - self.t0
        return {n: round((cpu_s(p) - self.start_s[n]) / dt, 3) for n, p in self.pids.items()}


def slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares rate (per second) of a counter sampled as (t, value)."""
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    num = sum((t - mt) * (v - mv) for t, v in samples)
    den = sum((t - mt) ** 2 for t, _ in samples)
    return num / den if den else 0.0


def top_functions(path: Path) -> dict[str, Any]:
    """The functions a cProfile dump spent most time in (own time), and the
    share of all profiled time each took."""
    if not path.exists():
        return {"error": "no profile written"}
    st = pstats.Stats(str(path))
    raw: dict[Any, Any] = {
        k: v
        for k, v in st.stats.items()  # type: ignore[attr-defined]
        if not any(w in k[2] for w in _IDLE)
    }
    total = sum(v[2] for v in raw.values()) or 1.0
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:TOP]
    cum = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)

    def name(key: tuple[str, int, str]) -> str:
        file, line, func = key
        return f"{_short(file)}:{line}({func})" if line else func

    return {
        "profiled_s": round(total, 3),
        "own_time": [
            {"function": name(k), "share": round(v[2] / total, 4), "calls": v[1], "s": round(v[2], 3)}
            for k, v in rows
        ],
        # where time goes, including callees: the project's functions only
        "cumulative": [
            {"function": name(k), "share": round(v[3] / total, 4), "calls": v[1]}
            for k, v in cum
            if str(ROOT) in k[0] and "/.venv/" not in k[0] and "benchmarks/" not in k[0]
        ][:TOP],
    }


@dataclass
class Session:
    """A broker, a gateway and fleet processes of one phase; stopped on exit."""

    work: Path
    broker: Broker
    gateway: GatewayProc
    fleets: list[FleetProc]
    sub: Subscriber | None = None

    def pids(self) -> dict[str, int]:
        out = {"broker": self.broker.pid, "gateway": self.gateway.pid}
        for f in self.fleets:
            out[f"fleet{f.index}" if len(self.fleets) > 1 else "fleet"] = f.pid
        out["bench (bare subscriber)"] = os.getpid()
        return out

    def fleet_cmd(self, cmd: str, event: str, timeout: float = 120, **args: Any) -> list[dict[str, Any]]:
        for f in self.fleets:
            f.send(cmd, **args)
        return [f.expect(event, timeout) for f in self.fleets]

    def profile(self, seconds: float | None, until: Callable[[], bool] | None = None) -> dict[str, Any]:
        """cProfile in the gateway and every fleet for `seconds` or until `until()`."""
        self.gateway.profile_start()
        self.fleet_cmd("profile", "profile", on=True)
        t0 = time.monotonic()
        while (seconds is not None and time.monotonic() - t0 < seconds) or (
            until is not None and not until()
        ):
            time.sleep(0.2)
        out = {"seconds": round(time.monotonic() - t0, 1), "gateway": self.gateway.profile_stop()}
        for f in self.fleets:
            f.send("profile", on=False, path=str(f.profile))
            f.expect("profile")
            out[f"fleet{f.index}"] = top_functions(f.profile)
        return out


@contextlib.contextmanager
def session(
    work: Path, spec: dict[str, Any], procs: int, keys: Path | None, topics: list[tuple[str, int]]
) -> Iterator[Session]:
    work.mkdir(parents=True)
    models: dict[str, int] = spec["models"]
    ids = [i for k in range(procs) for i in fleet_ids(procs, models, k)]
    hosts = [f"127.0.0.{1 + h}" for h in range(spec.get("hosts", 1))]
    broker = Broker(work / "mosquitto", ids, hosts=hosts)
    broker.start()
    gw: GatewayProc | None = None
    fleets: list[FleetProc] = []
    sub = None
    try:
        gw = GatewayProc(broker, work, keys).start()
        sub = Subscriber(broker.port, topics)
        for k in range(procs):
            share = {m: n // procs + (1 if k < n % procs else 0) for m, n in models.items()}
            host = hosts[k % len(hosts)]
            fleets.append(
                FleetProc(k, spec | {"index": k, "port": broker.port, "host": host, "models": share}, work)
            )
        yield Session(work, broker, gw, fleets, sub)
    finally:
        for f in fleets:
            f.stop()
        if sub is not None:
            sub.close()
        if gw is not None:
            gw.stop()
        broker.stop()


def _wait(what: str, done: Callable[[], bool], timeout: float, every: float = 0.25) -> float:
    t0 = time.monotonic()
    while not done():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(every)
    return time.monotonic()


# ---- 1. scale ----------------------------------------------------------------------------


def measure_scale(work: Path, a: argparse.Namespace) -> dict[str, Any]:
    n = a.devices
    models = {"thermostat": n - n // 2, "shirt": n // 2}
    spec = {
        "models": models,
        "telemetry_s": a.loads[0],
        "sample_s": a.loads[0],
        "in_memory": not a.flash_dir,
        "hosts": a.hosts,
    }
    topics = [("pb/+/telemetry", 0), ("pb/+/state", 1)]
    with session(work, spec, a.fleet_procs, None, topics) as s:
        assert s.sub is not None
        built = [f.expect("built", 900) for f in s.fleets]
        out: dict[str, Any] = {
            "devices": n,
            "models": models,
            "fleet_procs": a.fleet_procs,
            "flash": "folders" if a.flash_dir else "memory",
            "broker_hosts": a.hosts,
            "build_s": round(max(b["build_s"] for b in built), 1),
        }
        print(f"  {n} devices built in {out['build_s']} s; connecting", flush=True)
        cpu = Cpu(s.pids()).start()
        s.gateway.samples()  # from now on
        s.fleet_cmd("sample", "sample", on=True)
        t0 = time.monotonic()
        s.fleet_cmd("run", "running")
        online = 0

        def all_online() -> bool:
            nonlocal online
            online = int(s.gateway.stats()["online"])
            return bool(online >= n)

        t_gw = _wait("every device online at the gateway", all_online, a.online_timeout)
        t_broker = max(s.sub.online.values()) if len(s.sub.online) >= n else float("nan")
        out["connect"] = {
            "all_online_at_gateway_s": round(t_gw - t0, 2),
            "all_online_at_broker_s": round(t_broker - t0, 2),  # last birth the bare subscriber saw
            "per_s_at_gateway": round(n / (t_gw - t0), 1),
            "cpu_cores": cpu.stop(),
            "sampled": {"gateway": s.gateway.samples()}
            | {
                f"fleet{f.index}": r["profile"]
                for f, r in zip(s.fleets, s.fleet_cmd("sample", "sample", on=False), strict=True)
            },
        }
        print(f"  all online at the gateway after {t_gw - t0:.1f} s", flush=True)
        rss = [rss_bytes(f.pid) for f in s.fleets]
        out["memory"] = {
            "rss_before_bytes": sum(b["rss_before"] for b in built),
            "rss_built_bytes": sum(b["rss_built"] for b in built),
            "rss_online_bytes": sum(rss),
            "per_device_built_bytes": round(sum(b["rss_built"] - b["rss_before"] for b in built) / n),
            "per_device_online_bytes": round(
                sum(r - b["rss_before"] for r, b in zip(rss, built, strict=True)) / n
            ),
        }
        out["loads"] = []
        # the fleet's devices all booted in the same instant, so their
        # telemetry comes in one burst per period; real devices power on at
        # random times: spread the phases first
        print("  spreading the devices' telemetry over its period", flush=True)
        s.fleet_cmd("rate", "rate", 300, telemetry_s=a.loads[0], spread=True)
        for period in a.loads:
            if period != a.loads[0]:
                s.fleet_cmd("rate", "rate", telemetry_s=period)
            time.sleep(period + 3)  # every device on the new period
            step = steady(s, n, period, a.window)
            out["loads"].append(step)
            print(
                f"  telemetry every {period:g} s (offered {n / period:.0f} msg/s): broker delivered "
                f"{step['bare_msgs_per_s']:.0f}/s, gateway stored {step['gateway_rows_per_s']:.0f}/s "
                f"(x{step['ingest_vs_bare']:.3f}); cpu {step['cpu_cores']}",
                flush=True,
            )
        mem = out["memory"]
        mem["rss_steady_bytes"] = sum(rss_bytes(f.pid) for f in s.fleets)
        mem["per_device_steady_bytes"] = round(
            sum(rss_bytes(f.pid) - b["rss_before"] for f, b in zip(s.fleets, built, strict=True)) / n
        )
        if not a.no_profile:
            print(f"  profiling the gateway and the fleet for {a.profile_s:g} s", flush=True)
            out["profile"] = s.profile(a.profile_s)
            out["profile"]["telemetry_s"] = a.loads[-1]
        out["bottleneck"] = scale_bottleneck(out)
        out["gateway_stats"] = s.gateway.stats()
    return out


def steady(s: Session, n: int, period: float, window: float) -> dict[str, Any]:
    """Telemetry rows the gateway stored with a receive time inside the
    window, and messages the bare subscriber got over the same window, per
    second. The window is a whole number of telemetry periods: the devices'
    bursts fall alike at both ends."""
    assert s.sub is not None
    window = max(1, round(window / period)) * period
    cpu = Cpu(s.pids()).start()
    first_row = s.gateway.rows()
    w0, b0 = time.time(), s.sub.telemetry
    time.sleep(window)
    w1, b1 = time.time(), s.sub.telemetry
    cores = cpu.stop()
    time.sleep(2 * FLUSH_S)  # rows received in the window are in the table by now
    rows = s.gateway.rows_received(first_row - 2 * n, w0, w1)
    r, b = rows / (w1 - w0), (b1 - b0) / (w1 - w0)
    return {
        "telemetry_s": period,
        "offered_msgs_per_s": n / period,
        "window_s": round(w1 - w0, 2),
        "bare_msgs_per_s": round(b, 1),
        "gateway_rows_per_s": round(r, 1),
        "ingest_vs_bare": round(r / b, 4) if b else None,
        "bare_vs_offered": round(b * period / n, 4),
        "cpu_cores": cores,
        "cpu_total_cores": round(sum(cores.values()), 2),
    }


def _busiest(cores: dict[str, float]) -> tuple[str, float]:
    name = max(cores, key=lambda k: cores[k])
    return name, cores[name]


def _top(profile: dict[str, Any] | None, proc: str, k: int = 5) -> list[str]:
    if not profile:
        return []
    p = profile.get(proc if proc in profile else "fleet0", {})
    return [f"{f['function']} {f['share'] * 100:.0f}%" for f in p.get("own_time", [])[:k]]


def scale_bottleneck(out: dict[str, Any]) -> dict[str, Any]:
    """Which process limits ingest: the gateway if it stores less than the
    broker delivers; else what holds the offered load back (the fleet or
    broker short of its nominal rate, or the machine's cores all busy)."""
    last = out["loads"][-1]
    cores: dict[str, float] = last["cpu_cores"]
    ncpu = os.cpu_count() or 1
    if last["ingest_vs_bare"] is not None and last["ingest_vs_bare"] < 0.95:
        proc, why = "gateway", "it stored fewer rows than the broker delivered to a bare subscriber"
    else:
        proc, _ = _busiest({k: v for k, v in cores.items() if k != "bench (bare subscriber)"})
        why = (
            f"the busiest process at the highest load; the broker delivered "
            f"{last['bare_vs_offered'] * 100:.0f}% of the nominal offered load"
        )
    if last["cpu_total_cores"] > 0.9 * ncpu:
        why += f"; the machine's {ncpu} cores were all busy ({last['cpu_total_cores']:.2f} cores)"
    prof = out.get("profile")
    key = "fleet" if proc.startswith("fleet") else proc
    return {
        "process": proc,
        "cpu_cores": cores.get(proc),
        "why": why,
        "at_telemetry_s": last["telemetry_s"],
        "top_functions": _top(prof, key if key != "fleet" else "fleet0"),
        "ceiling_rows_per_s": max(step["gateway_rows_per_s"] for step in out["loads"]),
    }


# ---- 2. fleet update ---------------------------------------------------------------------


def tables_feature(into: Path, kbytes: int, seed: int) -> list[Path]:
    """thermostat (as shipped) and eco carrying kbytes of incompressible tables."""
    from gateway.paths import firmware_dir

    fw = firmware_dir() / "features"
    eco = into / "eco"
    shutil.copytree(fw / "eco", eco, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (eco / "tables").mkdir()
    rnd = random.Random(seed)
    for i in range(4):
        (eco / "tables" / f"t{i}.bin").write_bytes(rnd.randbytes(kbytes * 1024 // 4))
    return [fw / "thermostat", eco]


def raw_throughput(port: int, seconds: float, payload: int) -> dict[str, Any]:
    """QoS 0 publishes of `payload` bytes, pre-encoded on a plain socket as
    fast as Mosquitto takes them, received by a paho subscriber: the bytes
    per second arriving over the middle of the run."""
    from firmware.pb.net import mqtt

    topic = f"pb/bench-raw-{secrets.token_hex(3)}/ota/chunk"
    sub = Subscriber(port, [(topic, 0)], "bench-raw")  # (beside the session's own subscriber)
    got = [0]
    sub.c.on_message = lambda c, u, m: got.__setitem__(0, got[0] + len(m.payload))
    body = os.urandom(payload)
    packet = bytes(mqtt.publish_header(topic, len(body))) + body
    batch = packet * 64
    stop = threading.Event()

    def publish() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                mqtt.connect(
                    f"bench-pub-{secrets.token_hex(3)}", 60, True, "bench-pub", GATEWAY_PASSWORD.encode()
                )
            )
            s.recv(4)
            while not stop.is_set():
                s.sendall(batch)
            s.sendall(mqtt.disconnect())

    t = threading.Thread(target=publish, daemon=True, name="bench-raw-pub")
    t.start()
    samples = []
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        if now - t0 > 0.5:
            samples.append((now, float(got[0])))
        time.sleep(0.1)
    stop.set()
    t.join(10)
    sub.close()
    rate = slope(samples)
    return {
        "payload_bytes": payload,
        "seconds": seconds,
        "bytes_per_s": round(rate),
        "msgs_per_s": round(rate / payload),
    }


def measure_update(work: Path, a: argparse.Namespace) -> dict[str, Any]:
    from gateway.archive import TAR_TYPE, pack_release
    from ota.keys import keygen
    from ota.release import build

    keys = keygen(work / "keys")
    releases = []
    for rnd in (1, 2):
        rel = build("thermostat", tables_feature(work / f"src{rnd}", a.release_kb, rnd), f"2.{rnd}.0",
                    work / f"release{rnd}", 100 + rnd, keys=keys)  # fmt: skip
        releases.append(rel)
    # what a virtual device (CPython: the .py form) lacks of the first release: eco
    lacking = sum(f.zsize for f in releases[0].files_for("py") if f.path.startswith("eco/"))
    n = a.update_devices
    spec: dict[str, Any] = {
        "models": {"thermostat": n},
        "telemetry_s": 60.0,
        "sample_s": 10.0,
        "root": base64.b64encode(keys.root_bytes).decode(),
        "trial_s": 0,
        "in_memory": not a.flash_dir,
        "hosts": a.hosts,
    }
    topics = [("pb/+/state", 1), ("pb/+/ota/status", 1)]
    out: dict[str, Any] = {
        "devices": n,
        "release_new_bytes": lacking,
        "release_files": len(releases[0].files),
    }
    with session(work / "session", spec, a.fleet_procs, keys.path, topics) as s:
        assert s.sub is not None
        ids = [i for f in s.fleets for i in fleet_ids(len(s.fleets), spec["models"], f.index)]
        for f in s.fleets:
            f.expect("built", 900)
        s.fleet_cmd("run", "running")
        _wait("every device online", lambda: int(s.gateway.stats()["online"]) >= n, a.online_timeout)
        time.sleep(2)
        print(f"  {n} thermostats online; raw broker throughput ...", flush=True)
        out["raw_broker"] = raw_throughput(s.broker.port, a.raw_s, RAW_PAYLOAD)
        print(
            f"  raw QoS 0 {RAW_PAYLOAD} B publishes: {out['raw_broker']['bytes_per_s'] / 1e6:.1f} MB/s",
            flush=True,
        )
        rounds = []
        for k, rel in enumerate(releases):
            profiled = k == 1 and not a.no_profile
            rid = str(s.gateway.api.upload("/api/v1/releases", pack_release(rel), TAR_TYPE)["id"])
            r = update_round(s, ids, rid, a, profiled)
            r["bytes_per_s_vs_raw"] = round(r["download_bytes_per_s"] / out["raw_broker"]["bytes_per_s"], 4)
            rounds.append(r)
            print(
                f"  round {k + 1}{' (profiled)' if profiled else ''}: {r['committed']}/{n} committed in "
                f"{r['all_committed_s']} s; downloads {r['download_bytes_per_s'] / 1e3:.0f} KB/s "
                f"(x{r['bytes_per_s_vs_raw']:.4f} raw); cpu {r['cpu_cores']}",
                flush=True,
            )
        out["rounds"] = rounds
        out.update({k: v for k, v in rounds[0].items() if k != "profile"})
        if not a.no_profile:
            out["profile"] = rounds[1].get("profile")
        out["bottleneck"] = update_bottleneck(rounds[0], out.get("profile"))
        out["gateway_stats"] = s.gateway.stats()
    return out


def update_round(
    s: Session, ids: list[str], rid: str, a: argparse.Namespace, profiled: bool
) -> dict[str, Any]:
    """Offer release rid to every device at once and follow them until every
    update has ended."""
    sub = s.sub
    assert sub is not None
    with sub.lock:
        sub.status.clear()
    cpu = Cpu(s.pids())
    n = len(ids)

    def count(state: str) -> int:
        with sub.lock:
            return sum(1 for st in sub.status.values() if state in st)

    def ended() -> bool:
        return sum(count(x) for x in ("committed", "failed", "rolled_back")) >= n

    def start(dev: str) -> str:
        return str(s.gateway.api.request("POST", f"/api/v1/devices/{dev}/update", {"release": rid})["id"])

    prof: dict[str, Any] = {}
    if profiled:
        s.gateway.profile_start()
        s.fleet_cmd("profile", "profile", on=True)
    cpu.start()
    t0, wall0 = time.monotonic(), time.time()
    with ThreadPoolExecutor(8) as pool:
        uids = list(pool.map(start, ids))
    t_offered = time.monotonic()
    t_staged = _wait("every device staged", lambda: count("staged") >= n or ended(), a.update_timeout, 0.1)
    cores = cpu.stop()
    if profiled:
        prof = {"seconds": round(t_staged - t0, 1), "gateway": s.gateway.profile_stop()}
        for f in s.fleets:
            f.send("profile", on=False, path=str(f.profile))
            f.expect("profile")
            prof[f"fleet{f.index}"] = top_functions(f.profile)
    _wait("every update ended", ended, a.update_timeout, 0.2)
    with sub.lock:
        status = {d: dict(st) for d, st in sub.status.items()}
    staged = [st["staged"] - t0 for st in status.values() if "staged" in st]

    def records_now() -> list[dict[str, Any]]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda u: s.gateway.api.request("GET", f"/api/v1/updates/{u}"), uids))

    # the bare subscriber sees a status before the gateway has applied it
    records = records_now()
    deadline = time.monotonic() + 30
    while not all(r["ended"] for r in records) and time.monotonic() < deadline:
        time.sleep(0.5)
        records = records_now()
    # the gateway's own record of when each update ended (wall clock)
    t_done = max((r["finished"] for r in records if r["state"] == "committed"), default=float("nan"))
    t_done = t_done - wall0 + t0
    got = sum(int(r["bytes"] or 0) for r in records)
    served = sum(int(r["served"] or 0) for r in records)
    download_s = max(staged) if staged else float("nan")
    staged.sort()
    out: dict[str, Any] = {
        "profiled": profiled,
        "offers_sent_s": round(t_offered - t0, 2),
        "all_staged_s": round(download_s, 2),
        "all_committed_s": round(t_done - t0, 2),
        "committed": sum(1 for r in records if r["state"] == "committed"),
        "failed": {r["device"]: f"{r['state']}: {r['reason']}" for r in records if r["state"] != "committed"},
        "staged_median_s": round(staged[len(staged) // 2], 2) if staged else None,
        "downloaded_bytes": got,
        "served_bytes": served,
        "requests": sum(int(r["requests"] or 0) for r in records),
        "download_bytes_per_s": round(got / download_s) if staged else 0,
        "cpu_cores": cores,
        "cpu_total_cores": round(sum(cores.values()), 2),
    }
    if len(out["failed"]) > 10:
        out["failed"] = dict(list(out["failed"].items())[:10]) | {"...": f"{len(out['failed'])} in all"}
    if profiled:
        out["profile"] = prof
    return out


def update_bottleneck(r: dict[str, Any], profile: dict[str, Any] | None) -> dict[str, Any]:
    cores = {k: v for k, v in r["cpu_cores"].items() if k != "bench (bare subscriber)"}
    proc, load = _busiest(cores)
    ncpu = os.cpu_count() or 1
    why = "the busiest process over the download phase"
    if r["cpu_total_cores"] > 0.9 * ncpu:
        why += f"; the machine's {ncpu} cores were all busy ({r['cpu_total_cores']:.2f} cores)"
    return {
        "process": proc,
        "cpu_cores": load,
        "why": why,
        "top_functions": _top(profile, "fleet0" if proc.startswith("fleet") else proc),
    }


# ---- report ------------------------------------------------------------------------------


def report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"\nmachine: {m['cpus']} cpus, {m['mem_total_mb']} MB; "
        f"Python {r['python']}; Mosquitto {m['mosquitto']}"
    )
    sc = r.get("scale")
    if sc:
        c = sc["connect"]
        print(
            f"scale: {sc['devices']} virtual devices in {sc['fleet_procs']} fleet process(es), "
            "one Mosquitto, one gateway"
        )
        print(
            f"  connect: all online at the gateway in {c['all_online_at_gateway_s']:.1f} s "
            f"({c['per_s_at_gateway']:.0f} devices/s); "
            f"births all through the broker at {c['all_online_at_broker_s']:.1f} s"
        )
        for proc, prof in c.get("sampled", {}).items():
            tops = ", ".join(f"{f['function']} {f['share'] * 100:.0f}%" for f in prof.get("own_time", [])[:4])
            print(f"    {proc} busy {prof.get('busy', 0) * 100:.0f}% of the connect phase: {tops}")
        for step in sc["loads"]:
            print(
                f"  ingest, telemetry every {step['telemetry_s']:g} s "
                f"({step['offered_msgs_per_s']:.0f} msg/s offered): {step['gateway_rows_per_s']:.0f} rows/s "
                f"stored  x{step['ingest_vs_bare']:.3f} a bare subscriber "
                f"({step['bare_msgs_per_s']:.0f} msg/s)"
            )
        mem = sc["memory"]
        print(
            f"  memory per virtual device: {mem['per_device_online_bytes'] / 1024:.1f} KiB online "
            f"({mem['per_device_built_bytes'] / 1024:.1f} KiB built, not connected; "
            f"{mem['per_device_steady_bytes'] / 1024:.1f} KiB after the windows)"
        )
        _print_bottleneck(sc["bottleneck"])
    up = r.get("update")
    if up:
        raw = up["raw_broker"]
        print(
            f"update: {up['devices']} thermostats, {up['release_new_bytes']} new bytes each, "
            "offered all at once"
        )
        print(
            f"  all committed in {up['all_committed_s']:.1f} s ({up['committed']}/{up['devices']}); "
            f"all staged in {up['all_staged_s']:.1f} s (median {up['staged_median_s']} s)"
        )
        print(
            f"  OTA: {up['download_bytes_per_s'] / 1e3:.1f} KB/s downloaded, x{up['bytes_per_s_vs_raw']:.4f} "
            f"raw broker throughput ({raw['bytes_per_s'] / 1e6:.1f} MB/s "
            f"of {raw['payload_bytes']} B QoS 0 publishes)"
        )
        _print_bottleneck(up["bottleneck"])


def _print_bottleneck(b: dict[str, Any]) -> None:
    print(f"  bottleneck: {b['process']} ({b['cpu_cores']} cores): {b['why']}")
    for f in b["top_functions"]:
        print(f"    {f}")


def machine() -> dict[str, Any]:
    mem = next(
        int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")
    )
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    ver = subprocess.run([exe, "-h"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"cpus": os.cpu_count(), "mem_total_mb": mem // 1024, "mosquitto": ver.split()[-1] if ver else "?"}


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks fleet", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--devices", type=int, default=DEVICES, help="virtual devices, half thermostats, half shirts"
    )
    p.add_argument("--update-devices", type=int, default=UPDATE_DEVICES, help="thermostats updated at once")
    p.add_argument("--fleet-procs", type=int, default=1, help="processes the fleet is split across")
    p.add_argument(
        "--hosts",
        type=int,
        default=0,
        help="loopback addresses the broker listens on, the fleet's processes spread over them "
        "(default: one per fleet process)",
    )
    p.add_argument(
        "--flash-dir",
        action="store_true",
        help="a folder on disk per device (default: each device's flash in RAM, simulator/memflash.py)",
    )
    p.add_argument(
        "--loads",
        type=lambda t: tuple(float(x) for x in t.split(",")),
        default=LOADS,
        help="telemetry periods (s) of the steady windows, comma-separated",
    )
    p.add_argument("--window", type=float, default=WINDOW_S, help="seconds of each steady window")
    p.add_argument("--release-kb", type=int, default=RELEASE_KB, help="KiB of incompressible new files")
    p.add_argument("--raw-s", type=float, default=RAW_S, help="seconds of the raw throughput baseline")
    p.add_argument("--profile-s", type=float, default=PROFILE_S)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--only", choices=("scale", "update"))
    p.add_argument("--online-timeout", type=float, default=ONLINE_TIMEOUT_S)
    p.add_argument("--update-timeout", type=float, default=UPDATE_TIMEOUT_S)
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_gateway"]:
        return _gateway_child(argv[1:])
    if argv[:1] == ["_fleet"]:
        return _fleet_child(json.loads(argv[1]))
    a = parse(argv)
    limit = _raise_nofile()
    need = max(a.devices, a.update_devices) + 100
    if limit < need:
        print(
            f"the file limit is {limit}; {need} are needed: one Mosquitto holds every device's "
            "connection (raise the hard limit, ulimit -Hn, which needs CAP_SYS_RESOURCE)",
            file=sys.stderr,
        )
        return 1
    a.hosts = a.hosts or a.fleet_procs
    # a SIGTERM unwinds like Ctrl-C: every process and folder is cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = {
        k: list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
        for k, v in vars(a).items()
    }
    results: dict[str, Any] = {"python": sys.version.split()[0], "machine": machine(), "args": args}
    with tempfile.TemporaryDirectory(prefix="pb-bench-fleet-") as tmp:
        work = Path(tmp)
        try:
            if a.only in (None, "scale"):
                print(f"scale: {a.devices} devices", flush=True)
                results["scale"] = measure_scale(work / "scale", a)
            if a.only in (None, "update"):
                print(f"update: {a.update_devices} thermostats", flush=True)
                results["update"] = measure_update(work / "update", a)
        except (RuntimeError, TimeoutError) as exc:
            print(f"fleet benchmark failed: {exc}", file=sys.stderr)
            for log in sorted(work.rglob("*.log")):
                print(
                    f"--- {log.relative_to(work)}:\n{log.read_text(errors='replace')[-1500:]}",
                    file=sys.stderr,
                )
            return 1
    report(results)
    a.out.parent.mkdir(exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {a.out.relative_to(ROOT) if a.out.is_relative_to(ROOT) else a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
