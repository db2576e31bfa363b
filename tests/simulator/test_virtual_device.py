"""A virtual device takes an update as a board does: through the board's own
start-up logic (pb.prepare.choose, pb.ota.updates.Boot) over its own flash folder,
against a real Mosquitto and a real gateway holding the update keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ..support.images import app_image
from ..support.wait import async_wait_for
from .conftest import FEATURES, MakeDevice, Rig

PRICES = [10.0] * 6 + [30.0] * 18


def watch_statuses(rig: Rig) -> list[dict[str, Any]]:
    """Every update status the gateway accepts, as it arrives."""
    seen: list[dict[str, Any]] = []
    rig.gw.listeners.append(lambda kind, dev, msg: seen.append(msg) if kind == "ota/status" else None)
    return seen


async def test_takes_an_update_commits_and_runs_eco(
    rig: Rig, make_device: MakeDevice, eco_release: Path
) -> None:
    dev = await make_device()
    assert dev.running() == ["thermostat"] and dev.pointer() is None
    statuses = watch_statuses(rig)
    u = await rig.update(dev, rig.publish(eco_release))
    assert u.state == "committed", u
    states = [s["state"] for s in statuses if s["id"] == u.id]
    for state in ("offered", "downloading", "staged", "trial", "committed"):
        assert state in states, states
    # only eco's files came over: the thermostat's are held in the factory set
    assert u.total is not None and 0 < u.total < 4096
    p = dev.pointer()
    assert p is not None and (p["set"], p["state"], p["counter"]) == ("ota/a", "committed", 2)
    assert (dev.base / "ota" / "a" / "features" / "eco" / "__init__.py").is_file()
    await async_wait_for(lambda: dev.running() == ["eco", "thermostat"], 5, what="eco running")

    # eco works: with a price table it reports the hour's price
    reply = await rig.gw.send_command(dev.id, "data.set", {"key": "prices", "value": PRICES})
    assert reply["ok"], reply
    assert dev.device is not None
    await async_wait_for(lambda: dev.device.features.reports.get("eco", {}).get("price") in (10.0, 30.0), 5)
    record = rig.gw.store.device(dev.id)
    assert record is not None and record.ota["state"] == "committed"


async def test_a_reboot_after_commit_keeps_the_new_set(
    rig: Rig, make_device: MakeDevice, eco_release: Path
) -> None:
    dev = await make_device()
    assert (await rig.update(dev, rig.publish(eco_release))).state == "committed"
    pointer, boots = dev.pointer(), dev.boots
    await async_wait_for(lambda: dev.device is not None and dev.device.client.up, 5)
    reply = await rig.gw.send_command(dev.id, "reboot")
    assert reply["ok"], reply
    await async_wait_for(lambda: dev.boots > boots and dev.running(), 10, what="the device back up")
    assert dev.hal.last_reset == "reboot"
    assert dev.running() == ["eco", "thermostat"]
    assert dev.pointer() == pointer
    assert dev.boot is not None and not dev.boot.trial and dev.boot.root.endswith("ota/a/features")


async def test_a_feature_that_raises_at_start_rolls_back_to_the_factory_set(
    rig: Rig, make_device: MakeDevice, broken_eco_release: Path
) -> None:
    dev = await make_device()
    u = await rig.update(dev, rig.publish(broken_eco_release))
    assert u.state == "rolled_back", u
    assert u.reason is not None and "eco" in u.reason and "cannot start" in u.reason
    p = dev.pointer()
    assert p is not None and (p["set"], p["counter"], p["state"]) == ("features", 0, "committed")
    await async_wait_for(lambda: dev.running() == ["thermostat"], 10, what="back on the factory set")
    assert dev.boot is not None and not dev.boot.trial


async def test_a_rollback_short_of_ram_resets_and_rolls_back_at_the_next_boot(
    rig: Rig, make_device: MakeDevice, broken_eco_release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the loader's code cannot be loaded (a small heap, used by the trial):
    # the set stays on trial, the device resets, and the trial of the next
    # boot, on a fresh heap, rolls back
    from firmware import loader

    real = loader.rollback
    calls: list[str] = []

    def short_of_ram(base: str, p: dict[str, Any], reason: str) -> Any:
        calls.append(reason)
        if len(calls) == 1:
            raise MemoryError("memory allocation failed, allocating 592 bytes")
        return real(base, p, reason)

    monkeypatch.setattr(loader, "rollback", short_of_ram)
    dev = await make_device()
    u = await rig.update(dev, rig.publish(broken_eco_release))
    assert u.state == "rolled_back", u
    assert len(calls) == 2 and "cannot start" in u.reason
    p = dev.pointer()
    assert p is not None and (p["set"], p["counter"], p["state"]) == ("features", 0, "committed")
    await async_wait_for(lambda: dev.running() == ["thermostat"], 10, what="back on the factory set")


async def test_update_mode_runs_under_cpython(rig: Rig, make_device: MakeDevice, eco_release: Path) -> None:
    """A device with too little heap for a download beside its features
    resets into update mode (pb/ota/update_mode.py), downloads there, and comes
    back to install and run the new set. Update mode's hello names the
    update it took: the gateway does not send the offer again at its online
    (it did, 668 bytes more on the wire of an update at 128 KB)."""
    hellos: list[dict[str, Any]] = []
    rig.gw.listeners.append(lambda kind, dev, msg: hellos.append(msg["ota"]) if kind == "hello" else None)
    dev = await make_device(heap_free=20_000)
    u = await rig.update(dev, rig.publish(eco_release))
    assert u.state == "committed", u
    assert {"state": "updating", "update": u.id}.items() <= hellos[1].items(), hellos  # update mode's hello
    assert rig.gw.ota.stats["reoffers"] == 0, rig.gw.ota.stats
    await async_wait_for(lambda: dev.running() == ["eco", "thermostat"], 5, what="eco running")


async def test_update_mode_brings_the_network_up_before_the_broker(
    rig: Rig, make_device: MakeDevice, eco_release: Path
) -> None:
    """A board's reset takes its Wi-Fi down: update mode brings it up before
    it asks the broker, and tries again while it does not associate."""
    dev = await make_device(heap_free=20_000)
    tries_at_hello: list[int] = []
    rig.gw.listeners.append(
        lambda kind, d, msg: (
            tries_at_hello.append(len(dev.hal.network_tries))
            if kind == "hello" and d == dev.id and msg["ota"]["state"] == "updating"
            else None
        )
    )
    before = len(dev.hal.network_tries)  # the runtime's, at its boot
    dev.faults.network_refusals = 2
    u = await rig.update(dev, rig.publish(eco_release))
    assert u.state == "committed", u
    assert tries_at_hello, "no hello from update mode"
    # update mode asked 3 times (2 refused) before its hello reached the gateway
    assert tries_at_hello[0] >= before + 3, (before, tries_at_hello)
    assert dev.faults.network_refusals == 0


async def test_a_fixed_release_installs_after_a_rollback(
    rig: Rig, make_device: MakeDevice, broken_eco_release: Path, tmp_path: Path, keys: Any
) -> None:
    from ota.release import build

    dev = await make_device()
    assert (await rig.update(dev, rig.publish(broken_eco_release))).state == "rolled_back"
    await async_wait_for(lambda: dev.running() == ["thermostat"], 10)
    fixed = tmp_path / "fixed"
    shutil.copytree(FEATURES / "eco", fixed / "eco", ignore=shutil.ignore_patterns("__pycache__"))
    release = build(
        "thermostat", [FEATURES / "thermostat", fixed / "eco"], "4.0.0", tmp_path / "r4", 4, keys=keys
    )
    u = await rig.update(dev, rig.publish(release.path))
    assert u.state == "committed", u


async def test_a_virtual_device_refuses_an_image_it_has_no_partitions_for(
    rig: Rig, make_device: MakeDevice, tmp_path: Path, keys: Any
) -> None:
    # the simulator's devices run no MicroPython image (docs/ota.md 4.11):
    # a release that carries one is refused before any blob, never half-taken
    from ota.release import build

    image = tmp_path / "firmware.bin"
    image.write_bytes(b"\xe9" + bytes(range(256)) * 64)
    release = build(
        "thermostat",
        [FEATURES / "thermostat"],
        "5.0",
        tmp_path / "r5",
        5,
        keys=keys,
        image=image,
        image_version="1.29",
    )
    dev = await make_device()
    u = await rig.update(dev, rig.publish(release.path))
    assert (u.state, u.reason) == (
        "failed",
        "wrong_hardware: this board cannot update its MicroPython image",
    ), u
    assert dev.pointer() is None and dev.running() == ["thermostat"]


async def test_a_virtual_device_with_app_partitions_boots_a_new_image_on_trial_and_back(
    rig: Rig, make_device: MakeDevice, tmp_path: Path, keys: Any
) -> None:
    # the partitions' stand-in (firmware/pb/hal/partitions.py) behind the
    # simulator's HAL: the same image update as a board's, its rollback too
    from ota.release import build

    factory = app_image(60_000, 1)
    dev = await make_device(image=factory)
    assert dev.hal.image == "ota_0"
    (tmp_path / "new.bin").write_bytes(app_image(90_000, 2))
    good = build(
        "thermostat", [FEATURES / "thermostat"], "6.0", tmp_path / "r6", 6, keys=keys,
        image=tmp_path / "new.bin", image_version="1.29.1",
    )  # fmt: skip
    u = await rig.update(dev, rig.publish(good.path))
    assert u.state == "committed", u
    await async_wait_for(lambda: dev.hal.slots.state("ota_1") == "valid", 10, what="ota_1 marked valid")
    assert dev.hal.image == "ota_1" and dev.pointer()["image"] == "ota_1"  # type: ignore[index]
    assert (dev.base / "flash" / "ota_1.bin").read_bytes()[:90_000] == (tmp_path / "new.bin").read_bytes()
    # the hello names the image as its release did
    await async_wait_for(lambda: image_said(rig, dev) == "1.29.1", 10, what="the hello naming 1.29.1")
    # an image with a set that fails its trial: the bootloader takes the
    # image back at the reset, the boot loader the set
    (tmp_path / "newer.bin").write_bytes(app_image(80_000, 3))
    eco = tmp_path / "src" / "eco"
    shutil.copytree(FEATURES / "eco", eco, ignore=shutil.ignore_patterns("__pycache__"))
    init = eco / "__init__.py"
    init.write_text(
        init.read_text().replace("def start(ctx):\n", "def start(ctx):\n    raise RuntimeError('no')\n")
    )
    bad = build(
        "thermostat", [FEATURES / "thermostat", eco], "7.0", tmp_path / "r7", 7, keys=keys,
        image=tmp_path / "newer.bin", image_version="1.29.2",
    )  # fmt: skip
    u = await rig.update(dev, rig.publish(bad.path))
    assert u.state == "rolled_back", u
    await async_wait_for(lambda: dev.running() == ["thermostat"], 10, what="the set before")
    assert dev.hal.image == "ota_1" and dev.hal.slots.state("ota_0") == "aborted"
    p = dev.pointer()
    assert p is not None and (p["counter"], p["image"], p["state"]) == (6, "ota_1", "committed")
    await async_wait_for(lambda: image_said(rig, dev) == "1.29.1", 10, what="the hello naming 1.29.1 again")


def image_said(rig: Rig, dev: Any) -> object:
    """The image the device's last hello named, as the gateway keeps it."""
    d = rig.gw.store.device(dev.id)
    return (d.ota or {}).get("image", "absent") if d is not None else None


async def test_an_offer_of_the_update_on_trial_is_ignored_not_failed(
    rig: Rig, make_device: MakeDevice, eco_release: Path
) -> None:
    # a gateway that restarts before a device's statuses come in offers the
    # update again while the device runs it on trial: the device has taken it
    dev = await make_device(trial_s=3)
    statuses = watch_statuses(rig)
    await async_wait_for(lambda: rig.gw.is_online(dev.id), 10, what=f"{dev.id} online")
    u = await rig.gw.ota.start(dev.id, rig.publish(eco_release).id)
    await async_wait_for(
        lambda: any(s["id"] == u.id and s["state"] == "trial" for s in statuses), 15, what="the trial"
    )
    again = json.dumps({"v": 1, "id": u.id, "manifest": "ab" * 32, "size": 10, "freshness": {}}).encode()
    await rig.gw.publish(f"pb/{dev.id}/ota/offer", again, 1, False)
    await async_wait_for(
        lambda: any(s["id"] == u.id and s["state"] == "committed" for s in statuses), 15, what="the commit"
    )
    assert not [s for s in statuses if s["id"] == u.id and s["state"] == "failed"], statuses
