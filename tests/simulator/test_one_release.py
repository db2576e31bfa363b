"""One release serves every device of a model: it carries each module as
source (.py, what CPython runs: the virtual devices) and compiled (.mpy,
what MicroPython runs: the unix-port boards, 128 KB heap), and each device
downloads and installs only its own form, from the same gateway, at the
same counter. A device refuses a release that lacks its form, saying so."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from ota.keys import Keys
from ota.release import build, read
from simulator.process import HEAP

from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import FEATURES, MakeDevice, Rig, unix_port_board


def installed(base: Path) -> list[str]:
    """The files of the set a device's pointer names, relative to its features."""
    p = json.loads((base / "ota" / "active.json").read_text())
    root = base / p["set"] / "features"
    return sorted(f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file())


async def test_one_release_serves_a_virtual_device_and_a_unix_port_board(
    rig: Rig, make_device: MakeDevice, mosquitto: Mosquitto, keys: Keys, eco_release: Path, tmp_path: Path
) -> None:
    rel = read(eco_release)
    assert rel.forms == ("py", "mpy")  # built as a maker builds one, by default
    stored = rig.publish(eco_release)

    virtual = await make_device()
    board = unix_port_board(mosquitto, tmp_path, keys.root_bytes)
    board_id = board.id
    assert board.heap == HEAP == "128K"
    task = asyncio.create_task(board.run(), name="board")
    try:
        await async_wait_for(lambda: rig.gw.is_online(board_id), 30, what="the board online")
        u_virtual, u_board = await asyncio.gather(
            rig.update(virtual, stored, 30),
            rig.update(board, stored, 120),  # type: ignore[arg-type]  # (only its id is used)
        )
        assert u_virtual.state == "committed", u_virtual
        assert u_board.state == "committed", (u_board, board.log_text()[-3000:])
        # the same release, the same counter
        assert u_virtual.release == u_board.release == rel.sha256
        assert virtual.pointer()["counter"] == 2  # type: ignore[index]
        assert json.loads((board.path / "ota" / "active.json").read_text())["counter"] == 2
        # each installed its own form, and the files every device needs
        shared = [f.path for f in rel.files if not f.path.endswith(("py", "mpy"))]
        assert installed(virtual.base) == sorted(
            [f.path for f in rel.files if f.path.endswith(".py")] + shared
        )
        assert installed(board.path) == sorted(
            [f.path for f in rel.files if f.path.endswith(".mpy")] + shared
        )
        # and downloaded only that form of what it lacked (eco: the thermostat is held)
        for form, u in (("py", u_virtual), ("mpy", u_board)):
            want = {f.sha256: f.zsize for f in rel.files_for(form) if f.feature == "eco"}
            assert u.total == sum(want.values()), (form, u)
        await async_wait_for(
            lambda: virtual.running() == ["eco", "thermostat"], 10, what="eco on the virtual device"
        )
        await async_wait_for(
            lambda: "features eco,thermostat" in board.log_text(), 30, what="eco on the board"
        )
    finally:
        board.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 15)
        if not task.done():
            board.power_cut()
            task.cancel()


async def test_a_source_only_release_still_serves_virtual_devices(
    rig: Rig, make_device: MakeDevice, keys: Keys, tmp_path: Path
) -> None:
    rel = build(
        "thermostat", [FEATURES / "thermostat", FEATURES / "eco"], "2.1", tmp_path / "r", 5, ("py",), keys
    )
    dev = await make_device()
    u = await rig.update(dev, rig.publish(rel.path))
    assert u.state == "committed", u
    assert installed(dev.base) == [
        "eco/__init__.py",
        "eco/manifest.json",
        "thermostat/__init__.py",
        "thermostat/manifest.json",
    ]


async def test_a_virtual_device_refuses_a_compiled_only_release_saying_why(
    rig: Rig, make_device: MakeDevice, keys: Keys, tmp_path: Path
) -> None:
    rel = build(
        "thermostat", [FEATURES / "thermostat", FEATURES / "eco"], "2.2", tmp_path / "r", 6, ("mpy",), keys
    )
    dev = await make_device()
    u = await rig.update(dev, rig.publish(rel.path))
    assert u.state == "failed", u
    assert u.reason == "wrong_form: eco/__init__.mpy has no .py form, which this device (CPython) runs"
    assert dev.pointer() is None and dev.running() == ["thermostat"]
    # it fetched the manifest and no blob
    assert u.served == len(rel.manifest)
