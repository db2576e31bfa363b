"""Devices in the field run several runtimes at once (docs/protocol.md 3.1):
a board on runtime 0.1.0, the last of protocol level 1, exactly as it was
released (tests/fixtures/runtime-0.1.0.tar.gz, made with
`git archive 3127ee7 firmware/pb firmware/main.py firmware/boot.py | gzip -9n`),
runs on the MicroPython unix port (128 KB heap) against this gateway, after
the maker rotated the gateway key: its hello states no level, it is sent no
root, and it takes an update whose freshness statement its old root checks
(the retired gateway key signs it too)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tarfile
from pathlib import Path

import pytest

from ota.keys import Keys, keygen, load_keys, rotate_root
from ota.mpy import compile_module
from ota.release import HOST_ONLY, build

from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import FEATURES, Rig, unix_port_board

RUNTIME_1 = Path(__file__).parents[1] / "fixtures" / "runtime-0.1.0.tar.gz"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """Keys whose gateway key was rotated once: the gateway runs on root 2."""
    folder = tmp_path / "maker-keys"
    keygen(folder)
    return load_keys(rotate_root(folder, new_gateway_key=True).path)


def install_runtime_1(path: Path, tmp: Path) -> None:
    """Replace the runtime of the board folder path with runtime 0.1.0,
    compiled for the board as provisioning compiles one."""
    with tarfile.open(RUNTIME_1) as tar:
        tar.extractall(tmp, filter="data")
    fw = tmp / "firmware"
    shutil.rmtree(path / "pb")
    for src in sorted((fw / "pb").rglob("*.py")):
        rel = src.relative_to(fw).as_posix()
        if rel.startswith(HOST_ONLY):
            continue
        out = path / (rel[:-3] + ".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(compile_module(src, rel))
    for name in ("main.py", "boot.py"):
        shutil.copy(fw / name, path / name)


async def test_a_board_on_runtime_0_1_0_is_served_after_the_gateway_key_rotated(
    rig: Rig, mosquitto: Mosquitto, keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="permabeta")
    board = unix_port_board(mosquitto, tmp_path, (keys.path / "root.1.json").read_bytes())
    dev_id = board.id
    install_runtime_1(board.path, tmp_path / "runtime-1")  # before its first boot
    task = asyncio.create_task(board.run(), name="board")
    try:
        await async_wait_for(lambda: rig.gw.is_online(dev_id), 30, what="the board online")
        record = rig.gw.store.device(dev_id)
        assert record is not None and record.runtime == "0.1.0"
        assert "proto" not in record.hello and "root" not in record.hello["ota"]
        # (the thermostat alone: runtime 0.1.0, as it was released, spares the least RAM of
        # any, and this is about what it is served, not what it runs)
        release = build("thermostat", [FEATURES / "thermostat"], "2.0.0", tmp_path / "r", 2, keys=keys)
        u = await rig.update(board, rig.publish(release.path), 120)  # type: ignore[arg-type]
        assert u.state == "committed", (u, board.log_text()[-3000:])
        # level 1 takes none (the session's broker may hold other boards' retained
        # hellos, of level 2, to which this gateway may send its root)
        assert not [r for r in caplog.records if r.getMessage().startswith(f"{dev_id}: sent root")]
        # (within 60 s: a heap too fragmented for the hello after the commit restarts the
        # board after 15 s without one, pb/runtime.py _no_ram, and its next boot says it)
        await async_wait_for(
            lambda: (r := rig.gw.store.device(dev_id)) is not None and r.hello["ota"]["counter"] == 2,
            60,
            what="the board's hello on release 2",
        )
    finally:
        board.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 10)
