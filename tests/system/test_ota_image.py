"""Updates of the MicroPython image (docs/ota.md 4.11), on the real
MicroPython unix port with the file-backed stand-in for the ESP32's two app
partitions (firmware/pb/hal/partitions.py: otadata, and the bootloader's
rollback of an image never marked valid, run by main.py's supervisor before
every start as a board's bootloader runs before MicroPython).

The image is a made-up ESP32 app image (its magic byte, then bytes that
compress as code does): no ESP32 runs here, and the unix port cannot run an
ESP32 image anyway; what is tested is what the device does with one:
streamed into the partition it does not run a segment at a time, hashed
against the signed manifest, chosen to boot with the new set on trial,
marked valid only when the trial commits, and rolled back with the set when
it is not."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from ota import image as ota_image
from ota import keys as ota_keys
from ota.release import Release, build

from ..support.images import app_image
from ..support.mosquitto import Mosquitto
from ..support.ota_server import OtaServer
from ..support.processes import SMALL_HEAP, DeviceProcess
from ..support.wait import wait_for
from . import test_ota_power_cuts as power_cuts
from .conftest import feature_sources, offer_of, running_set
from .test_ota_power_cuts import provisioned

pytestmark = pytest.mark.slow

SLOT = 256 * 1024  # each app partition of these devices
# The stand-in's slots are Python code on the heap (pb/hal/app_partition.py
# and host_image.py, some 12 KB of it with the names they intern on the
# 64-bit unix port), where a board's esp32.Partition is built into the
# firmware: these devices get more than SMALL_HEAP for it
IMAGE_HEAP = f"{int(SMALL_HEAP[:-1]) + 24}K"
ENDS = ("committed", "failed", "rolled_back")


@dataclass
class Template:
    path: Path
    factory: bytes
    release: Release
    points: list[tuple[int, str]]  # the fault points of one whole update, in order


@pytest.fixture(scope="module")
def template(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto, keys: ota_keys.Keys
) -> Iterator[Template]:
    """A provisioned device folder running a factory image in ota_0, a
    release (counter 2) carrying a new image, and the fault points of the
    whole update, counted by a first run."""
    tmp = tmp_path_factory.mktemp("image")
    factory = app_image(150_000, 1)
    (tmp / "factory.bin").write_bytes(factory)
    (tmp / "new.bin").write_bytes(app_image(170_000, 2))
    src = feature_sources(tmp / "src", ("thermostat",))
    release = build(
        "thermostat", src, "2.0", tmp / "r", 2, ("mpy",), keys, image=tmp / "new.bin", image_version="1.29.1"
    )
    folder = provisioned(tmp / "device", mosquitto, keys, image=tmp / "factory.bin", image_slot=SLOT)
    dev = start_copy(folder, tmp, mosquitto, {"log": True})
    srv = OtaServer(mosquitto, dev.id, offer_of(release, keys))
    try:
        srv.offer()
        end = srv.wait_for(ENDS, 120)
        assert end["state"] == "committed", (end, dev.output()[-3000:])
    finally:
        srv.close()
        dev.kill()
    log = (dev.path / "hal" / "fault_points.log").read_text().split("\n")
    points = [(int(n), name) for n, name in (line.split(" ", 1) for line in log if line)]
    yield Template(folder, factory, release, points)


def start_copy(template: Path, tmp: Path, mosquitto: Mosquitto, faults: dict[str, object]) -> DeviceProcess:
    """A device of its own, copied from the template (its flash too), powered up."""
    return power_cuts.start_copy(template, tmp, mosquitto, faults, IMAGE_HEAP, "img")


def otadata(dev: DeviceProcess) -> dict:
    return json.loads((dev.path / "flash" / "otadata.json").read_text())


def image_in(dev: DeviceProcess, label: str, n: int) -> bytes:
    return (dev.path / "flash" / f"{label}.bin").read_bytes()[:n]


def hello_image(dev: DeviceProcess) -> object:
    """The hello's ota.image, as the device last kept its hello ("absent": none)."""
    kept = dev.path / "data" / "hello.json"
    return json.loads(kept.read_text())["ota"].get("image", "absent") if kept.exists() else "no hello"


def assert_on_new_image(dev: DeviceProcess, t: Template) -> None:
    """The new set runs on the new image, committed, which stays."""
    assert t.release.image is not None
    od = otadata(dev)
    assert (od["boot"], od["slots"]["ota_1"]["state"]) == ("ota_1", "valid"), od
    new = image_in(dev, "ota_1", t.release.image.size)
    assert hashlib.sha256(new).hexdigest() == t.release.image.sha256
    pointer = json.loads((dev.path / "ota" / "active.json").read_text())
    assert (pointer["state"], pointer["image"], pointer["counter"]) == ("committed", "ota_1", 2), pointer


def assert_on_old_image(dev: DeviceProcess, t: Template) -> None:
    """The factory set runs on the factory image, which stays."""
    od = otadata(dev)
    assert od["boot"] == "ota_0", od
    assert od["slots"].get("ota_1", {}).get("state") in (None, "aborted", "invalid"), od
    assert image_in(dev, "ota_0", len(t.factory)) == t.factory
    assert running_set(dev)[0] == 0


def test_a_release_with_an_image_boots_it_on_trial_and_marks_it_valid_at_the_commit(
    template: Template, mosquitto: Mosquitto, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    # (the template's first run was that update: this one checks what it left)
    dev = start_copy(template.path, tmp_path, mosquitto, {})
    srv = OtaServer(mosquitto, dev.id, offer_of(template.release, keys))
    try:
        srv.offer()
        end = srv.wait_for(ENDS, 120)
        assert end["state"] == "committed", (end, dev.output()[-3000:])
        states = [s["state"] for s in srv.seen if s.get("id") == end["id"]]
        assert states.index("downloading") < states.index("staged") < states.index("trial"), states
        # the status counted the image's bytes with the files'
        last = [s for s in srv.seen if s["state"] == "downloading"][-1]
        assert template.release.image is not None
        assert last["bytes"] == last["total"] >= template.release.image.zsize, last
        wait_for(lambda: otadata(dev)["slots"]["ota_1"]["state"] == "valid", 20, what="ota_1 marked valid")
        assert_on_new_image(dev, template)
        # the hello says which image runs, as the release named it
        wait_for(lambda: hello_image(dev) == "1.29.1", 20, what="the hello naming image 1.29.1")
        stage = dev.path / "ota" / "stage"
        assert not stage.exists() or not any(stage.iterdir())
        # a power cut: the bootloader runs the new image, no trial left
        boots = dev.output().count("booted")
        dev.kill()
        dev.start()
        wait_for(lambda: dev.output().count("booted") > boots, 20, what="the boot after the cut")
        assert_on_new_image(dev, template)
        assert running_set(dev)[:2] == (2, template.release.sha256)
    finally:
        srv.close()
        dev.kill()


def occurrences(t: Template, name: str) -> int:
    """How many fault points of that name the whole update passed."""
    found = sum(1 for _, n in t.points if n == name)
    assert found, (name, sorted({n for _, n in t.points}))
    return found


def cut_and_restart(
    t: Template, mosquitto: Mosquitto, keys: ota_keys.Keys, name: str, nth: int, tmp: Path
) -> tuple[DeviceProcess, dict]:
    """The update with the power cut at the nth point of that name (1: the
    first; by name, since a download's number of points varies with its
    timing), then the device powered up again; the device (stopped) and the
    update's end."""
    dev = start_copy(t.path, tmp, mosquitto, {"log": True, "crash_name": name, "crash_nth": nth})
    srv = OtaServer(mosquitto, dev.id, offer_of(t.release, keys))
    try:
        srv.offer()
        wait_for(lambda: not dev.running, 120, what=f"{dev.id} killed at {name} #{nth}")
        (dev.path / "hal" / "faults.json").unlink()
        dev.proc = None
        dev.start()
        end = srv.wait_for(ENDS, 120)
        wait_for(lambda: not (dev.path / "ota" / "job.json").exists(), 20, what="the job ended")
        if end["state"] == "committed":
            wait_for(lambda: otadata(dev)["slots"]["ota_1"]["state"] == "valid", 20, what="ota_1 valid")
        return dev, end
    except BaseException as exc:
        raise AssertionError(f"cut at {name} #{nth}: {exc}\n{dev.output()[-2500:]}") from exc
    finally:
        srv.close()
        dev.kill()


def test_an_image_never_marked_valid_goes_back_with_the_set(
    template: Template, mosquitto: Mosquitto, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    # the power goes during the trial, before the commit: the bootloader
    # finds the new image still pending and goes back to ota_0, and the boot
    # loader takes the set back with it: never the new set on the old image
    dev, end = cut_and_restart(template, mosquitto, keys, "trial-checked", 1, tmp_path)
    assert end["state"] == "rolled_back", end
    assert end["reason"] == "the new MicroPython image did not start (ota_0 runs)", end
    assert_on_old_image(dev, template)
    assert otadata(dev)["slots"]["ota_1"]["state"] == "aborted"
    pointer = json.loads((dev.path / "ota" / "active.json").read_text())
    assert (pointer["set"], pointer["state"]) == ("features", "committed"), pointer
    # the hello's image: the one flashed, which no release named
    assert hello_image(dev) is None


# where a cut leaves the update: it completes, or (the new image was booted
# and not yet marked valid) it is rolled back with the set
EXPECTED = {
    "chunk": "committed",
    "image-segment": "committed",
    "staged": "committed",
    "verified": "committed",
    "activate": "committed",
    "activated": "committed",
    "image-boot": "committed",
    "installed": "committed",
    "trial-boot": "rolled_back",
    "trial-checked": "rolled_back",
    "commit": "rolled_back",
    "committed": "rolled_back",  # (committed, the image not yet marked valid: taken back)
    "image-valid": "committed",
}


@pytest.mark.long
def test_power_cuts_during_an_image_update_leave_image_and_set_together(
    template: Template, mosquitto: Mosquitto, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    names = {n for _, n in template.points}
    assert {"image-segment", "image-boot", "image-valid"} <= names, names
    # the first point of each name, and one two thirds of the way through
    # those that repeat (a run may pass many chunks fewer than the template
    # did: a download that restarts in update mode passes its first ones again)
    last = {name: max(1, occurrences(template, name) * 2 // 3) for name in EXPECTED if name in names}
    cuts = sorted({(name, nth) for name in last for nth in (1, last[name])})

    def one(cut: tuple[str, int]) -> tuple[str, int, str]:
        name, nth = cut
        dev, end = cut_and_restart(template, mosquitto, keys, name, nth, tmp_path)
        if end["state"] == "committed":
            assert_on_new_image(dev, template)
        else:
            assert_on_old_image(dev, template)
        return name, nth, end["state"]

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(one, cuts))
    print("\n" + "; ".join(f"{name} #{nth} -> {state}" for name, nth, state in outcomes))
    wrong = [(name, nth, state) for name, nth, state in outcomes if state != EXPECTED[name]]
    assert not wrong, wrong


def _served_instead(t: Template, keys: ota_keys.Keys, blob: bytes) -> object:
    """The release's offer with the image's blob replaced by blob (the same
    object name: what a gateway that lies would serve)."""
    assert t.release.image is not None
    offer = offer_of(t.release, keys)
    offer.blobs[t.release.image.zsha256] = blob
    offer.objects[t.release.image.zsha256] = blob
    return offer


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        # frames that hold together, of an image that is not the one signed
        (
            lambda: ota_image.pack(app_image(170_000, 3)),
            "mismatch: the image written is not the one signed",
        ),
        # a segment that inflates to far more than a segment: stopped at the segment's end
        (
            lambda: ota_image.pack(b"\xe9" + bytes(150_000), 150_000),
            "mismatch: the image's segment at byte 0 is 32769 bytes, not 32768",
        ),
        # a frame that says its segment runs past the blob's end
        (
            lambda: (10**6).to_bytes(4, "big") + bytes(32) + bytes(1000),
            "mismatch: a frame of the image runs past its end",
        ),
        # a segment that holds together but ends before its stream does
        (
            lambda: (2).to_bytes(4, "big") + hashlib.sha256(b"\x78\x9c").digest() + b"\x78\x9c",
            "mismatch: the image's segment at byte 0 does not inflate (EOFError)",
        ),
    ],
    ids=["other-image", "inflates-past-its-segment", "frame-past-the-end", "stream-cut-short"],
)
def test_an_image_that_is_not_the_one_signed_is_never_booted(
    template: Template, mosquitto: Mosquitto, keys: ota_keys.Keys, tmp_path: Path, blob: object, reason: str
) -> None:
    dev = start_copy(template.path, tmp_path, mosquitto, {})
    srv = OtaServer(mosquitto, dev.id, _served_instead(template, keys, blob()))  # type: ignore[operator,arg-type]
    try:
        srv.offer()
        end = srv.wait_for(ENDS, 120)
        assert (end["state"], end["reason"]) == ("failed", reason), (end, dev.output()[-2000:])
        wait_for(lambda: not (dev.path / "ota" / "job.json").exists(), 20, what="the job ended")
        # nothing chosen to boot: the factory image and set run on, as before
        assert not (dev.path / "ota" / "active.json").exists()
        assert not (dev.path / "flash" / "otadata.json").exists() or otadata(dev)["boot"] == "ota_0"
        assert image_in(dev, "ota_0", len(template.factory)) == template.factory
        assert dev.running
    finally:
        srv.close()
        dev.kill()
