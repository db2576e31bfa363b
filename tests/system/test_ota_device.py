"""Updates on the real MicroPython unix port with a 128 KB heap, and one test
per attack. The gateway's OTA side is played by tests/support/ota_server.py,
so that it can misbehave as an attacker who owns the gateway or the network
would. Every attack must leave the device on its old set with the reason."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from ota import keys as ota_keys
from ota.release import Release, build

from ..conftest import MakeDevice
from ..support.mosquitto import GATEWAY_PASSWORD, GATEWAY_USER, Mosquitto
from ..support.mqtt import TestClient
from ..support.ota_server import OtaServer
from ..support.processes import DeviceProcess
from ..support.wait import wait_for
from .conftest import hungry_release, offer_of, ota_device, running_set, serve

pytestmark = pytest.mark.slow

FIRMWARE = Path(__file__).parents[2] / "firmware" / "features"


# ---- the update works --------------------------------------------------------


@pytest.mark.long
def test_update_to_release_2_on_micropython_128k(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys, record_property: Any
) -> None:
    total = sum(f.size for f in release2.files if f.path.startswith("eco/"))
    assert total >= 64 * 1024 and device.heap == os.environ.get("PB_HEAP", "128K")
    srv = serve(mosquitto, device, offer_of(release2, keys))
    try:
        t0 = time.monotonic()
        try:
            done = srv.wait_for(("committed", "failed", "rolled_back"), 90)
        except AssertionError:
            raise AssertionError(
                f"no outcome; statuses {srv.seen[:6]}; device: {device.output()[-3000:]}"
            ) from None
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
    # every boot after the first followed a reset the device did itself (to
    # install, then to start the trial), and its hello says so
    causes = re.findall(r"booted \((\w+), boot (\d+)", device.output())
    assert causes[0] == ("power_on", "1") and len(causes) >= 2, causes
    assert all(cause == "hard" for cause, _ in causes[1:]), causes
    # (the hello may follow the birth, on a heap short of a block for it)
    # (a heap too fragmented for the hello after the commit: the device restarts after 15 s
    # without one, pb/runtime.py _no_ram, and its next boot says it)
    try:
        wait_for(lambda: retained_hello(mosquitto, device.id)["reset_cause"] == "hard", 45, what="hard")
    except AssertionError as exc:  # (what the device said, to tell why)
        raise AssertionError(f"{exc}; the device said:\n{device.output()[-3000:]}") from None
    # and a power cut is a power cut
    device.kill()
    device.start()
    wait_for(lambda: retained_hello(mosquitto, device.id)["reset_cause"] == "power_on", 20, what="power_on")


@pytest.mark.long
def test_a_128k_board_keeps_a_whole_trial_of_eco_and_commits(
    mosquitto: Mosquitto, make_device: MakeDevice, release2: Release, keys: ota_keys.Keys
) -> None:
    """thermostat and eco on trial at 128 KB for longer than the 15 s a device
    waits for the RAM its hello needs (pb/runtime.py _no_ram): the set
    commits, and its hello says so. (At 128 KB the heap of a set on trial had
    no room for the hello, whose code also loaded pb/ota/flash.py: the device
    restarted after 15 s, three times, and rolled a good set back.)"""
    device = ota_device(mosquitto, make_device, keys, ota_trial_s=20)
    srv = serve(mosquitto, device, offer_of(release2, keys))
    try:
        done = srv.wait_for(("committed", "failed", "rolled_back"), 120)
        assert done["state"] == "committed", (done, device.output()[-3000:])
    finally:
        srv.close()
    assert "reset (memory)" not in device.output(), device.output()[-3000:]
    try:  # (the hello, with the RAM the trial gave back)
        wait_for(
            lambda: retained_hello(mosquitto, device.id)["ota"]["state"] == "committed", 15, what="hello"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the device said:\n{device.output()[-3000:]}") from None


def retained_hello(mosquitto: Mosquitto, dev: str) -> dict[str, Any]:
    """The device's hello as the broker keeps it for the gateway."""
    c = TestClient(mosquitto, GATEWAY_USER, GATEWAY_PASSWORD)
    try:
        c.subscribe(f"pb/{dev}/hello")
        got = [json.loads(p) for t, p, _ in c.messages(2)]
    finally:
        c.close()
    assert got, f"no retained hello of {dev}"
    return dict(got[-1])


# ---- a trial that runs out of RAM ---------------------------------------------


@pytest.mark.parametrize("step", ["import", "start"])
@pytest.mark.long  # (make long: make test stays within 10 minutes)
def test_a_release_out_of_ram_at_its_trial_rolls_back_saying_where(
    mosquitto: Mosquitto, device: DeviceProcess, keys: ota_keys.Keys, tmp_path: Path, step: str
) -> None:
    release = hungry_release(tmp_path, keys, step)
    srv = serve(mosquitto, device, offer_of(release, keys))
    try:
        done = srv.wait_for(("committed", "failed", "rolled_back"), 120)
    finally:
        srv.close()
    assert done["state"] == "rolled_back", (done, device.output()[-3000:])
    # the reason the gateway gets names the MemoryError, the feature and the step
    reason = done["reason"]
    assert reason.startswith("trial did not commit in 3 boots; the last ended by MemoryError"), reason
    assert reason.endswith(f"at {step} of feature hungry"), reason
    assert len(reason) <= 200
    assert running_set(device) == (0, None, ["thermostat"])
    wait_for(lambda: "features thermostat" in device.output().rsplit("booted", 1)[-1], 20, what="factory set")


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


# ---- the form of the modules ---------------------------------------------------


def test_a_board_refuses_a_source_only_release_saying_why(
    mosquitto: Mosquitto, device: DeviceProcess, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    release = build(
        "thermostat", [FIRMWARE / "thermostat", FIRMWARE / "eco"], "2.1", tmp_path / "r", 6, ("py",), keys
    )
    srv = serve(mosquitto, device, offer_of(release, keys))
    try:
        done = srv.wait_for(("committed", "failed", "rolled_back"), 60)
    finally:
        srv.close()
    assert done["state"] == "failed", (done, device.output()[-3000:])
    assert (
        done["reason"] == "wrong_form: eco/__init__.py has no .mpy form, which this device (MicroPython) runs"
    )
    assert list(srv.served) == ["manifest"]  # refused before any blob came
    assert running_set(device) == (0, None, ["thermostat"]) and device.running


@pytest.mark.parametrize("interpreter", ["micropython", "python"])
@pytest.mark.long  # (make long: make test stays within 10 minutes)
def test_one_release_of_both_forms_serves_the_unix_port_and_cpython(
    mosquitto: Mosquitto,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    both_forms_release: Release,
    interpreter: str,
) -> None:
    dev = ota_device(mosquitto, make_device, keys, interpreter=interpreter)
    form = "mpy" if interpreter == "micropython" else "py"
    srv = serve(mosquitto, dev, offer_of(both_forms_release, keys))
    try:
        done = srv.wait_for(("committed", "failed", "rolled_back"), 90)
    finally:
        srv.close()
    assert done["state"] == "committed", (done, dev.output()[-3000:])
    assert running_set(dev) == (2, both_forms_release.sha256, ["eco", "thermostat"])
    # it fetched and installed only its form of eco (the thermostat's is held)
    eco = {f.zsha256: f.zsize for f in both_forms_release.files_for(form) if f.feature == "eco"}
    assert {k: v for k, v in srv.served.items() if k != "manifest"} == eco
    slot = dev.path / json.loads((dev.path / "ota" / "active.json").read_text())["set"] / "features" / "eco"
    assert sorted(os.listdir(slot)) == [f"__init__.{form}", "manifest.json"]
    wait_for(lambda: "features eco,thermostat" in dev.output(), 20, what="eco running")
    # the boot after the install followed the device's own reset, under either interpreter
    # (a boot more when a trial boot on a fragmented 128 KB heap resets for RAM)
    hello = wait_for(
        lambda: (h := retained_hello(mosquitto, dev.id)).get("boot_count", 0) >= 2 and h,
        30,
        what="the trial boot's hello",
    )
    assert hello["reset_cause"] == "hard"
