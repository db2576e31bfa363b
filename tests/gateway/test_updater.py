"""Updates through a gateway running in this process, on the session's real
Mosquitto and real SQLite, with the device played over the broker by
OtaDevice (its own credentials): offers, chunks, statuses, cancels, the
deadline, stale retained statuses, and a gateway restart mid-update."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from firmware.pb.errors import TrustError
from gateway.broker import BrokerUrl
from gateway.cli_registry import password_hash
from gateway.errors import DeviceOfflineError, DeviceRevokedError, UpdateRefusedError
from gateway.service import Gateway
from gateway.store import Store
from ota.keys import Keys
from ota.release import Release
from simulator.clock import SimClock

from ..conftest import DbAt
from ..support.ota import ErrorChunk, OtaDevice, accept_offer
from ..support.wait import async_wait_for
from .conftest import MakeRelease, Running, StartGateway, stop

T0 = 1_795_400_000.0

MakeDevice = Callable[..., OtaDevice]


async def registered(r: Running, device: OtaDevice, **hello: Any) -> OtaDevice:
    await asyncio.to_thread(device.hello, **hello)
    await async_wait_for(lambda: r.gw.is_online(device.id), 10, what=f"{device.id} online")
    return device


async def published(r: Running, release: Release) -> str:
    stored, _ = r.gw.ota.releases.add(release.path, 0.0)
    return stored.id


async def test_an_offer_carries_a_freshness_statement_the_device_accepts(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    rid = await published(r, release)
    u = await r.gw.ota.start(dev.id, "thermostat@2")
    offer = await asyncio.to_thread(dev.offer)
    assert offer["id"] == u.id and len(u.id) == 12 and int(u.id, 16) >= 0
    assert offer["manifest"] == rid and offer["size"] == len(release.manifest)
    body = accept_offer(offer, keys.root_bytes, "thermostat", 2, dev.id)
    assert body["version"] == u.freshness and 3590 < body["expires"] - u.started <= 3600
    # it names the device and the update: of no use to another device
    assert (body["device"], body["update"]) == (dev.id, u.id)
    with pytest.raises(TrustError, match="another device"):
        accept_offer(offer, keys.root_bytes, "thermostat", 2, dev.id + "x")
    # a second offer's statement is newer, even within the same millisecond
    u2 = await r.gw.ota.start(dev.id, "thermostat@2")
    await asyncio.to_thread(dev.offer)  # the cancel of the first
    offer2 = await asyncio.to_thread(dev.offer)
    assert offer2["id"] == u2.id
    accept_offer(offer2, keys.root_bytes, "thermostat", 2, dev.id, last_version=body["version"] + 1)
    with pytest.raises(TrustError, match="older"):
        accept_offer(offer, keys.root_bytes, "thermostat", 2, dev.id, last_version=u2.freshness)


async def test_a_device_pulls_a_release_and_success_counts_only_at_committed(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, release.sha256[:10])
    offer = await asyncio.to_thread(dev.offer)
    manifest = await asyncio.to_thread(dev.fetch, u.id, "manifest", offer["size"], offer["manifest"])
    assert manifest == release.manifest
    total = sum(f.zsize for f in release.files)
    dev.status(u.id, "offered", counter=2)
    dev.status(u.id, "downloading", bytes=0, total=total, counter=2)
    for f in release.files:
        blob = await asyncio.to_thread(dev.fetch, u.id, f.zsha256, f.zsize, f.zsha256)
        assert blob == release.blob_path(f).read_bytes()
    for state in ("staged", "verified", "activating", "trial"):
        dev.status(u.id, state, counter=2)
    await async_wait_for(lambda: r.gw.ota.get(u.id).state == "trial", 5, what="trial")
    now = r.gw.ota.get(u.id)
    assert not now.success and not now.ended and r.gw.ota.stats["committed"] == 0
    assert now.served == len(release.manifest) + total and now.errors == 0
    sizes = [len(release.manifest)] + [f.zsize for f in release.files]
    assert now.requests == sum(-(-n // dev.chunk) for n in sizes)  # one per chunk, none repeated
    dev.status(u.id, "committed", counter=2)
    await async_wait_for(lambda: r.gw.ota.get(u.id).ended, 5, what="committed")
    done = r.gw.ota.get(u.id)
    assert done.success and done.state == "committed" and done.finished is not None
    assert r.gw.ota.stats["committed"] == 1
    # kept in the database, counters and all
    row = r.gw.ota.table.get(u.id)
    assert row is not None and row.success and row.served == now.served
    # every change of state, once, in order, though the statuses came faster than anyone polls
    steps = r.gw.ota.table.steps(u.id)
    assert [s["state"] for s in steps] == [
        "offered",
        "downloading",
        "staged",
        "verified",
        "activating",
        "trial",
        "committed",
    ]
    assert steps[1]["total"] == total and [s["at"] for s in steps] == sorted(s["at"] for s in steps)
    # an ended update is not served any more
    with pytest.raises(ErrorChunk, match="has ended: committed"):
        await asyncio.to_thread(dev.fetch, u.id, "manifest", offer["size"], offer["manifest"])


async def test_a_second_update_cancels_the_first(
    start_gateway: StartGateway, keys: Keys, make_release: MakeRelease, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    await published(r, make_release(2))
    await published(r, make_release(3))
    first = await r.gw.ota.start(dev.id, "thermostat@2")
    await asyncio.to_thread(dev.offer)
    second = await r.gw.ota.start(dev.id, "thermostat@3")
    cancel = await asyncio.to_thread(dev.offer)
    assert cancel == {"v": 1, "id": first.id, "op": "cancel"}
    assert (await asyncio.to_thread(dev.offer))["id"] == second.id
    old = r.gw.ota.get(first.id)
    assert (old.state, old.reason) == ("failed", f"cancelled: replaced by update {second.id}")
    assert r.gw.ota.active(dev.id) == r.gw.ota.get(second.id)
    # the first one's bytes are no longer served
    with pytest.raises(ErrorChunk, match="has ended: failed"):
        await asyncio.to_thread(dev.fetch, first.id, "manifest", 10, "0" * 64)


async def test_an_offer_lost_in_a_reset_is_sent_again_when_the_device_reconnects(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, "thermostat@2")
    first = await asyncio.to_thread(dev.offer)
    # the device reset before it took the offer: it says online again, and gets it again
    await asyncio.to_thread(dev.hello)
    again = await asyncio.to_thread(dev.offer)
    assert again["id"] == first["id"] == u.id and again["manifest"] == first["manifest"]
    body = accept_offer(again, keys.root_bytes, "thermostat", 2, dev.id)
    assert body["version"] > accept_offer(first, keys.root_bytes, "thermostat", 2, dev.id)["version"]
    await async_wait_for(lambda: r.gw.ota.stats["reoffers"] == 1, 5, what="the repeat counted")
    assert r.gw.ota.get(u.id).freshness == body["version"]
    # once the device has answered, a reconnect sends nothing more
    dev.status(u.id, "offered", counter=2)
    await async_wait_for(lambda: r.gw.ota.get(u.id).device_state == "offered", 5, what="offered")
    await asyncio.to_thread(dev.hello)
    with pytest.raises(AssertionError, match="no offer"):
        await asyncio.to_thread(dev.offer, 1.0)
    assert r.gw.ota.stats["reoffers"] == 1


async def test_a_stale_retained_status_does_not_touch_a_newer_update(
    start_gateway: StartGateway,
    keys: Keys,
    make_release: MakeRelease,
    ota_devices: MakeDevice,
    gw_db: Path | str,
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    await published(r, make_release(2))
    await published(r, make_release(3))
    first = await r.gw.ota.start(dev.id, "thermostat@2")
    dev.status(first.id, "failed", reason="no_space: full")  # retained, on the device's status topic
    await async_wait_for(lambda: r.gw.ota.get(first.id).ended, 5, what="first failed")
    second = await r.gw.ota.start(dev.id, "thermostat@3")
    # the gateway restarts: the broker hands it the retained status of the first update
    await stop(r)
    r = await start_gateway(keys, db=gw_db)
    await async_wait_for(lambda: r.gw.ota.stats["statuses"] >= 1, 5, what="the retained status replayed")
    now = r.gw.ota.get(second.id)
    assert now.state == "offered" and not now.ended and r.gw.ota.active(dev.id) == now
    # and a replayed status of the first, late and out of order, changes nothing either
    dev.status(first.id, "committed")
    dev.status(second.id, "downloading", bytes=5, total=10)
    await async_wait_for(lambda: r.gw.ota.get(second.id).state == "downloading", 5, what="downloading")
    assert r.gw.ota.get(first.id).state == "failed" and r.gw.ota.get(first.id).device_state == "committed"
    assert r.gw.ota.stats["committed"] == 0


async def test_an_update_that_never_commits_fails_at_its_deadline(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys, deadline=0.5)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, "thermostat@2")
    dev.status(u.id, "trial", counter=2)
    await async_wait_for(lambda: r.gw.ota.get(u.id).ended, 5, what="timeout")
    done = r.gw.ota.get(u.id)
    assert (done.state, done.reason, done.success) == ("failed", "timeout", False)
    # a commit after the deadline is noted, but the update stays failed
    dev.status(u.id, "committed", counter=2)
    await async_wait_for(lambda: r.gw.ota.get(u.id).device_state == "committed", 5, what="late commit noted")
    assert r.gw.ota.get(u.id).state == "failed"


async def test_on_a_clock_that_runs_faster_the_deadline_is_the_clock_s_and_liveness_the_network_s(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    # the simulator's clock, 1200 times faster: the default deadline of 900 s
    # passes in under a second, while a device that keeps its link is online
    # for as long as the network says (its keepalive is real seconds)
    clock = SimClock(1200.0)
    r = await start_gateway(keys, clock=clock)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, "thermostat@2")
    assert abs(u.started - clock.now()) < 60 and u.deadline == u.started + 900
    dev.status(u.id, "trial", counter=2)
    await async_wait_for(lambda: r.gw.ota.get(u.id).ended, 5, what="the deadline")
    done = r.gw.ota.get(u.id)
    assert (done.state, done.reason) == ("failed", "timeout") and done.updated - done.started >= 900
    r.gw.check_liveness(clock.now())
    assert r.gw.is_online(dev.id)


async def test_an_update_deferred_past_half_its_statement_s_life_is_offered_again_with_a_new_one(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    # a device busy (or on a low battery) for hours would install on an
    # expired statement: the gateway renews it, same update, newer version
    clock = SimClock(1200.0)  # the statement's hour in three seconds
    r = await start_gateway(keys, clock=clock)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, "thermostat@2", idle=True)
    first = await asyncio.to_thread(dev.offer)
    assert first["idle"] is True
    dev.status(u.id, "deferred", counter=2, reason="busy: thermostat is working (relay on)")
    again = await asyncio.to_thread(dev.offer, 20)
    assert again["id"] == u.id and again["idle"] is True
    v1, v2 = (json.loads(o["freshness"]["signed"])["version"] for o in (first, again))
    assert v2 > v1 and r.gw.ota.get(u.id).freshness == v2
    await async_wait_for(lambda: r.gw.ota.stats["reoffers"] >= 1, 5, what="the renewal counted")
    assert r.gw.ota.get(u.id).state == "deferred"


async def test_a_deferred_device_that_comes_back_gets_the_statement_renewed_while_it_was_away(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, "thermostat@2", idle=True)
    first = await asyncio.to_thread(dev.offer)
    dev.status(u.id, "deferred", counter=2, reason="busy: thermostat is working (relay on)")
    await async_wait_for(lambda: r.gw.ota.get(u.id).state == "deferred", 5, what="deferred")
    await asyncio.to_thread(dev.hello)  # back after a reset: the session's messages are gone
    again = await asyncio.to_thread(dev.offer)
    assert again["id"] == u.id and again["idle"] is True
    v1, v2 = (json.loads(o["freshness"]["signed"])["version"] for o in (first, again))
    assert v2 > v1 and r.gw.ota.get(u.id).freshness == v2
    assert r.gw.ota.get(u.id).state == "deferred"


@pytest.mark.long
async def test_a_deferred_update_waits_past_its_deadline_and_times_out_only_after_it_goes_on(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice, gw_db: Path | str
) -> None:
    r = await start_gateway(keys, deadline=1.0, db=gw_db)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, "thermostat@2")
    dev.status(u.id, "offered", counter=2)
    dev.status(u.id, "deferred", counter=2, reason="battery: 18% is below 30%")
    await async_wait_for(lambda: r.gw.ota.get(u.id).state == "deferred", 5, what="deferred")
    await asyncio.sleep(2.5)  # well past the deadline: the gateway checks every second
    held = r.gw.ota.get(u.id)
    assert (held.state, held.reason, held.ended) == ("deferred", "battery: 18% is below 30%", False)
    assert r.gw.ota.stats["failed"] == 0
    # a restarted gateway knows it is deferred, and still does not time it out
    await stop(r)
    r = await start_gateway(keys, deadline=1.0, db=gw_db)
    await asyncio.sleep(1.5)
    assert r.gw.ota.get(u.id).state == "deferred"
    steps = [s["state"] for s in r.gw.ota.table.steps(u.id)]
    assert steps == ["offered", "deferred"], steps
    # the device goes on: the deadline runs again, moved on by the time it waited
    dev.status(u.id, "downloading", counter=2, bytes=0, total=10)
    await async_wait_for(lambda: r.gw.ota.get(u.id).state == "downloading", 5, what="downloading")
    on = r.gw.ota.get(u.id)
    assert on.reason is None and on.deadline >= held.deadline + 3.5
    await async_wait_for(lambda: r.gw.ota.get(u.id).ended, 5, what="timeout")
    assert (r.gw.ota.get(u.id).state, r.gw.ota.get(u.id).reason) == ("failed", "timeout")


async def test_a_restarted_gateway_goes_on_serving_an_update(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice, gw_db: Path | str
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, "thermostat@2")
    offer = await asyncio.to_thread(dev.offer)
    await asyncio.to_thread(dev.fetch, u.id, "manifest", offer["size"], offer["manifest"])
    await stop(r)
    r = await start_gateway(keys, db=gw_db)
    f = release.files[0]
    assert await asyncio.to_thread(dev.fetch, u.id, f.zsha256, f.zsize, f.zsha256)
    await async_wait_for(lambda: r.gw.ota.get(u.id).served == len(release.manifest) + f.zsize, 5)


async def test_requests_that_are_not_the_devices_get_error_chunks(
    start_gateway: StartGateway, keys: Keys, make_release: MakeRelease, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    mine, other = await registered(r, ota_devices()), await registered(r, ota_devices())
    r2, r3 = make_release(2), make_release(3, extra="only in release 3")
    await published(r, r2)
    await published(r, r3)
    u_mine = await r.gw.ota.start(mine.id, "thermostat@2")
    u_other = await r.gw.ota.start(other.id, "thermostat@3")
    only_in_3 = next(f for f in r3.files if f.zsha256 not in {g.zsha256 for g in r2.files})
    # another release's blob, under my own update
    with pytest.raises(ErrorChunk, match="not part of update"):
        await asyncio.to_thread(mine.fetch, u_mine.id, only_in_3.zsha256, only_in_3.zsize, only_in_3.zsha256)
    # another device's update
    with pytest.raises(ErrorChunk, match=f"no update {u_other.id}"):
        await asyncio.to_thread(mine.fetch, u_other.id, only_in_3.zsha256, only_in_3.zsize, only_in_3.zsha256)
    # an update id nobody has
    with pytest.raises(ErrorChunk, match="no update"):
        await asyncio.to_thread(mine.fetch, "0123456789ab", "manifest", 10, "0" * 64)
    # past the end of the manifest
    flags, _, _, data = await asyncio.to_thread(mine.request, u_mine.id, "manifest", len(r2.manifest) + 1, 10)
    assert flags & 2 and b"past the end" in data
    # a request naming another device on my own topic is spoofed: rejected, not answered
    before = r.gw.rejects.get("spoofed", 0)
    with pytest.raises(AssertionError, match="no chunk"):
        await asyncio.to_thread(mine.request, u_other.id, "manifest", 0, 10, 0.3, other.id)
    assert r.gw.rejects.get("spoofed", 0) == before + 2  # asked twice
    u = r.gw.ota.get(u_mine.id)
    assert u.served == 0 and u.errors == 2 and u.requests == 2  # the other-release blob and past the end


async def test_an_update_is_refused_for_an_offline_device_or_a_wrong_model(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    shirt = await registered(r, ota_devices("sh"), model="shirt")
    await published(r, release)
    with pytest.raises(UpdateRefusedError, match="is for thermostat"):
        await r.gw.ota.start(shirt.id, "thermostat@2")
    newer = await registered(r, ota_devices(), counter=5, manifest="ab" * 32)
    with pytest.raises(UpdateRefusedError, match="runs release counter 5"):
        await r.gw.ota.start(newer.id, "thermostat@2")
    gone = await registered(r, ota_devices())
    offline = {"v": 1, "dev": gone.id, "state": "offline"}
    r.gw.handle(f"pb/{gone.id}/state", json.dumps(offline).encode(), False)
    with pytest.raises(DeviceOfflineError):
        await r.gw.ota.start(gone.id, "thermostat@2")
    u = await r.gw.ota.start(gone.id, "thermostat@2", force=True)
    assert u.state == "offered"


async def test_a_revoked_device_s_update_ends_and_it_is_offered_nothing_forced_or_not(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, "thermostat@2")
    assert (await asyncio.to_thread(dev.offer))["id"] == u.id
    async with aiohttp.ClientSession(headers=r.headers()) as http:

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, f"{r.url}/api/v1/devices/{dev.id}/{path}", json=body) as resp:
                return resp.status, await resp.json()

        reg = {"model": "thermostat", "board": "thermostat-v1", "password_hash": password_hash(dev.id, "pw")}
        assert (await call("PUT", "registration", reg))[0] == 200
        assert (await call("POST", "revoke"))[0] == 200
        ended = r.gw.ota.get(u.id)
        assert ended.state == "failed" and ended.reason == "cancelled: the device was revoked"
        for force in (False, True):
            status, body = await call("POST", "update", {"release": "thermostat@2", "force": force})
            assert status == 409 and body["error"]["code"] == "revoked", body
            with pytest.raises(DeviceRevokedError, match="is revoked"):
                await r.gw.ota.start(dev.id, "thermostat@2", force=force)
        # sent nothing: not even the cancel of its update (its connection here is still open)
        with pytest.raises(AssertionError, match="got no offer"):
            await asyncio.to_thread(dev.offer, 1)
        assert (await call("POST", "restore"))[0] == 200
    again = await r.gw.ota.start(dev.id, "thermostat@2", force=True)
    offer = await asyncio.to_thread(dev.offer)
    assert offer["id"] == again.id and "op" not in offer  # (an offer, not a cancel)


async def test_the_chunk_sender_stops_when_cancelled_as_a_publish_ends(gw_db: Path | str) -> None:
    # aiomqtt waits for a publish with asyncio.wait_for, which on Python 3.11
    # swallows a cancel that comes as the wait ends; the sender, a loop, must
    # stop all the same (it once kept a stopping gateway waiting for ever)
    class Swallowing:
        publishes = 0
        swallow = True

        async def publish(self, *args: Any, **kwargs: Any) -> None:
            self.publishes += 1
            with contextlib.suppress(asyncio.CancelledError if self.swallow else ()):
                await asyncio.sleep(10)

    gw = Gateway(BrokerUrl.parse("mqtt://127.0.0.1:1"), Store(gw_db), api=None)
    client = Swallowing()
    gw._client = client  # type: ignore[assignment]  # the session's slot
    for _ in range(3):
        gw.ota._outbox.put_nowait(("pb/th-1/ota/chunk", b"chunk"))
    sender = asyncio.create_task(gw.ota.send_loop())
    # (a batch: the three at once)
    await async_wait_for(lambda: client.publishes == 3, 2, what="the first batch's publishes")
    sender.cancel()
    await asyncio.wait([sender], timeout=2)
    gw.ota._outbox.put_nowait(("pb/th-1/ota/chunk", b"chunk"))
    await asyncio.sleep(0.1)
    try:
        assert sender.cancelled() and client.publishes == 3
    finally:
        client.swallow = False
        while not sender.done():  # (so that a failure here does not hang the suite)
            sender.cancel()
            await asyncio.wait([sender], timeout=0.1)
        gw.store.close()


async def test_an_activating_that_comes_after_the_trial_is_recorded_without_moving_back(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, release.sha256[:10])
    await asyncio.to_thread(dev.offer)
    for state in ("offered", "downloading", "staged", "verified"):
        dev.status(u.id, state, counter=2)
    # after the reset the device's kept trial goes out first, then the activating the boot reported
    dev.status(u.id, "trial", counter=2)
    await async_wait_for(lambda: r.gw.ota.get(u.id).state == "trial", 5, what="trial")
    dev.status(u.id, "activating", counter=2)
    await async_wait_for(
        lambda: "activating" in [s["state"] for s in r.gw.ota.table.steps(u.id)], 5, what="activating step"
    )
    dev.status(u.id, "activating", counter=2)  # once only
    dev.status(u.id, "committed", counter=2)
    await async_wait_for(lambda: r.gw.ota.get(u.id).ended, 5, what="committed")
    done = r.gw.ota.get(u.id)
    assert done.state == "committed"
    steps = r.gw.ota.table.steps(u.id)
    assert [s["state"] for s in steps] == [
        "offered",
        "downloading",
        "staged",
        "verified",
        "activating",
        "trial",
        "committed",
    ]
    assert [s["at"] for s in steps] == sorted(s["at"] for s in steps)


async def test_a_hello_that_runs_the_release_moves_an_update_whose_statuses_were_lost(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    rid = await published(r, release)
    u = await r.gw.ota.start(dev.id, release.sha256[:10])
    await asyncio.to_thread(dev.offer)
    # every status went with a broker that restarted; the hello after the commit says it all
    await asyncio.to_thread(dev.hello, counter=2, manifest=rid)
    await async_wait_for(lambda: r.gw.ota.get(u.id).ended, 5, what="committed by the hello")
    assert r.gw.ota.get(u.id).state == "committed"


async def test_a_hello_that_runs_another_release_moves_nothing(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices())
    await published(r, release)
    u = await r.gw.ota.start(dev.id, release.sha256[:10])
    await asyncio.to_thread(dev.offer)
    await asyncio.to_thread(dev.hello, counter=1, manifest="ab" * 32)

    def counter() -> object:
        record = r.gw.store.device(dev.id)
        return record.ota.get("counter") if record is not None and record.ota else None

    await async_wait_for(lambda: counter() == 1, 5, what="hello stored")
    assert r.gw.ota.get(u.id).state == "offered" and not r.gw.ota.get(u.id).ended


def test_the_gateways_on_one_database_sign_freshness_versions_that_always_grow(
    db_at: DbAt, keys: Keys, make_release: MakeRelease
) -> None:
    # a pool of workers offers updates on one database: a device refuses a statement whose
    # version is below the last it took, whichever worker signed either
    a = Gateway(BrokerUrl.parse("mqtt://127.0.0.1:1"), Store(db_at()), api=None, keys=keys)
    b = Gateway(BrokerUrl.parse("mqtt://127.0.0.1:1"), Store(db_at()), api=None, keys=keys)
    try:
        stored, _ = a.ota.releases.add(make_release(2).path, T0)
        versions = []
        for i in range(6):
            # b's clock an hour behind, then both within one ms
            at, now = (a, T0 + i / 10_000) if i % 2 else (b, T0 - 3600)
            version, envelope = at.ota._freshness(keys, stored, "th-1", f"5f2a9c01b7e{i}", now)
            assert json.loads(json.loads(envelope)["signed"])["version"] == version
            versions.append(version)
        assert versions == sorted(set(versions)) and versions[:2] == [int((T0 - 3600) * 1000), int(T0 * 1000)]
    finally:
        a.store.close()
        b.store.close()


def test_the_shared_number_is_handed_out_once_under_contention(db_at: DbAt) -> None:
    at = db_at()
    Store(at).close()  # (its tables made once)

    def take(_: int) -> list[int]:
        with Store(at) as store:  # (a worker of its own, on its own connection)
            return [store.next_number("n", 1000) for _ in range(100)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        taken = list(pool.map(take, range(4)))
    for mine in taken:
        assert mine == sorted(mine)
    assert sorted(n for mine in taken for n in mine) == list(range(1000, 1400))
