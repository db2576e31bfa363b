"""Updates that carry the runtime (pb/) beside the features, on the real
MicroPython unix port (docs/ota.md 2.1, 4.5): the boot loader runs a slot's
runtime with the slot's features, counts its trial boots and, when it does
not commit, brings back the previous runtime and feature set together.

A release with the whole runtime lists some 48 files (an 11 KB manifest).
A 128 KB board checks its signatures at boot, but update mode cannot yet
hold its file list beside the link (docs/ota.md 2.1), so these updates run
on a larger heap; the runtime they install then runs on 128 KB, which the
first test checks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from gateway.paths import firmware_dir
from ota import keys as ota_keys
from ota.release import Release, build

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.processes import SMALL_HEAP, DeviceProcess
from ..support.wait import wait_for
from .conftest import feature_sources, offer_of, ota_device, running_set, serve
from .test_ota_device import retained_hello

pytestmark = pytest.mark.slow

FACTORY_VERSION = re.search(r'VERSION = "([^"]+)"', (firmware_dir() / "pb" / "__init__.py").read_text())
NEW_VERSION = "0.2.99"
UPDATE_HEAP = "256K"  # what update mode takes for the file list of the whole runtime


@pytest.fixture
def device(mosquitto: Mosquitto, make_device: MakeDevice, keys: ota_keys.Keys) -> DeviceProcess:
    dev = ota_device(mosquitto, make_device, keys, start=False)
    dev.heap = UPDATE_HEAP
    dev.start()
    wait_for(lambda: "booted" in dev.output(), 15, what="device boot")
    return dev


def runtime_release(tmp: Path, keys: ota_keys.Keys, counter: int, crash: bool) -> Release:
    """thermostat with a runtime of VERSION NEW_VERSION; crash: one whose
    start raises before the device connects (so it never commits)."""
    pb = tmp / "runtime" / "pb"
    shutil.copytree(firmware_dir() / "pb", pb, ignore=shutil.ignore_patterns("__pycache__"))
    init = pb / "__init__.py"
    init.write_text(re.sub(r'VERSION = "[^"]+"', f'VERSION = "{NEW_VERSION}"', init.read_text()))
    if crash:
        start = pb / "start.py"
        text = start.read_text()
        text = text.replace(
            "    from .hal import Reboot\n",
            '    from .hal import Reboot\n\n    raise RuntimeError("this runtime is broken")\n',
            1,
        )
        assert "this runtime is broken" in text
        start.write_text(text)
    src = feature_sources(tmp / "src", ("thermostat",))
    return build("thermostat", src, f"rt-{counter}", tmp / "r", counter, ("mpy",), keys, runtime=pb)


def test_a_release_with_a_good_runtime_commits_and_the_device_runs_it(
    mosquitto: Mosquitto, device: DeviceProcess, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    assert FACTORY_VERSION is not None and FACTORY_VERSION.group(1) != NEW_VERSION
    release = runtime_release(tmp_path, keys, 7, crash=False)
    assert json.loads(json.loads(release.manifest)["signed"])["runtime"] == NEW_VERSION
    srv = serve(mosquitto, device, offer_of(release, keys))
    try:
        done = srv.wait_for(("committed", "failed", "rolled_back"), 120)
    finally:
        srv.close()
    assert done["state"] == "committed", (done, srv.seen, device.output()[-3000:])
    counter, manifest, names = running_set(device)
    assert (counter, manifest, names) == (7, release.sha256, ["thermostat"])
    slot = json.loads((device.path / "ota" / "active.json").read_text())["set"]
    assert (device.path / slot / "pb" / "__init__.mpy").is_file()
    # the hello states the slot's runtime: the device runs it
    wait_for(lambda: retained_hello(mosquitto, device.id)["runtime"] == NEW_VERSION, 30, what="new runtime")
    # and runs it again after a power cut, committed, on a 128 KB heap
    device.kill()
    device.heap = SMALL_HEAP
    device.start()
    wait_for(lambda: retained_hello(mosquitto, device.id)["reset_cause"] == "power_on", 30, what="power_on")
    hello = retained_hello(mosquitto, device.id)
    assert hello["runtime"] == NEW_VERSION and hello["ota"]["state"] == "committed", hello
    assert running_set(device) == (7, release.sha256, ["thermostat"])
    heap = int(re.findall(r"heap free (\d+)\)", device.output())[-1])
    print(f"\nfree heap after start on a runtime from a slot under -X heapsize={SMALL_HEAP}: {heap} bytes")
    assert heap > 8 * 1024, heap


def test_a_release_whose_runtime_crashes_at_start_rolls_back_runtime_and_features(
    mosquitto: Mosquitto, device: DeviceProcess, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    release = runtime_release(tmp_path, keys, 8, crash=True)
    srv = serve(mosquitto, device, offer_of(release, keys))
    try:
        done = srv.wait_for(("committed", "failed", "rolled_back"), 120)
    finally:
        srv.close()
    assert done["state"] == "rolled_back", (done, srv.seen, device.output()[-3000:])
    assert done["reason"].startswith("trial did not commit in 3 boots"), done
    assert "this runtime is broken" in device.output()
    # back on the factory set: its runtime and its features, never a mix
    assert running_set(device) == (0, None, ["thermostat"])
    pointer = json.loads((device.path / "ota" / "active.json").read_text())
    assert (pointer["set"], pointer["state"]) == ("features", "committed")
    assert FACTORY_VERSION is not None
    wait_for(
        lambda: retained_hello(mosquitto, device.id)["runtime"] == FACTORY_VERSION.group(1),
        30,
        what="the factory runtime",
    )
    wait_for(lambda: "features thermostat" in device.output().rsplit("booted", 1)[-1], 20, what="factory set")
