"""Roots over the air at the gateway (gateway/roots.py, gateway/updater.py;
docs/ota.md 5.6): a device on an older root is sent the chain, one root per
hello, before its update's offer; a device of protocol level 1 is offered
updates as before, with statements its old root checks; a root refused ends
the update waiting for it; the gateway takes a rotation of its keys folder
while it runs. On the session's real Mosquitto, the device played by OtaDevice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ReleaseRefusedError
from gateway.roots import RESEND_S, RootPlan
from ota.keys import Keys, load_keys, rotate_root

from ..support import messages
from ..support.ota import accept_offer
from ..support.wait import async_wait_for
from .conftest import MakeRelease, StartGateway
from .test_updater import MakeDevice, registered


def _root_file(keys: Keys, version: int) -> bytes:
    return (keys.path / f"root.{version}.json").read_bytes()


async def test_a_device_on_an_older_root_takes_the_chain_before_its_update(
    start_gateway: StartGateway, keys: Keys, make_release: MakeRelease, ota_devices: MakeDevice
) -> None:
    rotate_root(keys.path, new_release_key=True)
    new = load_keys(rotate_root(keys.path, new_gateway_key=True).path)
    assert new.version == 3 and sorted(new.chain) == [1, 2, 3]
    r = await start_gateway(new)
    dev = await registered(r, ota_devices(), root=1)
    assert await asyncio.to_thread(dev.root) == _root_file(new, 2)
    r.gw.ota.releases.add(make_release(2, signer=new).path, 0.0)
    u = await r.gw.ota.start(dev.id, "thermostat@2")
    assert u.state == "offered"
    # no offer while it trusts root 2: the next root comes at its hello
    await asyncio.to_thread(dev.hello, root=2)
    assert await asyncio.to_thread(dev.root) == _root_file(new, 3)
    with pytest.raises(AssertionError, match="no offer"):
        await asyncio.to_thread(dev.offer, 0.5)
    await asyncio.to_thread(dev.hello, root=3)
    offer = await asyncio.to_thread(dev.offer)
    assert offer["id"] == u.id
    accept_offer(offer, new.root_bytes, "thermostat", 2, dev.id)  # the new gateway key signed it
    assert await asyncio.to_thread(dev.root, 0.5) is None  # up to date: no more roots
    assert r.gw.ota.stats["roots"] == 2


async def test_a_device_back_on_its_older_root_is_sent_the_root_again_at_once(
    start_gateway: StartGateway, keys: Keys, ota_devices: MakeDevice
) -> None:
    """A device that reset as its root came comes back trusting the older
    one: its hello (which comes before its state online, when the gateway
    still has it offline) and its online get it sent the root again, then
    and there; a root sent at a hello of the same connection is not sent
    twice."""
    new = load_keys(rotate_root(keys.path).path)
    r = await start_gateway(new)
    dev = await registered(r, ota_devices(), root=1)
    assert await asyncio.to_thread(dev.root) == _root_file(new, 2)
    for _ in range(2):
        offline = {"v": 1, "dev": dev.id, "state": "offline", "reason": "lost"}
        dev.client.publish(dev.topic("state"), json.dumps(offline), qos=1, retain=True)
        await async_wait_for(lambda: not r.gw.is_online(dev.id), 10, what="offline")
        await registered(r, dev, root=1)  # (hello, then online: as the runtime's birth)
        assert await asyncio.to_thread(dev.root, 5) == _root_file(new, 2)
        assert await asyncio.to_thread(dev.root, 0.5) is None
    # a hello again on the same connection, within RESEND_S: nothing more
    await asyncio.to_thread(dev.hello, root=1, online=False)
    assert await asyncio.to_thread(dev.root, 1) is None
    assert r.gw.ota.stats["roots"] == 3


async def test_a_device_of_protocol_1_is_offered_updates_its_old_root_checks(
    start_gateway: StartGateway, keys: Keys, make_release: MakeRelease, ota_devices: MakeDevice
) -> None:
    old_root = keys.root_bytes
    new = load_keys(rotate_root(keys.path, new_gateway_key=True).path)
    r = await start_gateway(new)
    dev = await registered(r, ota_devices())  # no proto: level 1, takes no roots
    r.gw.ota.releases.add(make_release(2, signer=new).path, 0.0)
    u = await r.gw.ota.start(dev.id, "thermostat@2")
    offer = await asyncio.to_thread(dev.offer)
    assert offer["id"] == u.id and await asyncio.to_thread(dev.root, 0.5) is None
    # signed by the new gateway key and by the retired one: both roots check it
    accept_offer(offer, old_root, "thermostat", 2, dev.id)
    accept_offer(offer, new.root_bytes, "thermostat", 2, dev.id)
    assert len(offer["freshness"]["signatures"]) == 2


async def test_a_root_refused_ends_the_update_that_waited_for_it(
    start_gateway: StartGateway, keys: Keys, make_release: MakeRelease, ota_devices: MakeDevice
) -> None:
    new = load_keys(rotate_root(keys.path).path)
    r = await start_gateway(new)
    dev = await registered(r, ota_devices(), root=1)
    assert await asyncio.to_thread(dev.root) == _root_file(new, 2)
    r.gw.ota.releases.add(make_release(2, signer=new).path, 0.0)
    u = await r.gw.ota.start(dev.id, "thermostat@2")
    dev.status(
        "-",
        "failed",
        counter=0,
        reason="root refused: bad_signature: 0 of 1 required root signatures are valid",
    )
    await async_wait_for(lambda: r.gw.ota.get(u.id).ended, 5, what="the update ended")
    done = r.gw.ota.get(u.id)
    assert done.state == "failed" and "refused root version 2" in str(done.reason)
    assert "bad_signature" in str(done.reason)
    # not sent again, even at its next hello
    await asyncio.sleep(RESEND_S / 5)
    await asyncio.to_thread(dev.hello, root=1)
    assert await asyncio.to_thread(dev.root, 1.0) is None


async def test_the_gateway_takes_a_rotation_of_its_keys_folder_while_it_runs(
    start_gateway: StartGateway, keys: Keys, make_release: MakeRelease, ota_devices: MakeDevice
) -> None:
    r = await start_gateway(keys)
    dev = await registered(r, ota_devices(), root=1)
    assert await asyncio.to_thread(dev.root, 0.5) is None  # it trusts the gateway's root
    stolen = make_release(2)  # signed with the release key about to be replaced
    new = rotate_root(keys.path, new_release_key=True)
    # within the watch's second: the new root goes to the online device
    assert await asyncio.to_thread(dev.root, 5) == _root_file(new, 2)
    assert r.gw.ota.keys is not None and r.gw.ota.keys.version == 2
    with pytest.raises(ReleaseRefusedError) as refused:
        r.gw.ota.releases.add(stolen.path, 0.0)
    assert "unknown_key" in str(refused.value)
    r.gw.ota.releases.add(make_release(3, signer=load_keys(keys.path)).path, 0.0)


# ---- the plan, as a property -----------------------------------------------------


def _hello(proto: Any, root: Any) -> dict[str, Any]:
    h: dict[str, Any] = {"ota": {"counter": 0}}
    if proto is not None:
        h["proto"] = proto
    if root is not None:
        h["ota"]["root"] = root
    return h


@given(
    current=st.integers(1, 6),
    proto=st.one_of(st.none(), st.integers(0, 4), st.booleans(), st.text(max_size=2)),
    root=st.one_of(st.none(), st.integers(-2, 8), st.booleans(), st.floats(allow_nan=False)),
    missing=st.sets(st.integers(1, 6)),
)
def test_the_plan_sends_only_the_next_root_to_a_device_of_level_2(
    current: int, proto: Any, root: Any, missing: set[int]
) -> None:
    chain = {v: f"root {v}".encode() for v in range(1, current + 1) if v not in missing or v == current}
    plan = RootPlan(chain)
    got = plan.next_root("d", _hello(proto, root), 100.0)
    level2 = isinstance(proto, int) and not isinstance(proto, bool) and proto >= 2
    trusts = root if isinstance(root, int) and not isinstance(root, bool) else None
    if not level2 or trusts is None or not 0 < trusts < current:
        assert got is None
        return
    want = trusts + 1
    if want in chain:
        assert got == (want, chain[want])
        # the same again within RESEND_S: nothing; after it, the same root
        assert plan.next_root("d", _hello(proto, root), 100.0 + RESEND_S / 2) is None
        assert plan.next_root("d", _hello(proto, root), 100.0 + RESEND_S) == (want, chain[want])
        assert plan.on_refused("d") == want
        assert isinstance(plan.next_root("d", _hello(proto, root), 1000.0), str)
    else:
        assert isinstance(got, str) and f"root.{want}.json" in got


def test_a_keys_folder_with_a_gap_gives_the_chain_above_it(tmp_path: Path, keys: Keys) -> None:
    rotate_root(keys.path)
    rotate_root(keys.path)
    (keys.path / "root.2.json").unlink()
    assert sorted(load_keys(keys.path).chain) == [3]
    (keys.path / "root.2.json").write_bytes(b"{}")  # not a root that follows root 1
    assert sorted(load_keys(keys.path).chain) == [3]


# ---- one device's credentials against the root path ------------------------------


async def test_odd_hellos_and_refusals_from_one_device_reach_no_other(
    start_gateway: StartGateway, keys: Keys, ota_devices: MakeDevice
) -> None:
    new = load_keys(rotate_root(keys.path).path)
    r = await start_gateway(new)
    rogue, other = ota_devices(), ota_devices()
    # values that pass validation: a root far ahead, none, the highest level
    for root in (2**53 - 1, 0, 2):
        await registered(r, rogue, root=root)
        assert await asyncio.to_thread(rogue.root, 0.3) is None, root
    # a refusal it never had cause for, and one in another device's name (spoofed: rejected)
    rogue.status("-", "failed", counter=0, reason="root refused: bad_signature: made up")
    rogue.client.publish(
        f"pb/{rogue.id}/ota/status",
        json.dumps(
            {"v": 1, "dev": other.id, "id": "-", "state": "failed", "reason": "root refused: x", "ts": 1}
        ),
    )
    # a retired protocol level is refused, and the gateway goes on
    hello = messages.hello(rogue.id, proto=0)
    rogue.client.publish(f"pb/{rogue.id}/hello", json.dumps(hello))
    await asyncio.sleep(0.3)
    # the other device, on root 1, is still sent root 2, and only it
    await registered(r, other, root=1)
    assert await asyncio.to_thread(other.root) == _root_file(new, 2)
    assert await asyncio.to_thread(rogue.root, 0.3) is None
    assert other.id not in r.gw.ota.roots.refused
    assert r.gw.rejects.get("unsupported_protocol", 0) >= 1 and r.gw.rejects.get("spoofed", 0) >= 1
