"""Updates on the real MicroPython unix port with a 128 KB heap, and one test
per attack. The gateway's OTA side is played by tests/support/ota_server.py,
so that it can misbehave as an attacker who owns the gateway or the network
would. Every attack must leave the device on its old set with the reason."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from ota import keys as ota_keys
from ota.release import Release

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.ota_server import OtaServer
from ..support.processes import DeviceProcess
from ..support.wait import wait_for
from .conftest import offer_of, ota_device, running_set, serve

pytestmark = pytest.mark.slow

FIRMWARE = Path(__file__).parents[2] / "firmware" / "features"


# ---- the update works --------------------------------------------------------


def test_update_to_release_2_on_micropython_128k(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys, record_property: Any
) -> None:
    total = sum(f.size for f in release2.files if f.path.startswith("eco/"))
    assert total >= 64 * 1024 and device.heap == os.environ.get("PB_HEAP", "128K")
    srv = serve(mosquitto, device, offer_of(release2, keys))
    try:
        t0 = time.monotonic()
        done = srv.wait_for(("committed", "failed", "rolled_back"), 90)
        record_property("update_s", round(time.monotonic() - t0, 2))
        assert done["state"] == "committed", (done, srv.seen, device.output()[-3000:])
        states = [s["state"] for s in srv.seen]
        for s in ("offered", "downloading", "staged", "activating", "trial", "committed"):
            assert s in states, states
        assert running_set(device) == (2, release2.sha256, ["eco", "thermostat"])
        # only what the device lacked came over the wire: eco's files, not the thermostat's
        eco = sum(f.zsize for f in release2.files if f.path.startswith("eco/"))
        assert sum(v for k, v in srv.served.items() if k != "manifest") == eco
        # and the new feature runs: eco reports in the log of the device's boot
        wait_for(lambda: "features eco,thermostat" in device.output(), 10, what="eco running")
        # the free heap while the download runs (update mode, beside the link only)
        line = next(x for x in device.output().splitlines() if "update mode: downloading, heap free" in x)
        heap = int(line.rsplit(" ", 1)[1])
        record_property("heap_free_during_update", heap)
        print(f"\nfree heap during an update under -X heapsize=128K: {heap} bytes")
        assert heap > 8 * 1024, f"only {heap} bytes left while downloading"
    finally:
        srv.close()


# ---- safe mode ---------------------------------------------------------------


def test_a_board_with_no_usable_set_runs_in_safe_mode_until_an_update_brings_one(
    mosquitto: Mosquitto, make_device: MakeDevice, release2: Release, keys: ota_keys.Keys
) -> None:
    # flashed with the runtime only (its features folder lost): no features,
    # actuators safe, but online, reporting why, and open to an update
    dev = ota_device(mosquitto, make_device, keys, start=False)
    shutil.rmtree(dev.path / "features")
    dev.set_sensors(temperature=15.0)  # cold: a thermostat would heat
    srv = OtaServer(mosquitto, dev.id, offer_of(release2, keys))
    try:
        dev.start()
        said = srv.wait_for(("safe_mode",), 30)
        assert said["reason"].startswith("no usable feature set"), said
        time.sleep(1)
        assert dev.running and dev.actuators().get("relay") is not True, dev.output()
        srv.offer()
        assert srv.wait_for(("committed", "failed", "rolled_back"), 90)["state"] == "committed"
    finally:
        srv.close()
    assert running_set(dev)[:2] == (2, release2.sha256)
    wait_for(lambda: dev.actuators().get("relay") is True, 30, what="the thermostat heating again")
