"""Power cuts during an update, on the real MicroPython unix port: the
device is killed outright (SIGKILL, no cleanup) at chosen points spread over
download, staging, installation, activation and trial, then powered up
again. After every cut the device runs a complete, verified feature set,
the old one or the new one, never a mix, and the update either completes
or is reported failed.

The points are the device's fault points (firmware/pb/hal/host.py): every
chunk written, every file staged, every file of the new set assembled, the
pointer switch, the trial's boot and commit. A first run counts them; the
cuts are then drawn from them with a fixed seed, so a failure reproduces."""

from __future__ import annotations

import json
import random
import secrets
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware import loader
from firmware.pb.ota import flash, forms
from gateway.provision import provision_into
from ota import keys as ota_keys
from ota.release import Release

from ..support.mosquitto import Mosquitto
from ..support.ota_server import OtaServer
from ..support.processes import HEAP, DeviceProcess
from ..support.wait import wait_for
from .conftest import OTA_CONFIG, offer_of, running_set

pytestmark = [pytest.mark.slow, pytest.mark.long]

SEED = 20261123
CUTS = 54
PHASES = {
    "download": ("chunk", "staged-file", "staged"),
    "install": ("verified", "assemble", "activate", "activated", "installed"),
    "trial": ("trial-boot", "trial-checked", "commit", "committed"),
}
SHARE = {"trial": 10, "install": 16, "download": CUTS}  # in this order; download takes the rest


@dataclass
class Template:
    path: Path
    points: list[tuple[int, str]]  # (global index, name), in order


@pytest.fixture(scope="module")
def template(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto, keys: ota_keys.Keys, release2: Release
) -> Iterator[Template]:
    """A provisioned device folder, and the fault points of one whole update."""
    tmp = tmp_path_factory.mktemp("template")
    folder = provisioned(tmp / "device", mosquitto, keys)
    # count the points: the same update, with every point logged
    dev = start_copy(folder, tmp, mosquitto, {"log": True})
    srv = OtaServer(mosquitto, dev.id, offer_of(release2, keys))
    try:
        srv.offer()
        done = srv.wait_for(("committed", "failed", "rolled_back"), 90)
        assert done["state"] == "committed", (done, dev.output()[-3000:])  # (what the device said)
    finally:
        srv.close()
        dev.kill()
    log = (dev.path / "hal" / "fault_points.log").read_text().split("\n")
    points = [(int(n), name) for n, name in (line.split(" ", 1) for line in log if line)]
    assert [n for n, _ in points] == list(range(1, len(points) + 1))
    yield Template(folder, points)


def cut_points(points: list[tuple[int, str]]) -> list[tuple[int, str]]:
    rnd = random.Random(SEED)
    chosen: list[tuple[int, str]] = []
    for phase in SHARE:
        pool = [p for p in points if p[1] in PHASES[phase]]
        chosen += rnd.sample(pool, min(SHARE[phase], len(pool), CUTS - len(chosen)))
    return sorted(chosen)


def test_fault_points_cover_every_phase(template: Template) -> None:
    names = {name for _, name in template.points}
    for phase, wanted in PHASES.items():
        assert names & set(wanted), f"no fault point in the {phase} phase"
    assert len(cut_points(template.points)) >= 50


def provisioned(folder: Path, mosquitto: Mosquitto, keys: ota_keys.Keys, **options: object) -> Path:
    """A thermostat's folder, provisioned compiled, trusting keys, with a
    short trial and quick retries, no hal/ yet (start_copy makes one);
    options: more of provision_into's."""
    provision_into(
        folder,
        "thermostat",
        "template",
        mosquitto.url,
        password=secrets.token_urlsafe(12),
        compile_mpy=True,
        root=(keys.path / "root.json").read_bytes(),
        trial_s=2,
        telemetry_s=1,
        keepalive=10,
        **options,  # type: ignore[arg-type]
    )
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **OTA_CONFIG}))
    shutil.rmtree(folder / "hal")
    return folder


def start_copy(
    template: Path,
    tmp: Path,
    mosquitto: Mosquitto,
    faults: dict[str, object],
    heap: str = HEAP,
    prefix: str = "pc",
) -> DeviceProcess:
    """A device of its own, copied from the template (its flash too),
    powered up and booted. Its downloads run in update mode, as a 128 KB
    board's do (`ota_mode` lean); its heap is the tests' (what a power cut
    leaves is what is tested here: the 128 KB figure is held by
    test_ota_device.py and test_end_to_end.py, and fault-point logging
    takes RAM a board does not spend)."""
    dev_id = f"{prefix}-{secrets.token_hex(3)}"
    folder = tmp / dev_id
    shutil.copytree(template, folder)
    config = json.loads((folder / "config.json").read_text())
    config["device"] = config["broker"]["user"] = dev_id
    config["ota_mode"] = "lean"
    (folder / "config.json").write_text(json.dumps(config))
    mosquitto.add_user(dev_id, config["broker"]["password"])
    (folder / "hal").mkdir()
    (folder / "hal" / "sensors.json").write_text(json.dumps({"temperature": 20.0, "humidity": 40.0}))
    (folder / "hal" / "faults.json").write_text(json.dumps(faults))
    dev = DeviceProcess(folder, heap=heap)
    dev.start()
    wait_for(lambda: "booted" in dev.output(), 20, what=f"{dev_id} boot")
    return dev


def one_cut(
    template: Template, mosquitto: Mosquitto, keys: ota_keys.Keys, release2: Release, k: int, tmp: Path
) -> str:
    dev = start_copy(template.path, tmp, mosquitto, {"log": True, "crash_at": k})
    folder = dev.path
    srv = OtaServer(mosquitto, dev.id, offer_of(release2, keys))
    try:
        srv.offer()
        # the power goes at point k: the whole device dies
        wait_for(lambda: not dev.running, 90, what=f"{dev.id} killed at point {k}")
        (folder / "hal" / "faults.json").unlink()
        check_sets(dev, f"after the cut at {k}")
        dev.proc = None
        dev.start()
        end = srv.wait_for(("committed", "failed", "rolled_back"), 120)
        wait_for(lambda: not (folder / "ota" / "job.json").exists(), 20, what="the job ended")
        time.sleep(0.3)
        counter, manifest, _ = check_sets(dev, f"after the restart from {k}")
        if end["state"] == "committed":
            assert (counter, manifest) == (2, release2.sha256), (k, end)
        else:
            assert counter == 0, (k, end)
        return str(end["state"])
    except BaseException as exc:
        raise AssertionError(f"cut at point {k}: {exc}\n{dev.output()[-2500:]}") from exc
    finally:
        srv.close()
        dev.kill()


def check_sets(dev: DeviceProcess, when: str) -> tuple[int, str | None, list[str]]:
    """The set the device will run is complete and verified: old or new."""
    base = str(dev.path)
    p = loader.read_pointer(base)
    assert p is None or not p.get("corrupt"), when
    set_dir = p["set"] if p else flash.FACTORY
    files = None  # (the factory set has no manifest)
    kept = dev.path / set_dir / "manifest.json"
    if set_dir != flash.FACTORY and kept.is_file():
        # the files of the device's form, which its boot loader checks (this process is CPython)
        form = "mpy" if dev.interpreter == "micropython" else "py"
        files = forms.device_files(json.loads(json.loads(kept.read_bytes())["signed"])["files"], form)
    assert loader.check_set(base, set_dir, files) is None, f"{when}: {set_dir} is not complete"
    counter, manifest, features = running_set(dev)
    if counter == 0:
        assert features == ["thermostat"], when
    else:
        assert features == ["eco", "thermostat"], when
    return counter, manifest, features


def test_power_cuts_leave_a_complete_set_and_the_update_ends(
    template: Template, mosquitto: Mosquitto, keys: ota_keys.Keys, release2: Release, tmp_path: Path
) -> None:
    cuts = cut_points(template.points)
    assert len(cuts) >= 50
    with ThreadPoolExecutor(3) as pool:
        outcomes = list(
            pool.map(lambda p: (p, one_cut(template, mosquitto, keys, release2, p[0], tmp_path)), cuts)
        )
    ends = {}
    for (k, name), state in outcomes:
        ends.setdefault(state, []).append(f"{k}:{name}")
    print(f"\n{len(cuts)} power cuts (seed {SEED}): " + "; ".join(f"{s}: {len(v)}" for s, v in ends.items()))
    # a cut must not make the update fail: it resumes and completes
    assert set(ends) == {"committed"}, ends
