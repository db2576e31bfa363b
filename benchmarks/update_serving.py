"""Fleet update serving: the bytes of updates the gateway serves per second
to many devices at once, against the broker's raw throughput of the same
chunks to the same receivers, measured in the same run.

    .venv/bin/python -m benchmarks serve                       # 200 receivers, 64 KiB each
    .venv/bin/python -m benchmarks serve --devices 50 --full-devices 0   # a quick check

Everything is real and a process of its own: a Mosquitto started here (the
product's configuration: passwords, ACLs), the gateway as `permabeta gateway
run` with its keys and SQLite database, and the receivers. A receiver is
a lightweight device: it connects with its own broker account, says hello
and online, takes the offer, and fetches the manifest, then the release's
blobs, over version 2 streams exactly as the runtime's download asks for
them (firmware/pb/ota/transfer.py's Receiver: 4 KiB chunks, a window of 8
growing to 32, acknowledged every half window, asked again after a loss or
a silence), but verifies nothing and writes nothing. Receivers are spread
over processes (--procs), each a selector over raw sockets (the firmware's
own MQTT codec), so that neither they nor their count are the limit.

The baseline: a raw publisher writes the same chunks (4,124-byte PUBLISH
payloads, QoS 0) on one plain socket to the same receivers' chunk topics,
round robin, as fast as Mosquitto takes them; the receivers count what
arrives. Both rates are of chunk data bytes (without the 28-byte header):
the gateway's over the download (from the rollout that offers the update
to every receiver at once, one stage of 100%, as a maker updates a fleet, to
the last byte the last receiver holds), the raw one a least-squares slope
after a warm-up.
Beside it, --full-devices N thermostats of the simulated fleet
(benchmarks/fleet_scale.py's update round: the firmware's runtime under
CPython, verifying, staging and committing) take an update of the same
size through the same kind of stack. Figures go to bench-results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import selectors
import socket
import sys
import time
from collections.abc import Sequence
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from .fleet_scale import DEVICE_PASSWORD, GATEWAY_PASSWORD, Broker, GatewayProc, _wait, slope, tables_feature
from .results import ROOT, run

CHUNK = 4096
HEADER = 28  # a version 2 chunk's header (firmware/pb/ota/transfer.py)
WINDOW = 8  # the runtime's first window (firmware/pb/ota/download.py)
SILENCE_S = 2.0  # no chunk for this long: the stream is asked for again
OUT = ROOT / "bench-results" / "serve.json"


def _device_ids(n: int) -> list[str]:
    return [f"th-s{i:05d}" for i in range(n)]


class _Device:
    """One lightweight receiver on its own socket."""

    def __init__(self, dev: str, port: int, objects: list[list[Any]]) -> None:
        from firmware.pb.net import mqtt

        self.id = dev
        self.objects = objects  # [name, tag, 0, size] of every blob, after the manifest
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = mqtt.Decoder(max_size=CHUNK + 256)
        self.rx: Any = None
        self.stage = 0  # 0: waiting for an offer, 1: the manifest, 2: the blobs, 3: done
        self.heard = time.monotonic()
        self.pid = 0
        self.sock.sendall(mqtt.connect(dev, 60, True, dev, DEVICE_PASSWORD.encode()))
        self.sock.sendall(mqtt.subscribe(1, [(f"pb/{dev}/ota/offer", 1), (f"pb/{dev}/ota/chunk", 0)]))

    def publish(self, kind: str, body: bytes, qos: int = 0, retain: bool = False) -> None:
        from firmware.pb.net import mqtt

        if qos:
            self.pid = self.pid % 0xFFFF + 1
        head = mqtt.publish_header(f"pb/{self.id}/{kind}", len(body), qos, retain, False, self.pid)
        self.sock.sendall(bytes(head) + body)

    def say_hello(self) -> None:
        from tests.support import messages

        hello = messages.hello(self.id, platform="cpython", proto=2)
        hello["ota"] = {"counter": 0, "manifest": None, "state": "factory", "root": 1}
        self.publish("hello", json.dumps(hello).encode(), 1, True)
        self.publish("state", json.dumps({"v": 1, "dev": self.id, "state": "online"}).encode(), 1, True)

    def ask(self, msg: dict[str, Any] | None) -> None:
        if msg is not None:
            self.publish("ota/req", json.dumps(msg, separators=(",", ":")).encode())


def _receivers(
    port: int,
    ids: list[str],
    objects: list[list[Any]],
    data: Synchronized[int],
    done: Synchronized[int],
    connected: Synchronized[int],
) -> None:
    """A process of receivers: each device's side of its update, and every
    chunk's data bytes counted (the raw baseline's junk too)."""
    from firmware.pb.net import mqtt
    from firmware.pb.peer.ota_transfer import Receiver

    sys.path.insert(0, str(ROOT))  # (tests.support.messages: a hello as the protocol takes it)
    sel = selectors.DefaultSelector()
    devices = []
    for dev in ids:
        d = _Device(dev, port, objects)
        sel.register(d.sock, selectors.EVENT_READ, d)
        devices.append(d)
    suback = 0
    got = 0
    last_check = time.monotonic()
    while True:
        for key, _ in sel.select(0.25):
            d = key.data
            chunk = d.sock.recv(1 << 18)
            if not chunk:
                return
            for p in d.decoder.feed(chunk):
                if p[0] == mqtt.SUBACK:
                    suback += 1
                    d.say_hello()
                    if suback == len(devices):
                        with connected.get_lock():
                            connected.value += suback
                    continue
                if p[0] != mqtt.PUBLISH:
                    continue
                _, topic, payload, qos, _, _, pid = p
                if qos:
                    d.sock.sendall(mqtt.puback(pid))
                if topic.endswith("/chunk"):
                    got += max(0, len(payload) - HEADER)
                    if d.rx is None or d.stage in (0, 3):
                        continue
                    d.heard = time.monotonic()
                    what = d.rx.feed(payload)
                    if isinstance(what, str):
                        raise RuntimeError(f"{d.id}: the gateway refused: {what}")
                    if what is True:
                        d.ask(d.rx.request())
                    elif what is not None:
                        d.ask(d.rx.ack())
                    if d.rx.cur >= len(d.rx.objs):
                        if d.stage == 1:
                            d.stage = 2
                            d.ask(d.rx.request([list(o) for o in d.objects]))
                        else:
                            d.stage = 3
                            with done.get_lock():
                                done.value += 1
                elif topic.endswith("/offer"):
                    offer = json.loads(bytes(payload))
                    if offer.get("op") == "cancel" or d.stage:
                        continue
                    # the manifest first, as the runtime asks (what it then lacks is known here)
                    tag = bytes.fromhex(offer["manifest"])[:8]
                    d.rx = Receiver(d.id, offer["id"], CHUNK, WINDOW)
                    d.stage = 1
                    d.heard = time.monotonic()
                    d.ask(d.rx.request([["manifest", tag, 0, offer["size"]]]))
        now = time.monotonic()
        if now - last_check > 0.25:
            last_check = now
            with data.get_lock():
                data.value += got
            got = 0
            for d in devices:
                if d.stage in (1, 2) and now - d.heard > SILENCE_S:
                    d.heard = now
                    d.ask(d.rx.request())


def _raw_publisher(port: int, ids: list[str], stop: Any) -> None:
    """Chunk-sized QoS 0 publishes to the receivers' chunk topics, round robin,
    written as fast as the broker reads them."""
    from firmware.pb.net import mqtt

    body = os.urandom(HEADER + CHUNK)
    batch = b"".join(bytes(mqtt.publish_header(f"pb/{dev}/ota/chunk", len(body))) + body for dev in ids)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(mqtt.connect(f"bench-raw-{os.getpid()}", 60, True, "bench-raw", GATEWAY_PASSWORD.encode()))
        if s.recv(4)[:1] != b"\x20":
            raise RuntimeError("the broker refused the raw publisher")
        while not stop.is_set():
            s.sendall(batch)


def measure(work: Path, a: argparse.Namespace) -> dict[str, Any]:
    from gateway.archive import TAR_TYPE, pack_release
    from ota.keys import keygen
    from ota.release import build

    keys = keygen(work / "keys")
    rel = build(
        "thermostat", tables_feature(work / "src", a.release_kb, 1), "2.1.0", work / "release", 101, keys=keys
    )
    blobs = [[f.zsha256[:16], bytes.fromhex(f.zsha256)[:8], 0, f.zsize] for f in rel.files_for("py")]
    manifest_size = len(rel.manifest)
    per_device = manifest_size + sum(int(b[3]) for b in blobs)
    ids = _device_ids(a.devices)
    broker = Broker(work / "mosquitto", ids, ("bench-raw",))
    broker.start()
    gateway: GatewayProc | None = None
    ctx = mp.get_context("fork")
    children: list[Any] = []
    data, done, connected = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("q", 0)
    out: dict[str, Any] = {
        "devices": a.devices,
        "receiver_procs": a.procs,
        "bytes_per_device": per_device,
        "release_files": len(blobs),
    }
    try:
        gateway = GatewayProc(broker, work, keys.path).start()
        share = (len(ids) + a.procs - 1) // a.procs
        for k in range(a.procs):
            mine = ids[k * share : (k + 1) * share]
            args = (broker.port, mine, blobs, data, done, connected)
            children.append(ctx.Process(target=_receivers, args=args, daemon=True))
            children[-1].start()
        _wait("every receiver connected", lambda: connected.value >= len(ids), 60)
        gw = gateway

        def online() -> bool:
            n = int(gw.stats()["online"])
            out["online"] = n
            return n >= len(ids)

        try:
            _wait("every receiver online", online, 60, 0.5)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} ({out['online']} of {len(ids)})") from None

        # the baseline: the same chunks, published raw, to the same receivers
        stop = ctx.Event()
        pub = ctx.Process(target=_raw_publisher, args=(broker.port, ids, stop), daemon=True)
        pub.start()
        time.sleep(1.0)
        samples = []
        t0 = time.monotonic()
        while (now := time.monotonic()) - t0 < a.raw_s:
            samples.append((now, float(data.value)))
            time.sleep(0.1)
        stop.set()
        pub.join(10)
        out["raw_bytes_per_s"] = round(slope(samples))
        time.sleep(1.0)  # (what the broker still held for the receivers arrives)

        # the gateway serving the update to every receiver at once: a rollout of one stage
        rid = str(gateway.api.upload("/api/v1/releases", pack_release(rel), TAR_TYPE)["id"])
        before = data.value

        if a.profile:
            gateway.profile_start()
        t0 = time.monotonic()
        gateway.api.request("POST", "/api/v1/rollouts", {"release": rid, "stages": "100%", "no_revert": True})
        t_offered = time.monotonic()  # (the rollout's answer: its offers go out at its first step)
        t_done = _wait("every receiver holding its update", lambda: done.value >= len(ids), a.timeout, 0.01)
        if a.profile:
            out["profile"] = gateway.profile_stop()
        served = per_device * len(ids)
        out.update(
            {
                "offers_sent_s": round(t_offered - t0, 2),
                "download_s": round(t_done - t0, 2),
                "served_bytes": served,
                "chunk_bytes_received": data.value - before,
                "served_bytes_per_s": round(served / (t_done - t0)),
            }
        )
        out["ratio"] = round(out["served_bytes_per_s"] / out["raw_bytes_per_s"], 3)
        out["gateway_stats"] = gateway.stats()
    finally:
        for c in children:
            c.terminate()
            c.join(5)
        if gateway is not None:
            gateway.stop()
        broker.stop()
    if a.full_devices:
        out["full"] = _full(work / "full", a)
    return out


def _full(work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """The simulated fleet's figure (fleet_scale's update round), smaller."""
    from . import fleet_scale

    args = ["--update-devices", str(a.full_devices), "--release-kb", str(a.release_kb), "--no-profile"]
    fa = fleet_scale.parse([*args, "--only", "update"])
    r = fleet_scale.measure_update(work, fa)
    return {
        "devices": a.full_devices,
        "download_bytes_per_s": r["download_bytes_per_s"],
        "raw_bytes_per_s": r["raw_broker"]["bytes_per_s"],
        "ratio": r["bytes_per_s_vs_raw"],
        "committed": r["committed"],
        "all_staged_s": r["all_staged_s"],
    }


def report(r: dict[str, Any]) -> None:
    kb = r["bytes_per_device"] / 1024
    print(
        f"update serving: {r['devices']} lightweight receivers, "
        f"{kb:.1f} KiB each ({r['release_files']} files)"
    )
    print(
        f"  raw broker: {r['raw_bytes_per_s'] / 1e6:.1f} MB/s of chunk data to the same receivers; "
        f"gateway served {r['served_bytes_per_s'] / 1e6:.2f} MB/s "
        f"(every receiver done {r['download_s']} s after the rollout began) = x{r['ratio']} of raw (goal 0.5)"
    )
    f = r.get("full")
    if f:
        print(
            f"  beside it, {f['devices']} simulated thermostats (verifying, staging): "
            f"{f['download_bytes_per_s'] / 1e3:.0f} KB/s = x{f['ratio']} of raw 1 KB publishes "
            f"({f['raw_bytes_per_s'] / 1e6:.1f} MB/s); {f['committed']} committed"
        )


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=200, help="lightweight receivers updated at once")
    p.add_argument("--procs", type=int, default=2, help="processes the receivers are spread over")
    p.add_argument("--release-kb", type=int, default=64, help="KiB of incompressible new files")
    p.add_argument("--raw-s", type=float, default=5.0, help="seconds of the raw baseline")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--full-devices", type=int, default=100, help="simulated thermostats beside (0: none)")
    p.add_argument("--profile", action="store_true", help="cProfile the gateway while it serves (slower)")
    return p.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    return run("serve", "pb-bench-serve-", lambda work: measure(work, a), report, OUT)


if __name__ == "__main__":
    sys.exit(main())
