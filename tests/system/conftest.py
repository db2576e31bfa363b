"""Fixtures for updates end to end: the maker's keys, releases built from
the shipped features, and devices on the real MicroPython unix port that
trust those keys."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.paths import firmware_dir
from ota import keys as ota_keys
from ota.envelope import sign_envelope
from ota.release import Release, build

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.ota_server import Offer, OtaServer, Tamper
from ..support.processes import SMALL_HEAP, DeviceProcess, GatewayProcess
from ..support.serial_board import SerialBoard
from ..support.wait import wait_for

FEATURES = firmware_dir() / "features"

CRASHY = """
def start(ctx):
    raise RuntimeError("crashy cannot start")
"""


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> ota_keys.Keys:
    return ota_keys.keygen(tmp_path_factory.mktemp("keys") / "k")


@pytest.fixture(scope="session")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> ota_keys.Keys:
    return ota_keys.keygen(tmp_path_factory.mktemp("attacker") / "k")


def feature_sources(tmp: Path, names: tuple[str, ...], tables_kb: int = 0, seed: int = 7) -> list[Path]:
    """Copies of shipped features; eco may carry tables_kb KB of (incompressible) tables."""
    out = []
    for name in names:
        shutil.copytree(FEATURES / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
        out.append(tmp / name)
    if tables_kb:
        tables = tmp / "eco" / "tables"
        tables.mkdir()
        rnd = random.Random(seed)
        for i in range(tables_kb // 8):
            (tables / f"t{i:02d}.bin").write_bytes(rnd.randbytes(8192))
    return out


@pytest.fixture(scope="session")
def release2(tmp_path_factory: pytest.TempPathFactory, keys: ota_keys.Keys) -> Release:
    """thermostat + eco, eco with 64 KB of tables: what a factory device lacks."""
    tmp = tmp_path_factory.mktemp("r2")
    src = feature_sources(tmp / "src", ("thermostat", "eco"), tables_kb=64)
    return build("thermostat", src, "2.0", tmp / "r2", 2, ("mpy",), keys)


@pytest.fixture(scope="session")
def release3(tmp_path_factory: pytest.TempPathFactory, keys: ota_keys.Keys) -> Release:
    """release 2 with one of its many files changed."""
    tmp = tmp_path_factory.mktemp("r3")
    src = feature_sources(tmp / "src", ("thermostat", "eco"), tables_kb=64)
    (tmp / "src" / "eco" / "tables" / "t03.bin").write_bytes(random.Random(99).randbytes(8192))
    return build("thermostat", src, "3.0", tmp / "r3", 3, ("mpy",), keys)


@pytest.fixture(scope="session")
def both_forms_release(tmp_path_factory: pytest.TempPathFactory, keys: ota_keys.Keys) -> Release:
    """thermostat + eco, each module as .py and .mpy: as `ota build` makes one by default."""
    tmp = tmp_path_factory.mktemp("rb")
    src = feature_sources(tmp / "src", ("thermostat", "eco"))
    return build("thermostat", src, "2.0", tmp / "rb", 2, keys=keys)


@pytest.fixture(scope="session")
def crashing_release(tmp_path_factory: pytest.TempPathFactory, keys: ota_keys.Keys) -> Release:
    """thermostat + a feature that raises as it starts."""
    tmp = tmp_path_factory.mktemp("rc")
    src = feature_sources(tmp / "src", ("thermostat",))
    crashy = tmp / "src" / "crashy"
    crashy.mkdir()
    (crashy / "__init__.py").write_text(CRASHY)
    (crashy / "manifest.json").write_text(json.dumps({"name": "crashy", "version": "0.1.0", "api": 1}))
    return build("thermostat", [*src, crashy], "2.9", tmp / "rc", 4, ("mpy",), keys)


# a feature that needs more RAM than a 128 KB board has, at import or as it starts
HUNGRY = {
    "import": "_TABLE = bytearray(192 * 1024)\n\n\ndef start(ctx):\n    return None\n",
    "start": "def start(ctx):\n    return bytearray(192 * 1024)\n",
}


def hungry_release(tmp: Path, keys: ota_keys.Keys, step: str) -> Release:
    """thermostat + a feature that runs out of RAM at `step` (import, start)."""
    src = feature_sources(tmp / "src", ("thermostat",))
    hungry = tmp / "src" / "hungry"
    hungry.mkdir()
    (hungry / "__init__.py").write_text(HUNGRY[step])
    (hungry / "manifest.json").write_text(json.dumps({"name": "hungry", "version": "0.1.0", "api": 1}))
    return build("thermostat", [*src, hungry], "2.8", tmp / "rh", 5, ("mpy",), keys)


@pytest.fixture(scope="session")
def gateway_keys(tmp_path_factory: pytest.TempPathFactory, keys: ota_keys.Keys) -> Path:
    """What a gateway holds of the maker's keys: the root and its own key."""
    folder = tmp_path_factory.mktemp("gw-keys") / "k"
    folder.mkdir(mode=0o700)
    shutil.copy(keys.path / ota_keys.ROOT_FILE, folder / ota_keys.ROOT_FILE)
    shutil.copy(keys.path / ota_keys.GATEWAY_KEY, folder / ota_keys.GATEWAY_KEY)
    (folder / ota_keys.GATEWAY_KEY).chmod(0o600)
    return folder


@pytest.fixture(scope="module")
def ota_gateway(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto, gateway_keys: Path
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("ota-gw")
    gw = GatewayProcess(mosquitto.gateway_url, tmp / "gw.db", tmp / "gw.log", ["--keys", str(gateway_keys)])
    gw.start()
    yield gw
    gw.stop()


OTA_CONFIG = {"ota_timeout_ms": 300, "ota_tries": 3}  # quick retries: tests cut links on purpose


def ota_device(
    mosquitto: Mosquitto,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    start: bool = True,
    interpreter: str = "micropython",
    model: str = "thermostat",
    **config: object,
) -> DeviceProcess:
    """A thermostat (or another model) on the unix port (128 KB heap; or
    under CPython) that trusts keys, with a short trial and quick retries;
    started, and booted (unless not start)."""
    root = (keys.path / "root.json").read_bytes()
    dev = make_device(mosquitto, model, interpreter, root=root, trial_s=2)
    cfg = json.loads((dev.path / "config.json").read_text())
    cfg.update({**OTA_CONFIG, **config})
    (dev.path / "config.json").write_text(json.dumps(cfg))
    if model == "thermostat":
        dev.set_sensors(temperature=20.0)
    dev.heap = os.environ.get("PB_HEAP", SMALL_HEAP)
    if not start:
        return dev
    dev.start()
    wait_for(lambda: "booted" in dev.output(), 15, what="device boot")
    return dev


def running_set(dev: DeviceProcess) -> tuple[int, str | None, list[str]]:
    """(counter, manifest, features) of the set the device runs, from its flash."""
    ptr = dev.path / "ota" / "active.json"
    if not ptr.exists():
        return 0, None, sorted(os.listdir(dev.path / "features"))
    p = json.loads(ptr.read_text())
    folder = dev.path / "features" if p["set"] == "features" else dev.path / p["set"] / "features"
    return p["counter"], p["manifest"], sorted(os.listdir(folder))


def offer_of(release: Release, keys: ota_keys.Keys, ttl: float = 3600, now: float | None = None) -> Offer:
    blobs = {f.zsha256: release.blob_path(f).read_bytes() for f in release.files}
    if release.image is not None and release.image_path is not None:
        blobs[release.image.zsha256] = release.image_path.read_bytes()
    signed_at = now or time.time()

    def fresh(dev: str, uid: str) -> bytes:
        return ota_keys.freshness(
            keys, release.model, release.counter, release.sha256, ttl, signed_at, device=dev, update=uid
        )

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


@pytest.fixture
def board(tmp_path: Path) -> Iterator[SerialBoard]:
    """A board on a serial port (the unix port's REPL behind socat), unplugged after."""
    b = SerialBoard(tmp_path / "board").start()
    yield b
    b.unplug()
