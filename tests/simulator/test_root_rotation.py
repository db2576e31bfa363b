"""A stolen release key, revoked over the air (docs/ota.md 1.1 and 5.6,
security.md 4.1): the maker rotates the root in the gateway's keys folder;
every device online takes the new root (virtual devices and a unix-port
board on a 128 KB heap, checking it at boot with the firmware's own
Ed25519); a device that was off takes it when it comes back, before the
update waiting for it; and from then on each of them refuses a release the
stolen key signed, which a gateway the thief controls offers them, while a
release signed by the new key installs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from gateway.errors import ReleaseRefusedError
from gateway.releases import StoredRelease
from ota.keys import Keys, keygen, load_keys, rotate_root
from ota.release import build

from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import FEATURES, MakeDevice, Rig, unix_port_board


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """This test's own keys folder: it rotates them."""
    return keygen(tmp_path / "maker-keys")


def _root_of(rig: Rig, dev: str) -> object:
    record = rig.gw.store.device(dev)
    return (record.hello.get("ota") or {}).get("root") if record is not None else None


def _thiefs_release(rig: Rig, path: Path, root1: bytes) -> StoredRelease:
    """What a gateway the thief controls holds: a release the stolen key
    signed, stored as under root 1 (this gateway itself refuses it)."""
    with pytest.raises(ReleaseRefusedError, match="unknown_key"):
        rig.gw.ota.releases.add(path, time.time())
    trusted, rig.gw.ota.releases.root = rig.gw.ota.releases.root, root1
    try:
        stored, _ = rig.gw.ota.releases.add(path, time.time())
    finally:
        rig.gw.ota.releases.root = trusted
    return stored


async def test_a_stolen_release_key_is_revoked_over_the_air(
    rig: Rig, make_device: MakeDevice, mosquitto: Mosquitto, keys: Keys, tmp_path: Path
) -> None:
    root1 = keys.root_bytes
    online = [await make_device(), await make_device()]
    away = await make_device()
    board = unix_port_board(mosquitto, tmp_path, root1)
    board_id = board.id
    task = asyncio.create_task(board.run(), name="board")
    try:
        ids = [d.id for d in online] + [away.id, board_id]
        for dev in ids:
            await async_wait_for(lambda dev=dev: _root_of(rig, dev) == 1, 30, what=f"{dev} says root 1")
        away.power_cut(off_s=3600)
        await async_wait_for(lambda: not rig.gw.is_online(away.id), 10, what="the device away offline")

        # the release key is stolen: the maker rotates it away in the gateway's folder
        stolen = keys
        new = load_keys(rotate_root(keys.path, new_release_key=True).path)
        for dev in [d.id for d in online] + [board_id]:
            try:
                await async_wait_for(lambda dev=dev: _root_of(rig, dev) == 2, 60, what=f"{dev} takes root 2")
            except AssertionError:
                print(board.log_text()[-4000:])
                raise
        assert _root_of(rig, away.id) == 1

        # the thief's release: the gateway refuses it, a gateway he controls offers it
        evil = build(
            "thermostat",
            [FEATURES / "thermostat", FEATURES / "eco"],
            "6.6.6",
            tmp_path / "evil",
            6,
            keys=stolen,
        )
        bad = _thiefs_release(rig, evil.path, root1)
        # the device away is offered it while off: the offer waits for its hello
        u_away = await rig.gw.ota.start(away.id, bad.id, force=True)
        ended = await asyncio.gather(*(rig.update(d, bad, 120) for d in [*online, board]))  # type: ignore[list-item]
        for u in ended:
            assert u.state == "failed", u
            assert str(u.reason).startswith("unknown_key: not signed by any release key"), u
        away.power_on()
        await async_wait_for(
            lambda: rig.gw.ota.get(u_away.id).ended, 60, what="the update of the device away"
        )
        done = rig.gw.ota.get(u_away.id)
        # it took root 2 first: on root 1 it would have installed the thief's release
        assert done.state == "failed" and str(done.reason).startswith("unknown_key"), done
        assert _root_of(rig, away.id) == 2

        # the maker's next release, signed by the new key, installs everywhere
        good = build(
            "thermostat", [FEATURES / "thermostat", FEATURES / "eco"], "7.0.0", tmp_path / "good", 7, keys=new
        )
        stored = rig.publish(good.path)
        ended = await asyncio.gather(*(rig.update(d, stored, 120) for d in [*online, away, board]))  # type: ignore[list-item]
        assert [u.state for u in ended] == ["committed"] * 4, (ended, board.log_text()[-3000:])
        assert rig.gw.ota.stats["roots"] >= 4
    finally:
        board.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 10)
