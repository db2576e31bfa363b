"""A rollout through a gateway and a broker that restart together (Mosquitto
without persistence, as gateway.broker.mosquitto_config writes it) while the
devices come back before the gateway: the gateway squares every update in
progress with what the devices say when it reconnects, and every update
commits."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

import pytest

from gateway.service import Gateway
from gateway.store import Store
from ota.keys import Keys
from simulator.fleet import Fleet

from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import TRIAL_S


@pytest.mark.long
async def test_gateway_and_broker_restart_together_mid_rollout_and_every_update_commits(
    own_mosquitto: Mosquitto, tmp_path: Path, keys: Keys, eco_release: Path
) -> None:
    tag = secrets.token_hex(2)
    passwords: dict[str, str] = {}
    fleet = Fleet(
        own_mosquitto.url,
        tmp_path / "devices",
        models={"thermostat": 8},
        prefix={"thermostat": f"t{tag}"},
        passwords=lambda dev: passwords.setdefault(dev, secrets.token_urlsafe(9)),
        root=keys.root_bytes,
        trial_s=TRIAL_S,
        telemetry_s=1,
        sample_s=0.2,
        keepalive=5,
        seed=11,
    )
    own_mosquitto.add_users(passwords)
    ids = list(passwords)
    store = Store(tmp_path / "gw.db")

    def gateway() -> tuple[Gateway, asyncio.Task[None]]:
        gw = Gateway(own_mosquitto.gateway_url, store, client_id=f"gw-{tag}", api=None, keys=keys)
        gw.reconcile_delay = 0.5
        return gw, asyncio.create_task(gw.run(), name="test-gateway")

    gw, task = gateway()
    fleet.start()
    try:
        await fleet.wait_connected(30)
        await async_wait_for(lambda: all(gw.is_online(d) for d in ids), 20, what="all online")
        release, _ = gw.ota.releases.add(eco_release, 0.0)
        # half the fleet loses power as the rollout starts: their offers are lost with them
        off = ids[:4]
        for d in off:
            fleet.faults.power_cut(d, off_s=3.0)
        await async_wait_for(lambda: not any(gw.is_online(d) for d in off), 15, what="offline")
        updates = [await gw.ota.start(d, release.id, force=True) for d in ids]
        # the gateway and the broker go down together; the devices are back before the gateway
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(own_mosquitto.restart, 0.5)
        await async_wait_for(
            lambda: all(d.device is not None and d.device.client.up for d in fleet.devices),
            40,
            what="every device back on the new broker",
        )
        untaken = [u.id for u in updates if store_state(gw, u.id) == ("offered", None)]
        assert untaken, "the test needs devices that did not take their offer"
        gw, task = gateway()
        await async_wait_for(
            lambda: all(gw.ota.get(u.id).ended for u in updates), 90, what="every update ended"
        )
        ended = {u.id: gw.ota.get(u.id).state for u in updates}
        assert set(ended.values()) == {"committed"}, ended
        assert gw.ota.stats["reoffers"] >= 1  # the untaken offers were sent again
        # the steps show the way each went, activating included (the device says it late)
        for u in updates:
            states = [s["state"] for s in gw.ota.table.steps(u.id)]
            assert states[0] == "offered" and states[-3:] == ["activating", "trial", "committed"], states
        for d in fleet.devices:
            await async_wait_for(
                lambda d=d: d.running() == ["eco", "thermostat"], 10, what=f"{d.id} runs eco"
            )
    finally:
        await fleet.aclose(30)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()


def store_state(gw: Gateway, uid: str) -> tuple[str, str | None]:
    u = gw.ota.table.get(uid)
    assert u is not None
    return u.state, u.device_state
