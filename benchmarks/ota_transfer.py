"""An over-the-air update of 64 KiB of new files, end to end: bytes on the
wire per byte of payload, and the time it takes, against the same bytes
sent as one raw MQTT publish through the same broker, measured in the same
run. The payload is every byte the device must receive for the update: the
offer (with its freshness statement), the manifest and the blobs it lacks.
The download is timed from the offer (its arrival at a subscriber of the
broker) to the last byte staged (the device's `staged` status), less the
time the device spent checking signatures (which its `staged` status
reports, `check_ms`, and which is reported apart). On the MicroPython unix
port at 128 KB the download runs in update mode, whose resets (into update
mode, and to check the manifest's signatures at boot) are part of it; the
stream of the blobs alone (from update mode's first `downloading` status to
`staged`) is reported beside it, against a raw publish of the blobs. Beside
them, the floor: the same exchange between two bare clients that do nothing
with what they receive (the offer, a request answered with the manifest's
bytes, a request answered with the blobs' as one message), which no update
that the device asks for can beat.

    .venv/bin/python -m benchmarks.ota_transfer

Everything is real: a Mosquitto started here, the gateway as its own process
(`permabeta gateway run --keys`) serving the chunks, and as the device the
device runtime itself: a virtual device (simulator/device.py, CPython, its
flash kept in RAM as the simulator keeps it: simulator/memflash.py) and,
if the micropython binary is there, a provisioned device folder on the
MicroPython unix port with a 128 KB heap. Wire bytes are counted by a TCP
proxy between the device and the broker (MQTT bytes both ways, headers,
acks and pings included); times are taken without the proxy. The release
adds the feature eco carrying 64 KiB of incompressible tables, so what the
device lacks is eco's files alone. Figures go to bench-results/ota.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import json
import os
import queue
import random
import secrets
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.archive import TAR_TYPE, pack_release
from gateway.broker import GATEWAY_USER, BrokerUrl, free_port, mosquitto_config
from gateway.client import ApiClient
from gateway.errors import ApiRequestError
from gateway.paths import firmware_dir
from gateway.provision import provision_into
from ota.keys import Keys, keygen
from ota.release import Release, build
from simulator.clock import SimClock
from simulator.device import VirtualDevice
from tests.support.mosquitto import GATEWAY_PASSWORD, OPERATORS, Mosquitto
from tests.support.ota import KeyedGatewayProcess
from tests.support.processes import SMALL_HEAP, DeviceProcess

from . import results

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "ota.json"
MICROPYTHON = Path(sys.executable).parent / "micropython"
NEW_BYTES = 64 * 1024
TABLES = 8  # files of NEW_BYTES / TABLES each
CPYTHON_RUNS = 3
MICROPYTHON_RUNS = 2
BASELINE_RUNS = 20
UPDATE_TIMEOUT_S = 120.0


class BenchBroker(Mosquitto):
    """The tests' Mosquitto (passwords, ACLs), taking packets up to 1 MiB
    (the raw publish of the baseline is larger than the 64 KiB it allows);
    with nodelay, its sockets do not wait to fill segments (TCP_NODELAY)."""

    def __init__(self, directory: Path, nodelay: bool = False) -> None:
        super().__init__(directory)
        self.files = mosquitto_config(
            directory,
            self.port,
            users={GATEWAY_USER: GATEWAY_PASSWORD, **dict.fromkeys(OPERATORS, GATEWAY_PASSWORD)},
            operators=OPERATORS,
            max_packet=1 << 20,
            run_as=getpass.getuser(),
            extra="set_tcp_nodelay true" if nodelay else "",
        )


# ---- the wire ------------------------------------------------------------------------


class CountingProxy:
    """A TCP proxy on loopback that counts the bytes it moves each way."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = 0  # client -> broker
        self.down = 0  # broker -> client
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def snapshot(self) -> tuple[int, int]:
        return self.up, self.down

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.transport.abort()
            return
        self._writers |= {w, uw}
        await asyncio.gather(self._pipe(r, uw, True), self._pipe(ur, w, False), return_exceptions=True)
        for x in (w, uw):
            self._writers.discard(x)
            x.transport.abort()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
        while data := await r.read(65536):
            if up:
                self.up += len(data)
            else:
                self.down += len(data)
            w.write(data)
            await w.drain()
        w.transport.abort()


class Watcher:
    """Every update status, state, hello and offer on the broker, with the
    time it arrived (paho, as the gateway's user) and the CPU time the
    benchmark's main thread had taken by then (where a virtual device runs)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.events: queue.Queue[tuple[float, str, str, dict[str, Any]]] = queue.Queue()
        self.main_cpu = time.pthread_getcpuclockid(threading.main_thread().ident or 0)
        self.c = _client(broker, f"bench-watch-{secrets.token_hex(3)}")
        self.c.on_message = self._on_message
        topics = [("pb/+/ota/status", 1), ("pb/+/state", 1), ("pb/+/ota/offer", 1), ("pb/+/hello", 1)]
        _subscribe(self.c, topics)

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        if not m.payload:
            return
        parts = m.topic.split("/")
        with contextlib.suppress(ValueError):
            msg = json.loads(m.payload)
            t = time.monotonic()
            if isinstance(msg, dict):
                msg["_bytes"] = len(m.payload)  # (what the device receives of it)
                msg["_t"] = t
                msg["_cpu"] = time.clock_gettime(self.main_cpu)
            self.events.put((t, parts[1], "/".join(parts[2:]), msg))

    def wait(self, want: Callable[[str, str, dict[str, Any]], bool], timeout: float) -> float:
        """The arrival time of the first message from now on that `want`
        accepts. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                t, dev, kind, msg = self.events.get(timeout=left)
            except queue.Empty:
                break
            if want(dev, kind, msg):
                return t
        raise TimeoutError("no such message in time")

    def drain(self) -> list[tuple[float, str, str, dict[str, Any]]]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.events.get_nowait())
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _client(broker: Mosquitto, client_id: str, port: int | None = None) -> paho.Client:
    connected = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    c.username_pw_set(*broker.operator())  # an account of its own: one account, one connection
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", port or broker.port, keepalive=60)
    c.loop_start()
    if not connected.wait(5):
        raise RuntimeError("a benchmark client could not connect to mosquitto")
    return c


def _subscribe(c: paho.Client, topics: list[tuple[str, int]]) -> None:
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(topics)
    if not done.wait(5):
        raise RuntimeError("a benchmark client could not subscribe")


# ---- the baseline: one raw publish ---------------------------------------------------


def _raw_topic() -> str:
    # shaped as a chunk's topic, and like chunks also seen by the gateway (it reads pb/#)
    return f"pb/bench-raw-{secrets.token_hex(3)}/ota/chunk"


def raw_publish(broker: Mosquitto, payload: bytes) -> float:
    """Seconds from a QoS 0 publish of payload (paho) to its arrival at a
    subscriber (paho) through the broker."""
    topic = _raw_topic()
    got = threading.Event()
    sub = _client(broker, f"bench-sub-{secrets.token_hex(3)}")
    sub.on_message = lambda *a: got.set()
    _subscribe(sub, [(topic, 0)])
    pub = _client(broker, f"bench-pub-{secrets.token_hex(3)}")
    try:
        t0 = time.perf_counter()
        pub.publish(topic, payload, qos=0)
        if not got.wait(10):
            raise RuntimeError("the raw publish did not arrive")
        return time.perf_counter() - t0
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()


async def baseline(broker: Mosquitto, payload: bytes) -> dict[str, Any]:
    times = [await asyncio.to_thread(raw_publish, broker, payload) for _ in range(BASELINE_RUNS)]
    proxy = await CountingProxy(broker.port).start()
    try:
        # the subscriber's link carries the publish, as the device's link would
        wire = await asyncio.to_thread(_counted_publish, broker, payload, proxy)
    finally:
        await proxy.stop()
    return {
        "payload_bytes": len(payload),
        "runs": BASELINE_RUNS,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "wire_bytes": wire,
        "wire_bytes_per_payload_byte": wire / len(payload),
    }


def asked_exchange(broker: Mosquitto, offer: int, manifest: int, blobs: int) -> float:
    """Seconds an update's exchange takes with nothing done at either end:
    a "gateway" client publishes an offer of offer bytes; a "device" client
    answers it with a request, the gateway answers with the manifest's
    bytes, the device asks again, the gateway publishes the blobs' bytes as
    one message, and the device has them (paho both, QoS 0, through the
    broker). Any update that offers, then sends what the device asks for,
    twice, costs at least this: the floor under the download's figure."""
    tag = secrets.token_hex(3)
    down, up = f"pb/bench-floor-{tag}/ota/chunk", f"pb/bench-floor-{tag}/ota/req"
    replies = [os.urandom(manifest), os.urandom(blobs)]
    done = threading.Event()
    dev = _client(broker, f"bench-dev-{tag}")
    gw = _client(broker, f"bench-gw-{tag}")
    got = [0]

    def on_device(c: Any, u: Any, m: Any) -> None:
        got[0] += 1
        if got[0] == 3:
            done.set()
        else:
            c.publish(up, b'{"v":2,"s":1,"objs":[["manifest",0,1]],"win":8,"chunk":4096}', qos=0)

    def on_gateway(c: Any, u: Any, m: Any) -> None:
        c.publish(down, replies.pop(0), qos=0)

    dev.on_message, gw.on_message = on_device, on_gateway
    _subscribe(dev, [(down, 0)])
    _subscribe(gw, [(up, 0)])
    try:
        t0 = time.perf_counter()
        gw.publish(down, os.urandom(offer), qos=0)
        if not done.wait(10):
            raise RuntimeError("the bare exchange did not end")
        return time.perf_counter() - t0
    finally:
        for c in (dev, gw):
            c.disconnect()
            c.loop_stop()


def _counted_publish(broker: Mosquitto, payload: bytes, proxy: CountingProxy) -> int:
    """Bytes the subscriber's link (through proxy) moves for one raw publish."""
    topic = _raw_topic()
    got = threading.Event()
    sub = _client(broker, f"bench-sub-{secrets.token_hex(3)}", proxy.port)
    sub.on_message = lambda *a: got.set()
    _subscribe(sub, [(topic, 0)])
    pub = _client(broker, f"bench-pub-{secrets.token_hex(3)}")
    try:
        up, down = proxy.snapshot()
        pub.publish(topic, payload, qos=0)
        if not got.wait(10):
            raise RuntimeError("the raw publish did not arrive")
        return proxy.up - up + proxy.down - down
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()


# ---- the update ----------------------------------------------------------------------


@dataclass
class Run:
    transfer_s: float  # offer on the broker -> staged, less check_s
    update_s: float  # offer on the broker -> committed (reset, install, reboot, reconnect, trial 0 s)
    check_s: float  # signature checks the device reported while downloading
    offer_bytes: int  # the offer's payload
    stream_s: float  # the first downloading status (the blobs' first request) -> staged
    resets: int = 0  # resets between the offer and staged (into update mode, to check at boot)
    reset_s: float = 0.0  # their time: the last word before each -> the hello after it
    cpu_s: float | None = None  # a virtual device's CPU time, offer -> staged, less check_s
    up: int | None = None  # device -> broker bytes, offer -> staged (with the proxy)
    down: int | None = None
    update_up: int | None = None  # offer -> committed
    update_down: int | None = None
    update_mode: bool = False


def eco_with_tables(into: Path) -> list[Path]:
    """thermostat (as shipped) and eco carrying NEW_BYTES of random tables."""
    fw = firmware_dir() / "features"
    eco = into / "eco"
    shutil.copytree(fw / "eco", eco, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (eco / "tables").mkdir()
    rnd = random.Random(7)
    for i in range(TABLES):
        (eco / "tables" / f"t{i}.bin").write_bytes(rnd.randbytes(NEW_BYTES // TABLES))
    return [fw / "thermostat", eco]


def lacking(release: Release) -> tuple[int, int]:
    """(compressed, content) bytes of the files a factory thermostat lacks: eco's."""
    eco = [f for f in release.files if f.path.startswith("eco/")]
    return sum(f.zsize for f in eco), sum(f.size for f in eco)


def _resets(trail: list[tuple[str, dict[str, Any]]]) -> tuple[int, float]:
    """(how many, seconds): the device's resets between the offer and staged,
    each from the last thing it said before it to the hello after it (the
    restart, the boot with what it checks there, the reconnect)."""
    n, s = 0, 0.0
    for (_, before), (kind, msg) in itertools.pairwise(trail):
        if kind == "hello":
            n += 1
            s += msg["_t"] - before["_t"]
    return n, s


class Bench:
    def __init__(self, work: Path, broker: Mosquitto, keys: Keys, gw: KeyedGatewayProcess) -> None:
        self.work = work
        self.broker = broker
        self.keys = keys
        self.api = ApiClient.from_db(gw.db)
        self.watch = Watcher(broker)

    def publish(self, release: Release) -> str:
        r = self.api.upload("/api/v1/releases", pack_release(release), TAR_TYPE)
        return str(r["id"])

    async def _start_update(self, dev: str, release_id: str) -> float:
        """Offer the release once the gateway knows the device online;
        the time just before the offer was asked for."""
        deadline = time.monotonic() + 20
        while True:
            t0 = time.monotonic()
            try:
                await asyncio.to_thread(
                    self.api.request, "POST", f"/api/v1/devices/{dev}/update", {"release": release_id}
                )
                return t0
            except ApiRequestError as exc:
                if exc.code not in ("unknown_device", "offline") or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _follow(self, dev: str, proxy: CountingProxy | None, base: tuple[int, int]) -> Run:
        trail: list[tuple[str, dict[str, Any]]] = []  # what the device said, in order

        def state(s: str, got: list[dict[str, Any]]) -> Callable[[str, str, dict[str, Any]], bool]:
            def want(d: str, kind: str, msg: dict[str, Any]) -> bool:
                if d == dev:
                    trail.append((kind, msg))
                if d == dev and kind == "ota/status" and msg.get("state") in ("failed", "rolled_back"):
                    raise RuntimeError(f"{dev}: update {msg['state']}: {msg.get('reason')}")
                if d == dev and (kind == s or (kind == "ota/status" and msg.get("state") == s)):
                    got.append(msg)
                    return True
                return False

            return want

        offer: list[dict[str, Any]] = []
        t_offer = await asyncio.to_thread(self.watch.wait, state("ota/offer", offer), UPDATE_TIMEOUT_S)
        dl: list[dict[str, Any]] = []
        t_dl = await asyncio.to_thread(self.watch.wait, state("downloading", dl), UPDATE_TIMEOUT_S)
        staged: list[dict[str, Any]] = []
        t_staged = await asyncio.to_thread(self.watch.wait, state("staged", staged), UPDATE_TIMEOUT_S)
        at_staged = proxy.snapshot() if proxy else (0, 0)
        t_done = await asyncio.to_thread(self.watch.wait, state("committed", []), UPDATE_TIMEOUT_S)
        done = proxy.snapshot() if proxy else (0, 0)
        check_s = staged[0].get("check_ms", 0) / 1000
        run = Run(
            t_staged - t_offer - check_s, t_done - t_offer, check_s, offer[0]["_bytes"], t_staged - t_dl
        )
        run.resets, run.reset_s = _resets(trail[: trail.index(("ota/status", staged[0]))])
        run.cpu_s = staged[0]["_cpu"] - offer[0]["_cpu"] - check_s
        if proxy is not None:
            run.up, run.down = at_staged[0] - base[0], at_staged[1] - base[1]
            run.update_up, run.update_down = done[0] - base[0], done[1] - base[1]
        return run

    async def _online(self, dev: str) -> None:
        def want(d: str, kind: str, msg: dict[str, Any]) -> bool:
            return d == dev and kind == "state" and msg.get("state") == "online"

        await asyncio.to_thread(self.watch.wait, want, 30)
        await asyncio.sleep(0.5)  # telemetry and hello settle; the link is quiet then

    def _user(self, prefix: str) -> tuple[str, str]:
        dev, password = f"{prefix}-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
        self.broker.add_user(dev, password)
        self.watch.drain()
        return dev, password

    async def cpython(self, release_id: str, counted: bool) -> Run:
        """One update of a fresh virtual device (the runtime under CPython)."""
        dev, password = self._user("bench-cp")
        proxy = await CountingProxy(self.broker.port).start() if counted else None
        port = proxy.port if proxy else self.broker.port
        device = VirtualDevice(
            dev,
            "thermostat",
            BrokerUrl("127.0.0.1", port),
            self.work / "devices",
            SimClock(),
            0,
            password=password,
            root=self.keys.root_bytes,
            trial_s=0,
            telemetry_s=3600,
            in_memory=True,
        )
        task = asyncio.create_task(device.run(), name=f"bench-{dev}")
        try:
            await self._online(dev)
            base = proxy.snapshot() if proxy else (0, 0)
            await self._start_update(dev, release_id)
            return await self._follow(dev, proxy, base)
        finally:
            device.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            if proxy is not None:
                await proxy.stop()

    async def micropython(self, release_id: str, counted: bool) -> Run:
        """One update of a fresh device folder on the MicroPython unix port."""
        dev, password = self._user("bench-mp")
        proxy = await CountingProxy(self.broker.port).start() if counted else None
        port = proxy.port if proxy else self.broker.port
        folder = self.work / "mp" / dev
        provision_into(
            folder,
            "thermostat",
            dev,
            BrokerUrl("127.0.0.1", port),
            password=password,
            compile_mpy=True,
            root=self.keys.root_bytes,
            trial_s=0,
            telemetry_s=3600,
        )
        proc = DeviceProcess(folder, "micropython", heap=SMALL_HEAP)
        proc.set_sensors(temperature=20.0)
        proc.start()
        try:
            await self._online(dev)
            base = proxy.snapshot() if proxy else (0, 0)
            await self._start_update(dev, release_id)
            run = await self._follow(dev, proxy, base)
            run.update_mode = "update mode" in proc.output()
            run.cpu_s = None  # (a process of its own)
            return run
        except Exception:
            print(proc.output()[-3000:], file=sys.stderr)
            raise
        finally:
            proc.kill()
            if proxy is not None:
                await proxy.stop()


def summarize(runs: list[Run], fixed: int, blobs: int, raw: dict[int, float]) -> dict[str, Any]:
    """fixed: the manifest's and blobs' bytes; raw: the raw publish's median
    seconds by payload size (the whole payload, the blobs alone)."""
    timed = [r for r in runs if r.up is None]
    counted = [r for r in runs if r.up is not None]
    payload = fixed + runs[0].offer_bytes
    raw_s = raw[payload]
    transfer = statistics.median(r.transfer_s for r in timed)
    update = statistics.median(r.update_s for r in timed)
    stream = statistics.median(r.stream_s for r in timed)
    reset = statistics.median(r.reset_s for r in timed)
    out: dict[str, Any] = {
        "runs": len(timed),
        "payload_bytes": payload,
        "offer_bytes": runs[0].offer_bytes,
        "transfer_s": transfer,
        "update_s": update,
        "check_s": statistics.median(r.check_s for r in timed),
        "stream_s": stream,
        "resets": max(r.resets for r in timed),
        "reset_s": reset,
        "reset_vs_raw_publish": reset / raw_s,
        "transfer_s_all": [round(r.transfer_s, 4) for r in timed],
        "device_cpu_s": None,
        "update_s_all": [round(r.update_s, 4) for r in timed],
        "transfer_vs_raw_publish": transfer / raw_s,
        "update_vs_raw_publish": update / raw_s,
        "stream_vs_raw_publish": stream / raw[blobs],
        "transfer_kib_per_s": payload / 1024 / transfer,
        "update_mode": any(r.update_mode for r in runs),
    }
    cpu = [r.cpu_s for r in timed if r.cpu_s is not None]
    if cpu:
        out["device_cpu_s"] = statistics.median(cpu)
        out["device_cpu_vs_raw_publish"] = out["device_cpu_s"] / raw_s
    if counted:
        c = counted[0]
        assert c.up is not None and c.down is not None
        assert c.update_up is not None and c.update_down is not None
        out["wire"] = {
            "transfer_up": c.up,
            "transfer_down": c.down,
            "transfer_bytes_per_payload_byte": (c.up + c.down) / payload,
            "update_up": c.update_up,
            "update_down": c.update_down,
            "update_bytes_per_payload_byte": (c.update_up + c.update_down) / payload,
        }
    return out


@dataclass
class Releases:
    py: Release  # for the virtual device (modules as .py)
    mpy: Release | None  # for the MicroPython device (modules as .mpy)


def fixed_bytes(release: Release) -> int:
    """What a factory thermostat must receive of release, but the offer:
    the manifest and eco's blobs."""
    return len(release.manifest) + lacking(release)[0]


async def session(work: Path, keys: Keys, releases: Releases, nodelay: bool) -> dict[str, Any]:
    """A Mosquitto and a gateway of their own; the updates (the first of
    each device kind counted through the proxy, unless nodelay), then the
    baselines of the same sizes."""
    broker = BenchBroker(work / "mosquitto", nodelay)
    broker.start()
    gw = KeyedGatewayProcess(
        broker.gateway_url, work / "gateway.db", work / "gateway.log", ["--keys", str(keys.path)]
    )
    bench = None
    try:
        gw.start()
        bench = Bench(work, broker, keys, gw)
        kinds: dict[str, tuple[list[Run], Release]] = {}
        rid = bench.publish(releases.py)
        runs = [await bench.cpython(rid, counted=True)] if not nodelay else []
        for _ in range(CPYTHON_RUNS):
            runs.append(await bench.cpython(rid, counted=False))
        kinds["cpython"] = (runs, releases.py)
        if releases.mpy is not None:
            mid = bench.publish(releases.mpy)
            runs = [await bench.micropython(mid, counted=True)] if not nodelay else []
            for _ in range(MICROPYTHON_RUNS):
                runs.append(await bench.micropython(mid, counted=False))
            kinds["micropython_128k"] = (runs, releases.mpy)
        sizes = set()
        for runs, release in kinds.values():
            sizes |= {fixed_bytes(release) + runs[0].offer_bytes, lacking(release)[0]}
        out: dict[str, Any] = {"raw_publish": {}}
        raw: dict[int, float] = {}
        for n in sorted(sizes):
            b = await baseline(broker, os.urandom(n))
            out["raw_publish"][str(n)] = b
            raw[n] = b["median_s"]
        for name, (runs, release) in kinds.items():
            out[name] = summarize(runs, fixed_bytes(release), lacking(release)[0], raw)
            exchange = (runs[0].offer_bytes, len(release.manifest), lacking(release)[0])
            floor = [await asyncio.to_thread(asked_exchange, broker, *exchange) for _ in range(BASELINE_RUNS)]
            out[name]["floor_s"] = statistics.median(floor)
            out[name]["floor_vs_raw_publish"] = out[name]["floor_s"] / raw[out[name]["payload_bytes"]]
        return out
    finally:
        if bench is not None:
            bench.watch.close()
        gw.stop()
        broker.stop()


async def measure(work: Path) -> dict[str, Any]:
    keys = keygen(work / "keys")
    src = eco_with_tables(work / "src")
    py = build("thermostat", src, "bench-py", work / "r-py", 2, ("py",), keys)
    mpy = None
    if MICROPYTHON.exists():
        mpy = build("thermostat", src, "bench-mpy", work / "r-mpy", 3, ("mpy",), keys)
    else:
        print(f"no micropython at {MICROPYTHON}: MicroPython skipped", file=sys.stderr)
    releases = Releases(py, mpy)
    payload, content = lacking(py)
    results: dict[str, Any] = {
        "payload": {"new_files_bytes": content, "blob_bytes": payload, "files": TABLES + 2},
        "config": {"ota_chunk": 4096, "ota_window": 8, "ota_trial_s": 0, "micropython_heap": SMALL_HEAP},
    }
    results.update(await session(work / "default", keys, releases, nodelay=False))
    # the same with Mosquitto's set_tcp_nodelay: what Nagle's algorithm costs on the broker's side
    results["broker_tcp_nodelay"] = await session(work / "nodelay", keys, releases, nodelay=True)
    return results


def _report_device(label: str, d: dict[str, Any]) -> None:
    mode = ", in update mode" if d["update_mode"] else ""
    print(
        f"  {label}{mode}, median of {d['runs']} "
        f"({d['payload_bytes']} B of payload, {d['offer_bytes']} B offer):"
    )
    print(
        f"    download (offer -> staged, less checks) {d['transfer_s'] * 1000:8.1f} ms  "
        f"x{d['transfer_vs_raw_publish']:7.1f} the raw publish  ({d['transfer_kib_per_s']:.0f} KiB/s)"
    )
    print(
        f"    floor: the same exchange, nothing done  {d['floor_s'] * 1000:8.1f} ms  "
        f"x{d['floor_vs_raw_publish']:7.1f} the raw publish  (offer, 2 requests answered; paho, median)"
    )
    print(f"    signature checks while downloading    {d['check_s'] * 1000:8.1f} ms  (apart)")
    if d.get("device_cpu_s") is not None:
        print(
            f"    of the download, the device's own CPU {d['device_cpu_s'] * 1000:8.1f} ms  "
            f"x{d['device_cpu_vs_raw_publish']:7.1f} the raw publish  (its thread, less checks)"
        )
    if d.get("reset_s"):
        print(
            f"    of it, {d['resets']} reset(s) and boot(s)        {d['reset_s'] * 1000:8.1f} ms  "
            f"x{d['reset_vs_raw_publish']:7.1f} the raw publish  (last word -> hello; checks at boot in it)"
        )
    print(
        f"    the blobs' stream (first request -> staged) {d['stream_s'] * 1000:8.1f} ms  "
        f"x{d['stream_vs_raw_publish']:7.1f} a raw publish of the blobs"
    )
    print(
        f"    update (offer -> committed)           {d['update_s'] * 1000:8.1f} ms  "
        f"x{d['update_vs_raw_publish']:7.1f} the raw publish"
    )
    w = d.get("wire")
    if w:
        print(
            f"    wire, download: {w['transfer_up'] + w['transfer_down']} B "
            f"({w['transfer_down']} down, {w['transfer_up']} up) = "
            f"{w['transfer_bytes_per_payload_byte']:.3f} B per payload B"
        )
        total = w["update_up"] + w["update_down"]
        print(
            f"    wire, whole update (with the reset and reconnect): {total} B"
            f" = {w['update_bytes_per_payload_byte']:.3f} B per payload B"
        )


def _report_session(title: str, r: dict[str, Any]) -> None:
    print(title)
    for n, raw in r["raw_publish"].items():
        print(
            f"  baseline: {n} B as one raw MQTT publish (paho -> paho): {raw['median_s'] * 1000:.2f} ms "
            f"(median of {raw['runs']}), wire {raw['wire_bytes_per_payload_byte']:.4f} B per payload B"
        )
    for name, label in (
        ("cpython", "virtual device (CPython)"),
        ("micropython_128k", "MicroPython, 128K heap"),
    ):
        if name in r:
            _report_device(label, r[name])


def report(r: dict[str, Any]) -> None:
    p = r["payload"]
    print(
        f"OTA update: {p['new_files_bytes'] / 1024:.1f} KiB of new files "
        f"({p['blob_bytes']} bytes compressed, {p['files']} files), gateway -> Mosquitto -> device"
    )
    _report_session("Mosquitto as gateway/broker.py configures it:", r)
    _report_session("Mosquitto with set_tcp_nodelay true:", r["broker_tcp_nodelay"])


def main() -> int:
    return results.run("OTA", "pb-bench-ota-", lambda work: asyncio.run(measure(work)), report, OUT)


if __name__ == "__main__":
    sys.exit(main())
