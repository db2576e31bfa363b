"""The update of benchmarks/ota_transfer.py (64 KiB of new files) over
Bluetooth LE instead of MQTT, against a raw write of the same bytes on the
same carrier, measured in the same run.

    .venv/bin/python -m benchmarks.ble_transfer

There is no radio here: the carrier is bluezoo (a BlueZ stand-in, patched
as the tests run it: tests/support/bluez.py) on a private D-Bus system bus.
The gateway's bridge (gateway/ble_line.py, bleak) is on hci0; the device is
a simulated shirt (simulator/device.py: the firmware's runtime and its BLE
link, on CPython) whose GATT peripheral is on hci1. Both ends run in this
process, on one event loop; the bus and bluezoo are processes of their own.
The board's MicroPython has a `bluetooth` module the unix port lacks, so
there is no MicroPython figure for this carrier.

The download is timed at the device's radio, from the offer's last value to
the `staged` status's, less the signature checks the device reports
(`check_ms`); the stream of the blobs alone from the `downloading` status.
The wire is what went over the air both ways in that time: each value, and
the 3 bytes of its ATT header. The baseline is the payload's bytes written
by bleak on hci0 to the bulk characteristic of a bare peripheral on hci1, in
values of the size the bridge uses, each write awaited as the bridge does
(without response), timed until the peripheral has them all. bluezoo models
no radio time: this is the protocol's cost over the GATT path (D-Bus both
ends), not an air rate. Figures go to bench-results/ble.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bleak import BleakClient

from firmware.pb.net.ble_frag import Joiner
from firmware.pb.net.ble_radio import BULK_UUID, SERVICE_UUID
from firmware.pb.net.proof import link_key
from gateway.ble_line import BleBridge
from gateway.broker import BrokerUrl
from gateway.paths import firmware_dir
from gateway.registry import Registry
from gateway.service import Gateway
from gateway.store import Store
from ota.keys import Keys, keygen
from ota.release import Release, build
from simulator.ble_peripheral import BlePeripheral
from simulator.ble_radio import SimRadio
from simulator.clock import SimClock
from simulator.device import VirtualDevice
from tests.support.bluez import BluezStack, scan_for

from . import results
from .ota_transfer import NEW_BYTES, TABLES

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "ble.json"
RUNS = 3
BASELINE_RUNS = 5
TIMEOUT_S = 120.0
ATT_HEADER = 3  # opcode and handle, before each value
HASH = "$7$101$" + "A" * 16 + "$" + "B" * 86 + "=="  # (a broker password's hash: no broker is reached)
NOWHERE = BrokerUrl("127.0.0.1", 1)


def vent_with_tables(into: Path) -> Path:
    """The shirt's vent feature carrying NEW_BYTES of random tables (what a
    factory shirt lacks)."""
    vent = into / "vent"
    shutil.copytree(firmware_dir() / "features" / "vent", vent, ignore=shutil.ignore_patterns("__pycache__"))
    (vent / "tables").mkdir()
    rnd = random.Random(7)
    for i in range(TABLES):
        (vent / "tables" / f"t{i}.bin").write_bytes(rnd.randbytes(NEW_BYTES // TABLES))
    return vent


def lacking(release: Release) -> int:
    """Compressed bytes of the files a factory shirt lacks: the tables."""
    return sum(f.zsize for f in release.files if "/tables/" in f.path)


class Tap:
    """What passes a simulated device's radio: values each way (counted, with
    their ATT headers) joined into frames, with when the update's frames
    passed."""

    def __init__(self, radio: SimRadio) -> None:
        self.bytes = [0, 0]  # device -> gateway, gateway -> device
        self.seen: list[tuple[float, str, dict[str, Any]]] = []  # (time, kind, message) of the update's
        self.changed = asyncio.Event()
        self._in = (Joiner(lean=False), Joiner(lean=False))  # control, bulk
        self._out = Joiner(lean=False)
        written, notify = radio._written, radio.notify

        def write(which: int, value: bytes) -> None:
            self.bytes[1] += len(value) + ATT_HEADER
            self._note(self._in[which].feed(value))
            written(which, value)

        def send(value: bytes) -> bool:
            sent = notify(value)
            if sent:
                self.bytes[0] += len(value) + ATT_HEADER
                self._note(self._out.feed(value))
            return sent

        radio._written = write  # type: ignore[method-assign]
        radio.notify = send  # type: ignore[method-assign]

    def _note(self, frames: Any) -> None:
        now = time.monotonic()
        for kind, payload in frames or ():
            if kind in ("ota/offer", "ota/status"):
                msg = json.loads(bytes(payload))
                msg["_bytes"] = len(payload)
                self.seen.append((now, kind, msg))
                self.changed.set()

    async def wait(self, kind: str, state: str | None, start: int) -> tuple[float, dict[str, Any], int]:
        """The first frame of kind (with state) from index start: (time, message, next index)."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for i in range(start, len(self.seen)):
                t, k, msg = self.seen[i]
                if k == kind and (state is None or msg.get("state") == state):
                    return t, msg, i + 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {kind} {state or ''} within {TIMEOUT_S:g} s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1)

    def snapshot(self) -> tuple[int, int]:
        return self.bytes[0], self.bytes[1]


async def until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.02)
    return got


async def one_update(folder: Path, keys: Keys, release: Release, n: int) -> dict[str, Any]:
    """A factory shirt on adapter hci<n>, new to the gateway's hci0, and a
    fresh gateway: the shirt updated to release."""
    dev, password = f"bench-ble-{n}", f"pw-{os.urandom(6).hex()}"
    store = Store(folder / "gw.db")
    Registry(store).register(dev, "shirt", "shirt-v1", HASH, time.time(), link_key(dev, password).hex())
    gw = Gateway(NOWHERE, store, api=None, keys=keys)
    gw.carriers.append(BleBridge(gw, "hci0"))
    shirt = VirtualDevice(
        dev,
        "shirt",
        NOWHERE,
        folder / "devices",
        SimClock(),
        1,
        password=password,
        root=keys.root_bytes,
        trial_s=0,
        telemetry_s=3600,
        ble_adapter=f"hci{n}",
    )
    tasks = [asyncio.create_task(gw.run(), name="gateway"), asyncio.create_task(shirt.run(), name=dev)]
    try:
        await until(lambda: (d := store.device(dev)) and d.online and dev in gw.lines, 60, "the shirt online")
        radio = shirt.hal.ble
        assert radio is not None
        tap = Tap(radio)
        gw.ota.releases.add(release.path, time.time())
        await gw.ota.start(dev, f"shirt@{release.counter}")
        t_offer, offer, i = await tap.wait("ota/offer", None, 0)
        base = tap.snapshot()
        t_dl, _, i = await tap.wait("ota/status", "downloading", i)
        t_staged, staged, i = await tap.wait("ota/status", "staged", i)
        at_staged = tap.snapshot()
        t_done, _, _ = await tap.wait("ota/status", "committed", i)
        return results.one_update((t_offer, t_dl, t_staged, t_done), staged, offer, (base, at_staged))
    finally:
        shirt.stop()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 10)
        if shirt.hal.ble is not None:
            await shirt.hal.ble.stop()
        store.close()


async def raw_writes(adapter: str, sizes: list[int]) -> dict[int, dict[str, Any]]:
    """For each size, the median seconds of writing that many random bytes
    to the bulk characteristic of a bare peripheral on adapter, as the
    bridge writes."""
    got = [0]
    want = [0]
    arrived = asyncio.Event()

    def on_bulk(value: bytes) -> None:
        got[0] += len(value)
        if got[0] >= want[0]:
            arrived.set()

    out: dict[int, dict[str, Any]] = {}
    async with BlePeripheral(adapter, on_control=lambda v: None, on_bulk=on_bulk):
        found = await scan_for(SERVICE_UUID, "hci0")
        async with BleakClient(found, bluez={"adapter": "hci0"}) as client:
            char = client.services.get_characteristic(BULK_UUID)
            assert char is not None
            size = char.max_write_without_response_size
            for n in sizes:
                payload = os.urandom(n)
                times = []
                for _ in range(BASELINE_RUNS):
                    got[0], want[0] = 0, n
                    arrived.clear()
                    t0 = time.monotonic()
                    for at in range(0, n, size):
                        await client.write_gatt_char(char, payload[at : at + size], response=False)
                    await asyncio.wait_for(arrived.wait(), TIMEOUT_S)
                    times.append(time.monotonic() - t0)
                out[n] = {"median_s": statistics.median(times), "runs": len(times), "value_bytes": size}
    return out


async def measure(work: Path) -> dict[str, Any]:
    keys = keygen(work / "keys")
    release = build("shirt", [vent_with_tables(work / "src")], "bench-ble", work / "r", 2, ("py",), keys)
    # one bus and bluezoo for the run: the gateway on hci0, each update's
    # shirt on an adapter of its own, the baseline's peripheral on the last
    addresses = tuple(f"00:00:5E:00:53:{i:02X}" for i in range(RUNS + 2))
    stack = BluezStack(work / "bluez", addresses, verbose=False).start()
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = stack.address
    try:
        runs = []
        for n in range(1, RUNS + 1):
            folder = work / f"run{n}"
            folder.mkdir()
            runs.append(await one_update(folder, keys, release, n))
        payload = len(release.manifest) + lacking(release) + runs[0]["offer_bytes"]
        raw = await raw_writes(stack.adapters[-1], sorted({payload, lacking(release)}))
    finally:
        stack.stop()
    return {
        "raw_write": {str(n): b for n, b in raw.items()},
        "cpython": results.summary(
            runs, payload, raw[payload]["median_s"], raw[lacking(release)]["median_s"]
        ),
    }


def report(r: dict[str, Any]) -> None:
    print(
        "OTA update of 64 KiB over Bluetooth LE (bleak and a GATT peripheral on bluezoo), gateway -> device"
    )
    for n, b in r["raw_write"].items():
        print(
            f"  baseline: {n} B written raw to bulk in values of {b['value_bytes']} B: "
            f"{b['median_s'] * 1000:.1f} ms (median of {b['runs']})"
        )
    d = r["cpython"]
    print(
        f"  CPython device (the simulated shirt), median of {d['runs']} ({d['payload_bytes']} B of payload):"
    )
    print(
        f"    download (offer -> staged, less checks) {d['transfer_s'] * 1000:8.1f} ms  "
        f"x{d['transfer_vs_raw_write']:7.2f} the raw write"
    )
    print(
        f"    the blobs' stream                       {d['stream_s'] * 1000:8.1f} ms  "
        f"x{d['stream_vs_raw_write']:7.2f} a raw write of the blobs"
    )
    print(f"    signature checks (apart)                {d['check_s'] * 1000:8.1f} ms")
    print(f"    update (offer -> committed)             {d['update_s'] * 1000:8.1f} ms")
    print(f"    wire, download: {d['wire_bytes_per_payload_byte']:.3f} B per payload B (ATT headers counted)")


def main() -> int:
    return results.run("BLE", "pb-bench-ble-", lambda work: asyncio.run(measure(work)), report, OUT)


if __name__ == "__main__":
    sys.exit(main())
