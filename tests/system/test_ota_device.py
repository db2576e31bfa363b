"""Updates on the real MicroPython unix port with a 128 KB heap, and one test
per attack. The gateway's OTA side is played by tests/support/ota_server.py,
so that it can misbehave as an attacker who owns the gateway or the network
would. Every attack must leave the device on its old set with the reason."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ota import keys as ota_keys
from ota.envelope import sign_envelope
from ota.release import Release

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.ota_server import Offer, OtaServer, Tamper
from ..support.processes import DeviceProcess
from ..support.wait import wait_for
from .conftest import ota_device, running_set

pytestmark = pytest.mark.slow

FIRMWARE = Path(__file__).parents[2] / "firmware" / "features"


def offer_of(release: Release, keys: ota_keys.Keys, ttl: float = 3600, now: float | None = None) -> Offer:
    blobs = {f.zsha256: release.blob_path(f).read_bytes() for f in release.files}
    fresh = ota_keys.freshness(keys, release.model, release.counter, release.sha256, ttl, now or time.time())
    return Offer(release.manifest, blobs, fresh)


def resigned(release: Release, body: dict[str, Any], key: Any) -> bytes:
    """A manifest envelope of body, signed by key (an attacker's or a stolen one)."""
    return sign_envelope(body, [key])


@pytest.fixture
def device(mosquitto: Mosquitto, make_device: MakeDevice, keys: ota_keys.Keys) -> Iterator[DeviceProcess]:
    yield ota_device(mosquitto, make_device, keys)


def assert_on_factory(dev: DeviceProcess) -> None:
    counter, _, names = running_set(dev)
    assert (counter, names) == (0, ["thermostat"])
    assert not (dev.path / "ota" / "stage").exists() or not os.listdir(dev.path / "ota" / "stage")
    assert dev.running


def serve(mosquitto: Mosquitto, dev: DeviceProcess, offer: Offer, tamper: Tamper | None = None) -> OtaServer:
    srv = OtaServer(mosquitto, dev.id, offer, tamper)
    srv.offer()
    return srv


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
    finally:
        srv.close()
