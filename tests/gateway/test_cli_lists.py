"""`permabeta devices list` and `permabeta updates list`, run as an operator
runs them (the installed command, on the database of a gateway running in
this test's loop): each device's release and update state, and updates
across devices filtered by state."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from ota.keys import Keys
from ota.release import Release

from ..support.processes import PERMABETA
from ..support.wait import async_wait_for
from .conftest import Running, StartGateway
from .test_updater import MakeDevice, published, registered


async def permabeta(r: Running, *args: str) -> subprocess.CompletedProcess[str]:
    r.gw.ota.flush()
    cmd = [str(PERMABETA), *args, "--db", str(r.store.where)]
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=30)


async def as_json(r: Running, *args: str) -> Any:
    done = await permabeta(r, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_devices_list_shows_each_devices_release_and_update_and_updates_list_filters(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    a = await registered(r, ota_devices(), counter=1, manifest="0" * 64)
    b = await registered(r, ota_devices())
    c = await registered(r, ota_devices())
    await published(r, release)
    ua = await r.gw.ota.start(a.id, release.sha256[:10])
    ub = await r.gw.ota.start(b.id, release.sha256[:10])
    await asyncio.to_thread(a.offer)
    for state in ("offered", "downloading", "staged", "activating", "trial", "committed"):
        a.status(ua.id, state, counter=2)
    await async_wait_for(lambda: r.gw.ota.get(ua.id).ended, 5, what="a committed")

    listed = {d["id"]: d for d in await as_json(r, "devices", "list")}
    assert listed[a.id]["release"] == {"counter": 1, "manifest": "0" * 64, "state": "committed"}
    assert listed[a.id]["update"]["id"] == ua.id and listed[a.id]["update"]["state"] == "committed"
    assert listed[b.id]["update"]["id"] == ub.id and listed[b.id]["update"]["state"] == "offered"
    assert listed[c.id]["update"] is None
    assert listed[a.id]["online"] is True and listed[a.id]["model"] == "thermostat"

    everything = await as_json(r, "updates", "list")
    assert [u["id"] for u in everything] == [ub.id, ua.id]  # newest first
    active = await as_json(r, "updates", "list", "--state", "active")
    assert [(u["id"], u["device"], u["state"]) for u in active] == [(ub.id, b.id, "offered")]
    assert [u["id"] for u in await as_json(r, "updates", "list", "--state", "committed")] == [ua.id]
    assert [u["id"] for u in await as_json(r, "updates", "list", "--device", a.id)] == [ua.id]

    table = await permabeta(r, "updates", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["UPDATE", "DEVICE", "RELEASE", "VERSION", "STATE"]
    assert any(ub.id in line and "offered" in line for line in lines)
    assert lines[-1] == "2 updates: 1 committed, 1 offered"
    devices = await permabeta(r, "devices", "list")
    row = next(line for line in devices.stdout.splitlines() if line.startswith(b.id))
    assert "@2 offered" in row
    bad = await permabeta(r, "updates", "list", "--state", "sideways")
    assert bad.returncode == 2 and "--state" in bad.stderr
