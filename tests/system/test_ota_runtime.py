"""Updates that carry the runtime (pb/) beside the features, on the real
MicroPython unix port (docs/ota.md 2.1, 4.5): the boot loader runs a slot's
runtime with the slot's features, counts its trial boots and, when it does
not commit, brings back the previous runtime and feature set together.

A release with the whole runtime lists some 48 files (an 11 KB manifest).
Everything here runs on a 128 KB heap: update mode reads the need list the
boot's check wrote, never the manifest (docs/ota.md 4.3), and the trial
boots, the commit and the boots after it run the slot's runtime. The
download fetches only the modules the running runtime lacks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from firmware.pb import API
from gateway.paths import firmware_dir
from ota import keys as ota_keys
from ota.release import Release, build

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.ota_server import OtaServer
from ..support.processes import SMALL_HEAP, DeviceProcess
from ..support.wait import wait_for
from .conftest import feature_sources, offer_of, ota_device, running_set, serve
from .test_ota_device import retained_hello

pytestmark = pytest.mark.slow

FACTORY_VERSION = re.search(r'VERSION = "([^"]+)"', (firmware_dir() / "pb" / "__init__.py").read_text())
NEW_VERSION = "0.2.99"


@pytest.fixture
def device(mosquitto: Mosquitto, make_device: MakeDevice, keys: ota_keys.Keys) -> DeviceProcess:
    dev = ota_device(mosquitto, make_device, keys)
    assert dev.heap == SMALL_HEAP, "the updates of a whole runtime are a 128 KB board's"
    return dev


def runtime_release(
    tmp: Path,
    keys: ota_keys.Keys,
    counter: int,
    crash: bool,
    mark: str = "",
    every: bool = False,
    api: int = API,
    board: bool = False,
) -> Release:
    """thermostat with a runtime of VERSION NEW_VERSION; crash: one whose
    start raises before the device connects (so it never commits); mark: a
    value added to pb/values.py (that one module changed); every: each
    module changed (the device fetches the whole runtime); api: the API of
    that runtime, which its features are written against; board: its
    thermostat board file gains a pressure sensor (pb/boards/)."""
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
    if mark:
        values = pb / "values.py"
        values.write_text(values.read_text() + f"\nRELEASE_MARK = {mark!r}\n")
    for module in sorted(pb.rglob("*.py")) if every else ():
        module.write_text(module.read_text() + "\n_RELEASE = 2\n")
    if board:
        (pb / "boards").mkdir()
        b = json.loads((firmware_dir() / "boards" / "thermostat-v1.json").read_text())
        b["capabilities"]["pressure"] = {"kind": "sensor", "unit": "hPa", "driver": "bmp280", "pin": 21}
        (pb / "boards" / "thermostat-v1.json").write_text(json.dumps(b))
    src = feature_sources(tmp / "src", ("thermostat",))
    if api != API:
        init.write_text(re.sub(r"^API = \d+", f"API = {api}", init.read_text(), count=1, flags=re.M))
        manifest = json.loads((src[0] / "manifest.json").read_text())
        (src[0] / "manifest.json").write_text(json.dumps(manifest | {"api": api}))
    return build("thermostat", src, f"rt-{counter}", tmp / "r", counter, ("mpy",), keys, runtime=pb)


def updated(mosquitto: Mosquitto, device: DeviceProcess, release: Release, keys: ota_keys.Keys) -> OtaServer:
    """Offer release to device; the server once the update ended committed."""
    srv = serve(mosquitto, device, offer_of(release, keys))
    try:
        done = srv.wait_for(("committed", "failed", "rolled_back"), 120)
    finally:
        srv.close()
    assert done["state"] == "committed", (done, srv.seen, device.output()[-3000:])
    return srv


@pytest.mark.long
def test_a_release_with_a_good_runtime_commits_and_the_device_runs_it(
    mosquitto: Mosquitto, device: DeviceProcess, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    assert FACTORY_VERSION is not None and FACTORY_VERSION.group(1) != NEW_VERSION
    release = runtime_release(tmp_path, keys, 7, crash=False, every=True, board=True)
    assert json.loads(json.loads(release.manifest)["signed"])["runtime"] == NEW_VERSION
    assert "pb/boards/thermostat-v1.json" in {f.path for f in release.files}
    srv = updated(mosquitto, device, release, keys)
    counter, manifest, names = running_set(device)
    assert (counter, manifest, names) == (7, release.sha256, ["thermostat"])
    runtime = {f.zsha256 for f in release.files if f.path.startswith("pb/")}
    assert runtime <= set(srv.served) and len(runtime) > 40  # every module fetched
    # all on 128 KB: update mode, the install, the trial boot that committed
    out = device.output()
    free = int(re.findall(r"update mode: downloading, heap free (\d+)", out)[-1])
    trial = int(re.findall(r"heap free (\d+)\)", out.split(": trial", 1)[0])[-1])
    print(
        f"\nfree heap under -X heapsize={SMALL_HEAP}: {free} bytes in update mode, {trial} at the trial boot"
    )
    slot = json.loads((device.path / "ota" / "active.json").read_text())["set"]
    assert (device.path / slot / "pb" / "__init__.mpy").is_file()
    # the hello states the slot's runtime: the device runs it
    wait_for(lambda: retained_hello(mosquitto, device.id)["runtime"] == NEW_VERSION, 30, what="new runtime")
    # with the board file the runtime carries: its board gained a sensor
    assert "pressure" in retained_hello(mosquitto, device.id)["caps"]
    # and runs it again after a power cut, committed, on a 128 KB heap
    device.kill()
    device.start()
    wait_for(lambda: retained_hello(mosquitto, device.id)["reset_cause"] == "power_on", 30, what="power_on")
    hello = retained_hello(mosquitto, device.id)
    assert hello["runtime"] == NEW_VERSION and hello["ota"]["state"] == "committed", hello
    assert "pressure" in hello["caps"], hello
    assert running_set(device) == (7, release.sha256, ["thermostat"])
    heap = int(re.findall(r"heap free (\d+)\)", device.output())[-1])
    print(f"free heap after start on a runtime from a slot under -X heapsize={SMALL_HEAP}: {heap} bytes")
    assert heap > 8 * 1024, heap


@pytest.mark.long
def test_a_runtime_release_fetches_only_the_modules_the_running_runtime_lacks(
    mosquitto: Mosquitto, device: DeviceProcess, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    """From the factory runtime, a runtime that differs in its VERSION
    fetches pb/__init__ alone; from that slot's runtime, one that changes
    one module fetches that module alone."""
    fetched = []
    for release, changed in (
        (runtime_release(tmp_path / "1", keys, 7, crash=False), "pb/__init__.mpy"),
        (runtime_release(tmp_path / "2", keys, 9, crash=False, mark="second"), "pb/values.mpy"),
    ):
        srv = updated(mosquitto, device, release, keys)
        assert running_set(device) == (release.counter, release.sha256, ["thermostat"])
        (blob,) = [f for f in release.files if f.path == changed]
        assert set(srv.served) == {"manifest", blob.zsha256}, (changed, srv.served)
        assert {st["total"] for st in srv.seen if st["state"] == "downloading"} == {blob.zsize}
        runtime = [f for f in release.files if f.path.startswith("pb/")]
        fetched.append(
            f"{changed}: 1 blob of {blob.zsize} bytes, of {len(runtime)} runtime modules"
            f" ({sum(f.zsize for f in runtime)} bytes)"
        )
    print("\nfetched " + "; ".join(fetched))
    # the second slot runs, on 128 KB, the module it fetched beside the ones it kept
    device.kill()
    device.start()
    wait_for(lambda: retained_hello(mosquitto, device.id)["reset_cause"] == "power_on", 30, what="power_on")
    hello = retained_hello(mosquitto, device.id)
    assert hello["runtime"] == NEW_VERSION and hello["ota"]["state"] == "committed", hello


def test_a_release_whose_runtime_crashes_at_start_rolls_back_runtime_and_features(
    mosquitto: Mosquitto, device: DeviceProcess, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    release = runtime_release(tmp_path, keys, 8, crash=True, board=True)
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
    assert "pressure" not in retained_hello(mosquitto, device.id)["caps"]  # the factory board file
    wait_for(lambda: "features thermostat" in device.output().rsplit("booted", 1)[-1], 20, what="factory set")


def test_a_runtime_of_a_new_api_installs_with_the_features_written_against_it(
    mosquitto: Mosquitto, device: DeviceProcess, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    """The features of a release that carries a runtime run on that runtime:
    its API, not the running one's, is what they need (docs/ota.md 2.1)."""
    release = runtime_release(tmp_path, keys, 7, crash=False, api=API + 1)
    assert json.loads(json.loads(release.manifest)["signed"])["api"] == API + 1
    updated(mosquitto, device, release, keys)
    assert running_set(device) == (7, release.sha256, ["thermostat"])
    # (the hello of the committed set comes after the status that says it)
    wait_for(lambda: retained_hello(mosquitto, device.id)["runtime"] == NEW_VERSION, 30, what="new runtime")
    hello = retained_hello(mosquitto, device.id)
    assert (hello["runtime"], hello["api"]) == (NEW_VERSION, API + 1), hello
    assert hello["features"]["thermostat"].get("error") is None, hello
