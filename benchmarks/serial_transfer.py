"""The update of benchmarks/ota_transfer.py (64 KiB of new files) over a
serial line instead of MQTT, against a raw write of the same bytes on the
same line, measured in the same run.

    .venv/bin/python -m benchmarks.serial_transfer

The line is a pair of ptys joined here by a relay thread (what socat does),
which counts the bytes each way and reads the frames on it
(firmware/pb/net/frames.py): the download is timed from the offer's frame
to the `staged` status's, less the signature checks the device reports
(`check_ms`); the stream of the blobs alone from the first `downloading`
status. The baseline is the payload's bytes written on the gateway's end
with pyserial and read whole at the device's end, through the same relay.
A pty takes bytes as fast as they come: this is the protocol's cost over a
byte stream, not a UART's baud rate. The gateway is its own process
(`permabeta gateway run --serial`), the device the device runtime itself on
CPython and, if the micropython binary is there, on the MicroPython unix port
with a 128 KB heap. Figures go to bench-results/serial.json.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any

import serial

from firmware.pb.net.frames import Decoder
from firmware.pb.net.proof import link_key
from gateway.broker import BrokerUrl
from gateway.cli_registry import password_hash
from gateway.client import ApiClient
from gateway.errors import ApiRequestError
from gateway.provision import provision_into
from ota.keys import keygen
from ota.release import Release, build
from tests.support.mosquitto import Mosquitto
from tests.support.processes import SMALL_HEAP, DeviceProcess, GatewayProcess

from . import results
from .ota_transfer import eco_with_tables, fixed_bytes, lacking

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "serial.json"
MICROPYTHON = Path(sys.executable).parent / "micropython"
RUNS = 3
BASELINE_RUNS = 10
TIMEOUT_S = 120.0


class Cable:
    """Two ptys, dev and gw (links in folder), joined by a thread that
    counts the bytes each way and notes when frames of the update pass."""

    def __init__(self, folder: Path) -> None:
        self.dev = str(folder / "dev")
        self.gw = str(folder / "gw")
        ends = [os.openpty(), os.openpty()]
        for (_, slave), link in zip(ends, (self.dev, self.gw), strict=True):
            tty.setraw(slave)
            os.symlink(os.ttyname(slave), link)
        self._masters = (ends[0][0], ends[1][0])
        self._slaves = (ends[0][1], ends[1][1])  # (held open: a side closed and opened again is no hang-up)
        self.bytes = [0, 0]  # device -> gateway, gateway -> device
        self.seen: list[tuple[float, str, bytes]] = []  # (time, kind, payload) of the update's frames
        self._dec = (Decoder(), Decoder())
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        dev_m, gw_m = self._masters
        while not self._stop:
            ready, _, _ = select.select([dev_m, gw_m], [], [], 0.1)
            for m in ready:
                try:
                    data = os.read(m, 65536)
                except OSError:
                    continue
                way = 0 if m == dev_m else 1
                os.write(gw_m if way == 0 else dev_m, data)
                t = time.monotonic()
                with self._lock:
                    self.bytes[way] += len(data)
                    for kind, payload in self._dec[way].feed(data):
                        if kind in ("ota/offer", "ota/status"):
                            self.seen.append((t, kind, payload))

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.bytes[0], self.bytes[1]

    def wait(
        self, kind: str, state: str | None, after: int, timeout: float
    ) -> tuple[float, dict[str, Any], int]:
        """The first frame of kind (an ota/status of state) from the
        after-th seen on: (its time, its message, its index)."""
        deadline = time.monotonic() + timeout
        i = after
        while time.monotonic() < deadline:
            with self._lock:
                seen = list(self.seen[i:])
            for j, (t, k, payload) in enumerate(seen, start=i):
                msg = json.loads(payload)
                if k == "ota/status" and msg.get("state") in ("failed", "rolled_back"):
                    raise RuntimeError(f"update {msg['state']}: {msg.get('reason')}")
                if k == kind and (state is None or msg.get("state") == state):
                    return t, msg | {"_bytes": len(payload)}, j + 1
            i += len(seen)
            time.sleep(0.002)
        raise TimeoutError(f"no {kind} {state or ''} on the line within {timeout:g} s")

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for fd in (*self._masters, *self._slaves):
            os.close(fd)
        for link in (self.dev, self.gw):
            os.unlink(link)


def raw_write(cable: Cable, payload: bytes) -> float:
    """Seconds to write payload on the gateway's end and read it whole at the device's."""
    with serial.Serial(cable.gw, 115200, timeout=0) as gw, serial.Serial(cable.dev, 115200, timeout=5) as dev:
        dev.reset_input_buffer()
        # (written from a thread of its own: a pty holds a few KB, and the
        # reader must take them as they come, as the device does)
        writer = threading.Thread(target=gw.write, args=(payload,))
        t0 = time.monotonic()
        writer.start()
        got = 0
        while got < len(payload):
            got += len(dev.read(len(payload) - got))
        t = time.monotonic() - t0
        writer.join()
        return t


def baseline(cable: Cable, n: int) -> dict[str, Any]:
    payload = os.urandom(n)
    times = [raw_write(cable, payload) for _ in range(BASELINE_RUNS)]
    return {"bytes": n, "median_s": statistics.median(times), "runs": len(times)}


class Bench:
    def __init__(self, work: Path, broker: Mosquitto, keys: Any) -> None:
        self.work = work
        self.broker = broker
        self.keys = keys
        self.n = 0

    def run(self, release: Release, interpreter: str) -> dict[str, Any]:
        """One update of a fresh device on a fresh cable and gateway."""
        self.n += 1
        folder = self.work / f"run{self.n}"
        folder.mkdir()
        cable = Cable(folder)
        gw = GatewayProcess(
            self.broker.gateway_url,
            folder / "gw.db",
            folder / "gw.log",
            ["--keys", str(self.keys.path), "--serial", cable.gw],
        )
        dev_id, password = f"bench-sl-{self.n}", f"pw-{os.urandom(6).hex()}"
        provision_into(
            folder / dev_id,
            "thermostat",
            dev_id,
            BrokerUrl("127.0.0.1", self.broker.port),
            password=password,
            compile_mpy=interpreter == "micropython",
            root=self.keys.root_bytes,
            trial_s=0,
            telemetry_s=3600,
            serial_line=(cable.dev, 115200),
        )
        device = DeviceProcess(folder / dev_id, interpreter, heap=SMALL_HEAP)
        device.set_sensors(temperature=20.0)
        try:
            gw.start()
            api = ApiClient.from_db(gw.db)
            api.request(
                "PUT",
                f"/api/v1/devices/{dev_id}/registration",
                {
                    "model": "thermostat",
                    "board": "thermostat-v1",
                    "password_hash": password_hash(dev_id, password),
                    "link_key": link_key(dev_id, password).hex(),
                },
            )
            from gateway.archive import TAR_TYPE, pack_release

            rid = api.upload("/api/v1/releases", pack_release(release), TAR_TYPE)["id"]
            device.start()
            deadline = time.monotonic() + 30
            while True:
                try:
                    api.request("POST", f"/api/v1/devices/{dev_id}/update", {"release": rid})
                    break
                except ApiRequestError as exc:
                    if exc.code not in ("unknown_device", "offline") or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            t_offer, offer, i = cable.wait("ota/offer", None, 0, TIMEOUT_S)
            base = cable.snapshot()  # (taken at once: the device answers the offer after this)
            t_dl, _, i = cable.wait("ota/status", "downloading", i, TIMEOUT_S)
            t_staged, staged, i = cable.wait("ota/status", "staged", i, TIMEOUT_S)
            at_staged = cable.snapshot()
            t_done, _, _ = cable.wait("ota/status", "committed", i, TIMEOUT_S)
            figures = results.one_update((t_offer, t_dl, t_staged, t_done), staged, offer, (base, at_staged))
            return figures | {"update_mode": "update mode" in device.output()}
        except Exception:
            print(device.output()[-3000:], file=sys.stderr)
            print(gw.log.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            device.kill()
            gw.stop()
            cable.close()


def summarize(runs: list[dict[str, Any]], release: Release, raw: dict[int, float]) -> dict[str, Any]:
    payload = fixed_bytes(release) + runs[0]["offer_bytes"]
    figures = results.summary(runs, payload, raw[payload], raw[lacking(release)[0]])
    return figures | {"update_mode": any(r["update_mode"] for r in runs)}


def measure(work: Path) -> dict[str, Any]:
    keys = keygen(work / "keys")
    src = eco_with_tables(work / "src")
    releases = {"cpython": build("thermostat", src, "bench-py", work / "r-py", 2, ("py",), keys)}
    if MICROPYTHON.exists():
        releases["micropython_128k"] = build(
            "thermostat", src, "bench-mpy", work / "r-mpy", 3, ("mpy",), keys
        )
    broker = Mosquitto(work / "mosquitto")  # (the gateway wants one; the device never uses it)
    broker.start()
    try:
        bench = Bench(work, broker, keys)
        runs = {
            name: [bench.run(r, "python" if name == "cpython" else "micropython") for _ in range(RUNS)]
            for name, r in releases.items()
        }
        sizes = set()
        for name, r in releases.items():
            sizes |= {fixed_bytes(r) + runs[name][0]["offer_bytes"], lacking(r)[0]}
        (work / "raw").mkdir()
        cable = Cable(work / "raw")
        try:
            raw = {n: baseline(cable, n) for n in sorted(sizes)}
        finally:
            cable.close()
        out: dict[str, Any] = {"raw_write": {str(n): b for n, b in raw.items()}}
        for name, r in releases.items():
            out[name] = summarize(runs[name], r, {n: b["median_s"] for n, b in raw.items()})
        return out
    finally:
        broker.stop()


def report(r: dict[str, Any]) -> None:
    print("OTA update of 64 KiB over a serial line (a pty pair), gateway -> device")
    for n, b in r["raw_write"].items():
        print(
            f"  baseline: {n} B written raw on the line: {b['median_s'] * 1000:.2f} ms "
            f"(median of {b['runs']})"
        )
    for name, label in (("cpython", "CPython device"), ("micropython_128k", "MicroPython, 128K heap")):
        if name not in r:
            continue
        d = r[name]
        mode = ", in update mode" if d["update_mode"] else ""
        print(f"  {label}{mode}, median of {d['runs']} ({d['payload_bytes']} B of payload):")
        print(
            f"    download (offer -> staged, less checks) {d['transfer_s'] * 1000:8.1f} ms  "
            f"x{d['transfer_vs_raw_write']:7.1f} the raw write"
        )
        print(
            f"    the blobs' stream                       {d['stream_s'] * 1000:8.1f} ms  "
            f"x{d['stream_vs_raw_write']:7.1f} a raw write of the blobs"
        )
        print(f"    signature checks (apart)                {d['check_s'] * 1000:8.1f} ms")
        print(f"    update (offer -> committed)             {d['update_s'] * 1000:8.1f} ms")
        print(f"    wire, download: {d['wire_bytes_per_payload_byte']:.3f} B per payload B")


def main() -> int:
    return results.run("serial", "pb-bench-serial-", measure, report, OUT)


if __name__ == "__main__":
    sys.exit(main())
