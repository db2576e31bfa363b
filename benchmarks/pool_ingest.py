"""Gateway ingest at the broker's limit: telemetry stored per second by one
gateway, then by pools of two and four workers (gateway/pool.py), each
against bare subscribers to the same stream over the same window.

    .venv/bin/python -m benchmarks pool                    # 200 devices, 8 s windows
    .venv/bin/python -m benchmarks pool --seconds 4       # a quick check
    .venv/bin/python -m benchmarks pool --brokers nats    # the NATS cluster alone

Everything is real and a process of its own: a Mosquitto started here (the
product's configuration: passwords, ACLs, a broker account per worker), the
gateway as `permabeta gateway run` on a PostgreSQL database of its own (a
throwaway cluster, tests/support/postgres.py), and beside them a load
generator and the bare subscribers. The load generator is not the simulated
fleet: two processes write pre-encoded QoS 0 PUBLISH packets of valid
telemetry for 200 devices on plain sockets as fast as Mosquitto reads them,
so the broker, not the load, is the limit. Two bare subscribers, each a
process of its own, receive the same stream: a raw socket counting PUBLISH
packets (what the broker delivers), and a paho client counting messages
(the gateway's own MQTT library, subscribed as the gateway is: the
baseline of the goal, as in the fleet benchmark). The gateway's rate is
the telemetry rows its database gains. Every rate is a least-squares slope
over the same window, after a warm-up. Figures go to bench-results/pool.json.

The same windows run again on a three-node NATS cluster (gateway/
nats_cluster.py): the gateway workers run with --cluster, each with its MQTT
side on a node of its own, and take the telemetry from the cluster's work
queue; the load generator writes to two nodes, the bare subscribers (QoS 0
and, like the gateway's MQTT side, QoS 1) read from the third. One more
window there has no gateway: a bare reader of the work queue (the gateway's
own ClusterInbox, handling nothing) under the same load, the baseline of the
gateway's windows on the cluster.

On a 2-core machine every process here shares the two cores: the figures are
the gateway's share of one machine, not its ceiling.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from gateway.broker import GATEWAY_USER
from gateway.broker_config import worker_user
from gateway.store import Store

from .fleet_scale import GATEWAY_PASSWORD, Broker, slope
from .results import ROOT, run

PASSWORD = GATEWAY_PASSWORD  # every account's here
PUBLISHERS = ("bench-pub-0", "bench-pub-1")
SUBSCRIBER = "bench-sub"
PAHO = "bench-paho"
WORKERS = ("gw-1", "gw-2", "gw-3", "gw-4")


def _connect(port: int, user: str) -> socket.socket:
    from firmware.pb.net import mqtt

    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(mqtt.connect(f"{user}-{secrets.token_hex(3)}", 60, True, user, PASSWORD.encode()))
    if s.recv(4)[:1] != b"\x20":
        raise RuntimeError(f"the broker refused {user}")
    return s


def _telemetry(dev: str, seq: int) -> bytes:
    msg = {"v": 1, "dev": dev, "seq": seq, "ts": 1767226020.0 + seq, "sensors": {"temperature": 20.5}}
    return json.dumps(msg | {"actuators": {"relay": False}, "features": {}}, separators=(",", ":")).encode()


def _publisher(port: int, user: str, devices: list[str], sent: Synchronized[int], stop: Any) -> None:
    """QoS 0 telemetry of devices, written as fast as the broker reads it."""
    from firmware.pb.net import mqtt

    packets = []
    for seq in range(1, 6):
        for dev in devices:
            body = _telemetry(dev, seq)
            packets.append(bytes(mqtt.publish_header(f"pb/{dev}/telemetry", len(body))) + body)
    batch = b"".join(packets)
    with _connect(port, user) as s:
        while not stop.is_set():
            s.sendall(batch)
            with sent.get_lock():
                sent.value += len(packets)


def _subscriber(port: int, got: Synchronized[int], ready: Any) -> None:
    """A raw socket subscribed to every device's telemetry, counting the
    PUBLISH packets the broker delivers."""
    from firmware.pb.net import mqtt

    s = _connect(port, SUBSCRIBER)
    s.sendall(mqtt.subscribe(1, [("pb/+/telemetry", 0)]))
    buf = b""
    n = 0
    subscribed = False
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return
        buf += chunk
        i = 0
        while True:
            if len(buf) - i < 2:
                break
            length, shift, j = 0, 0, i + 1
            while j < len(buf):
                b = buf[j]
                length |= (b & 0x7F) << shift
                shift += 7
                j += 1
                if not b & 0x80:
                    break
            else:
                break
            if j + length > len(buf):
                break
            kind = buf[i] >> 4
            if kind == 3:
                n += 1
            elif kind == 9 and not subscribed:
                subscribed = True
                ready.set()
            i = j + length
        buf = buf[i:]
        with got.get_lock():
            got.value = n


def _paho_subscriber(port: int, got: Synchronized[int], ready: Any) -> None:
    """A bare subscriber on the gateway's own MQTT library (paho, which aiomqtt
    drives): subscribed like the gateway (QoS 1), counting what it is given."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{PAHO}-{secrets.token_hex(3)}")
    c.username_pw_set(PAHO, PASSWORD)
    n = 0

    def on_message(*_: Any) -> None:
        nonlocal n
        n += 1
        if not n % 64:
            with got.get_lock():
                got.value = n

    c.on_message = on_message
    c.on_connect = lambda *_: c.subscribe("pb/+/telemetry", qos=1)
    c.on_subscribe = lambda *_: ready.set()
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_forever()


def _hellos(port: int, devices: list[str]) -> None:
    from firmware.pb.net import mqtt

    sys.path.insert(0, str(ROOT))
    from tests.support import messages

    with _connect(port, PUBLISHERS[0]) as s:
        for dev in devices:
            body = json.dumps(messages.hello(dev, telemetry_s=10, keepalive=30)).encode()
            s.sendall(bytes(mqtt.publish_header(f"pb/{dev}/hello", len(body))) + body)
        s.sendall(mqtt.disconnect())


def _rows(store: Store) -> int:
    return int(store.db.execute("SELECT count(*) FROM telemetry").fetchone()[0])


ACCOUNTS = (*PUBLISHERS, SUBSCRIBER, PAHO, *(worker_user(w) for w in WORKERS))


class _Mosquitto:
    """The broker as a window uses it: where each client connects."""

    def __init__(self, work: Path) -> None:
        self.broker = Broker(work, [], ACCOUNTS)
        self.broker.start()

    def port(self, client: int) -> int:
        return self.broker.port

    def gateway(self, worker: int) -> list[str]:
        return []

    def stop(self) -> None:
        self.broker.stop()


class _Nats:
    """A three-node cluster, every account of the benchmark's with the gateway's rights."""

    def __init__(self, work: Path) -> None:
        from gateway.cli_registry import cluster_hash
        from gateway.nats_cluster import Keys, NatsCluster, Node, write

        work.mkdir(parents=True, exist_ok=True)
        nodes = [Node.on(f"n{i}") for i in (1, 2, 3)]
        hashed = cluster_hash(PASSWORD)
        write(work, nodes, [], dict.fromkeys((GATEWAY_USER, *ACCOUNTS), hashed), Keys(hashed, PASSWORD))
        self.cluster = NatsCluster(work, nodes, (GATEWAY_USER, PASSWORD))
        self.cluster.start()

    def port(self, client: int) -> int:
        return self.cluster.nodes[client % 3].node.mqtt_port

    def gateway(self, worker: int) -> list[str]:
        return ["--cluster", ",".join(self.cluster.nats_urls)]

    def stop(self) -> None:
        self.cluster.stop()


def _queue_reader(urls: list[str], got: Synchronized[int], ready: Any) -> None:
    """A bare reader of the NATS cluster's work queue: the gateway's own
    (gateway/nats_inbox.py ClusterInbox), handling nothing, storing nothing."""
    import asyncio

    from gateway.nats_inbox import ClusterInbox

    n = 0

    def counted(topic: str, payload: bytes, retain: bool) -> None:
        nonlocal n
        n += 1
        if not n % 64:
            with got.get_lock():
                got.value = n

    async def main() -> None:
        inbox = ClusterInbox(urls, GATEWAY_USER, PASSWORD, counted, lambda: True)
        task = asyncio.create_task(inbox.run())
        await inbox.ready.wait()
        ready.set()
        await task

    asyncio.run(main())


def measure_queue(work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """The NATS cluster's work queue read by a bare reader under the same load:
    the baseline of the gateway's windows there."""
    fabric = _Nats(work / "nats-bare")
    ctx = mp.get_context("fork")
    stop, ready = ctx.Event(), ctx.Event()
    sent, got = ctx.Value("q", 0), ctx.Value("q", 0)
    children: list[Any] = []
    try:
        urls = fabric.cluster.nats_urls
        children.append(ctx.Process(target=_queue_reader, args=(urls, got, ready), daemon=True))
        children[-1].start()
        if not ready.wait(60):
            raise RuntimeError("the bare reader of the work queue did not start")
        devices = [f"th-b{i:04d}" for i in range(a.devices)]
        half = len(devices) // len(PUBLISHERS)
        for k, user in enumerate(PUBLISHERS):
            load = (fabric.port(k), user, devices[k * half : (k + 1) * half], sent, stop)
            children.append(ctx.Process(target=_publisher, args=load, daemon=True))
            children[-1].start()
        time.sleep(a.warmup)
        samples: dict[str, list[tuple[float, float]]] = {"sent": [], "queue": []}
        t0 = time.monotonic()
        while (now := time.monotonic()) - t0 < a.seconds:
            samples["sent"].append((now, float(sent.value)))
            samples["queue"].append((now, float(got.value)))
            time.sleep(0.25)
        rates = {k: slope(v) for k, v in samples.items()}
    finally:
        _end(stop, children)
        fabric.stop()
    return {"broker": "nats", "offered_per_s": round(rates["sent"]), "queue_per_s": round(rates["queue"])}


def measure_one(work: Path, db: str, workers: int, a: argparse.Namespace, kind: str) -> dict[str, Any]:
    """One window at the broker's limit, with `workers` gateway processes (0: one gateway
    alone), on Mosquitto or the NATS cluster (kind)."""
    fabric = _Nats(work / f"nats-{workers}") if kind == "nats" else _Mosquitto(work / f"mosquitto-{workers}")
    procs: list[subprocess.Popen[bytes]] = []
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    sent, got, paho_got = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("q", 0)
    ready, paho_ready = ctx.Event(), ctx.Event()
    children: list[Any] = []
    try:
        names = WORKERS[:workers] if workers else ("alone",)
        for name in names:
            user = worker_user(name) if workers else GATEWAY_USER
            args = ["gateway", "run", "--db", db, "--api", "127.0.0.1:0"]
            args += ["--broker", f"mqtt://{user}:{PASSWORD}@127.0.0.1:{fabric.port(len(procs))}"]
            args += ["--client-id", f"bench-{name}", *fabric.gateway(len(procs))]
            if workers:
                args += ["--worker", name]
            log = (work / f"{name}-{workers}.log").open("ab")
            command = [sys.executable, "-m", "gateway.cli", *args]
            procs.append(subprocess.Popen(command, stdout=log, stderr=log, cwd=ROOT))
        with Store(db) as store:
            logs = [work / f"{n}-{workers}.log" for n in names]
            _until(lambda: all("API http" in f.read_text() for f in logs), 60, "the gateways up")
            if workers:
                _until(lambda: _pool(store) == workers, 15, "the pool")
            devices = [f"th-b{i:04d}" for i in range(a.devices)]
            t_hello = time.monotonic()
            _hellos(fabric.port(0), devices)
            _until(lambda: _count(store, "devices") >= a.devices, 120, "the devices' hellos")
            hellos_per_s = a.devices / (time.monotonic() - t_hello)
            listen = fabric.port(2)
            children.append(ctx.Process(target=_subscriber, args=(listen, got, ready), daemon=True))
            children[-1].start()
            if not ready.wait(10):
                raise RuntimeError("the bare subscriber did not subscribe")
            children.append(
                ctx.Process(target=_paho_subscriber, args=(listen, paho_got, paho_ready), daemon=True)
            )
            children[-1].start()
            if not paho_ready.wait(10):
                raise RuntimeError("the bare paho subscriber did not subscribe")
            half = len(devices) // len(PUBLISHERS)
            for k, user in enumerate(PUBLISHERS):
                mine = devices[k * half : (k + 1) * half]
                load = (fabric.port(k), user, mine, sent, stop)
                children.append(ctx.Process(target=_publisher, args=load, daemon=True))
                children[-1].start()
            time.sleep(a.warmup)
            samples: dict[str, list[tuple[float, float]]] = {
                "sent": [],
                "bare": [],
                "paho": [],
                "gateway": [],
            }
            t0 = time.monotonic()
            while (now := time.monotonic()) - t0 < a.seconds:
                samples["sent"].append((now, float(sent.value)))
                samples["bare"].append((now, float(got.value)))
                samples["paho"].append((now, float(paho_got.value)))
                samples["gateway"].append((time.monotonic(), float(_rows(store))))
                time.sleep(0.25)
            stop.set()
            rates = {k: slope(v) for k, v in samples.items()}
    finally:
        _end(stop, children)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        fabric.stop()
    return {
        "broker": kind,
        "workers": workers or 1,
        "pooled": bool(workers),
        "devices": a.devices,
        "seconds": a.seconds,
        "hellos_per_s": round(hellos_per_s),  # devices said hello and were recorded, a second
        "offered_per_s": round(rates["sent"]),
        "bare_per_s": round(rates["bare"]),
        "paho_per_s": round(rates["paho"]),
        "gateway_per_s": round(rates["gateway"]),
        "ratio": round(rates["gateway"] / rates["paho"], 3) if rates["paho"] else None,
        "ratio_raw": round(rates["gateway"] / rates["bare"], 3) if rates["bare"] else None,
    }


def _end(stop: Any, children: list[Any]) -> None:
    """The load and the bare readers stopped."""
    stop.set()
    for c in children:
        c.terminate()
        c.join(5)


def _count(store: Store, table: str) -> int:
    return int(store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _pool(store: Store) -> int:
    row = store.db.execute("SELECT count(*) FROM pool_workers WHERE seen > ?", (time.time() - 5,)).fetchone()
    return int(row[0])


def _until(done: Any, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not done():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} not within {timeout:g}s")
        time.sleep(0.1)


def measure(work: Path, a: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import Postgres

    cluster = Postgres().start()
    os.environ["PERMABETA_HOME"] = str(work / "home")
    try:
        runs = [measure_one(work, cluster.database(), n, a, k) for k in a.brokers for n in (0, *a.workers)]
    finally:
        cluster.stop()
    out: dict[str, Any] = {"runs": runs, "engine": "postgresql"}
    if "nats" in a.brokers:
        out["nats_queue"] = q = measure_queue(work, a)
        for r in runs:
            if r["broker"] == "nats":
                r["ratio_queue"] = (
                    round(r["gateway_per_s"] / q["queue_per_s"], 3) if q["queue_per_s"] else None
                )
    return out


def report(r: dict[str, Any]) -> None:
    print("gateway ingest at the broker's limit (QoS 0 telemetry, PostgreSQL), against bare subscribers:")
    for x in r["runs"]:
        who = f"{x.get('broker', 'mosquitto')}: {x['workers']} worker" + ("s" if x["pooled"] else " (alone)")
        print(
            f"  {who:<20} offered {x['offered_per_s']:>6}/s  raw socket {x['bare_per_s']:>6}/s  "
            f"paho {x['paho_per_s']:>6}/s  gateway stored {x['gateway_per_s']:>6}/s"
        )
        print(f"  {'':<20} devices' hellos recorded {x['hellos_per_s']}/s")
        if "ratio_queue" in x:
            print(f"  {'':<20} = x{x['ratio_queue']} of a bare reader of the cluster's work queue")
    if "nats_queue" in r:
        q = r["nats_queue"]
        print(
            f"  nats: a bare reader of the work queue (no gateway), offered {q['offered_per_s']}/s: "
            f"{q['queue_per_s']}/s"
        )
        print(
            f"  {'':<20} = x{x['ratio']} of the bare paho subscriber (goal 0.8), "
            f"x{x['ratio_raw']} of the raw socket"
        )


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks pool", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--seconds", type=float, default=8.0, help="the measured window")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--workers",
        type=lambda t: tuple(int(x) for x in t.split(",")),
        default=(2, 4),
        help="pools measured after the gateway alone, comma-separated (at most 4)",
    )
    p.add_argument(
        "--brokers",
        type=lambda t: tuple(x for x in t.split(",") if x),
        default=("mosquitto", "nats"),
        help="mosquitto, nats (a three-node cluster) or both, comma-separated",
    )
    return p.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    out = ROOT / "bench-results" / "pool.json"
    return run("pool", "pb-bench-pool-", lambda work: measure(work, a), report, out)


if __name__ == "__main__":
    sys.exit(main())
