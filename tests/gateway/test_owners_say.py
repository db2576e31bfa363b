"""The owner's say through the API and the command line, on a real gateway,
Mosquitto and SQLite, devices played over the broker by OtaDevice
(docs/rollouts.md 8.1): `never` cancels an offer not installed yet and
neither fails nor treats the member, and a later yes offers it anew; what
cannot be decided is refused clearly and changes nothing; a rollback needs
the maker's revert and the device online; the command line shows and does
the same."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.accounts import Accounts, new_claim_code
from gateway.decisions import DECLINED, POSTPONED, DecisionTable
from gateway.rollout_judging import hard_counts
from ota.keys import Keys

from ..support import messages
from ..support.cli import permabeta
from ..support.ota import OtaDevice
from ..support.wait import async_wait_for
from .conftest import MakeRelease, Running, StartGateway

MakeDevice = Callable[..., OtaDevice]


@dataclass
class Say:
    r: Running
    session: aiohttp.ClientSession
    token: str  # ann's, an owner
    two: str  # the ids of thermostat@2 and @3
    three: str

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(method, self.r.url + path, headers=headers, json=body) as resp:
            return resp.status, await resp.json()

    async def decide(self, dev: str, **body: Any) -> tuple[int, Any]:
        return await self.call("POST", f"/api/v1/devices/{dev}/decision", body)

    def own(self, dev: str) -> None:
        accounts, code = Accounts(self.r.store), new_claim_code()
        accounts.register_claim(dev, code, time.time())
        ann = accounts.get("ann")
        assert ann is not None
        accounts.claim(ann, code, time.time())

    def state(self) -> Any:
        db = self.r.store.db
        return [
            [tuple(row) for row in db.execute(f"SELECT * FROM {t} ORDER BY 1")]
            for t in ("device_decisions", "updates", "rollout_members")
        ]


@pytest.fixture
async def say(start_gateway: StartGateway, keys: Keys, make_release: MakeRelease) -> AsyncIterator[Say]:
    r = await start_gateway(keys)
    two, _ = r.gw.ota.releases.add(make_release(2).path, 1.0)
    three, _ = r.gw.ota.releases.add(make_release(3, extra="three").path, 1.0)
    accounts = Accounts(r.store)
    token = accounts.issue_token(accounts.create("ann", "owner", None, 1.0), "test", 1.0)
    async with aiohttp.ClientSession() as s:
        yield Say(r, s, token, two.id, three.id)


async def online(say: Say, device: OtaDevice, **hello: Any) -> OtaDevice:
    await asyncio.to_thread(device.hello, **hello)
    await async_wait_for(lambda: say.r.gw.is_online(device.id), 10, what=f"{device.id} online")
    say.own(device.id)
    return device


async def cancel_of(device: OtaDevice, uid: str) -> None:
    """The device gets the cancel of update uid (past repeats of offers)."""
    while (msg := await asyncio.to_thread(device.offer)).get("op") != "cancel" or msg["id"] != uid:
        pass


async def test_never_and_later_cancel_an_offer_not_installed_and_a_yes_offers_it_anew(
    say: Say, ota_devices: MakeDevice
) -> None:
    gw = say.r.gw
    dev = await online(say, ota_devices())
    roll = gw.rollouts.create("thermostat@2", f"id={dev.id}", stages=(1.0,), no_revert=True, seed=1)
    first = await async_wait_for(lambda: (m := gw.rollouts.table.member(roll.id, dev.id)) and m.update_id, 10)
    offer = await asyncio.to_thread(dev.offer)
    assert offer["id"] == first
    dev.status(first, "downloading", bytes=0, total=100)
    await async_wait_for(lambda: gw.ota.get(first).state == "downloading", 10)

    status, d = await say.decide(dev.id, release="thermostat@2", decision="never")
    assert (status, d["decision"]) == (200, "never")
    cancelled = gw.ota.get(first)
    assert (cancelled.state, cancelled.reason) == ("failed", DECLINED)
    await cancel_of(dev, first)
    counts = gw.rollouts.status(roll)["stages"][0]["counts"]
    assert counts["declined"] == 1 and counts["failed"] == 0
    assert hard_counts([cancelled]).failed == 0  # not a failure of the release
    status, shown = await say.call("GET", f"/api/v1/devices/{dev.id}/offers")
    assert status == 200 and shown["offers"][0]["state"] == "declined"

    def offered_anew(*before: str) -> Any:
        m = gw.rollouts.table.member(roll.id, dev.id)
        return m is not None and m.update_id not in (None, *before) and m.update_id

    # the owner changes its mind: offered anew; then puts it off, which ends that offer too
    status, _ = await say.decide(dev.id, release="thermostat@2", decision="now")
    assert status == 200
    second = await async_wait_for(lambda: offered_anew(first), 10, what="offered anew")
    assert (await asyncio.to_thread(dev.offer))["id"] == second
    status, _ = await say.decide(dev.id, release="thermostat@2", decision="later", until="1d")
    assert status == 200 and (gw.ota.get(second).state, gw.ota.get(second).reason) == ("failed", POSTPONED)
    await cancel_of(dev, second)
    await asyncio.sleep(1.5)  # (a step of the rollout, which does not offer it)
    assert gw.ota.active(dev.id) is None
    assert gw.rollouts.status(roll)["stages"][0]["counts"]["postponed"] == 1
    status, _ = await say.decide(dev.id, release="thermostat@2", decision="now")
    third = await async_wait_for(lambda: offered_anew(first, second), 10, what="offered once more")
    assert (await asyncio.to_thread(dev.offer))["id"] == third
    dev.status(third, "staged")
    await async_wait_for(lambda: gw.ota.get(third).state == "staged", 10)
    before = say.state()
    for decision, until in (("never", None), ("later", "1d")):
        status, answer = await say.decide(dev.id, release="thermostat@2", decision=decision, until=until)
        assert (status, answer["error"]["code"]) == (409, "too_late"), decision
        assert "roll it back instead" in answer["error"]["message"]
    assert say.state() == before and gw.ota.get(third).state == "staged"


async def test_what_cannot_be_decided_is_refused_and_changes_nothing(
    say: Say, ota_devices: MakeDevice
) -> None:
    dev = await online(say, ota_devices())
    runs_two = await online(say, ota_devices(), counter=2, manifest=say.two)
    say.r.store.upsert_hello("sh-ann", messages.hello("sh-ann", model="shirt", board="shirt-v1"), 1.0)
    say.own("sh-ann")
    await say.decide(dev.id, release="thermostat@2", decision="later", until="2d")
    before = say.state()
    for who, body, status, code, words in [
        (dev.id, [], 400, "bad_request", "body must be"),
        (dev.id, {"decision": "now"}, 400, "bad_request", "body must be"),
        (
            dev.id,
            {"release": "thermostat@2", "decision": "now", "device": "x"},
            400,
            "bad_request",
            "unknown field",
        ),
        (dev.id, {"release": "thermostat@2"}, 422, "bad_decision", "decision must be one of"),
        (dev.id, {"release": "thermostat@2", "decision": "later"}, 422, "bad_decision", "later needs until"),
        (
            dev.id,
            {"release": "thermostat@2", "decision": "later", "until": 1.0},
            422,
            "bad_decision",
            "future",
        ),
        (
            dev.id,
            {"release": "thermostat@2", "decision": "later", "until": "400d"},
            422,
            "bad_decision",
            "90 days",
        ),
        (
            dev.id,
            {"release": "thermostat@2", "decision": "never", "until": "1d"},
            422,
            "bad_decision",
            "later only",
        ),
        (dev.id, {"release": "thermostat@99", "decision": "now"}, 404, "unknown_release", "no release"),
        ("sh-ann", {"release": "thermostat@2", "decision": "now"}, 422, "wrong_model", "is a shirt"),
        (
            runs_two.id,
            {"release": "thermostat@2", "decision": "now"},
            409,
            "not_an_update",
            "no update for it",
        ),
        ("th-nobody", {"release": "thermostat@2", "decision": "now"}, 404, "unknown_device", "no device"),
    ]:
        status_, answer = await say.call("POST", f"/api/v1/devices/{who}/decision", body)
        assert (status_, answer["error"]["code"]) == (status, code), (body, answer)
        assert words in answer["error"]["message"], (body, answer)
    for path, body in (("approve", {"release": "thermostat@2"}), ("rollback", {})):
        status_, answer = await say.call("POST", f"/api/v1/devices/{runs_two.id}/{path}", body)
        assert status_ == 409, answer
    assert say.state() == before
    d = DecisionTable(say.r.store).get(dev.id, say.two)
    assert d is not None and d.decision == "later"


async def test_a_rollback_needs_the_maker_s_revert_and_the_device_online(
    say: Say, ota_devices: MakeDevice, gw_db: Path | str
) -> None:
    gw = say.r.gw
    on_two = await online(say, ota_devices())
    # a device said to run thermostat@2, which this gateway did not give it: the set before is not known
    elsewhere = await online(say, ota_devices(), counter=2, manifest=say.two)
    roll = gw.rollouts.create(
        "thermostat@2", f"id={on_two.id}", stages=(1.0,), reverts=["thermostat@3"], seed=1
    )
    assert (await say.call("GET", f"/api/v1/devices/{on_two.id}/offers"))[1]["rollback"] is None  # factory
    # from the factory set to 2 by the rollout: the maker's revert of the factory set takes it back
    uid = await async_wait_for(
        lambda: (m := gw.rollouts.table.member(roll.id, on_two.id)) and m.update_id, 10
    )
    assert (await asyncio.to_thread(on_two.offer))["id"] == uid
    on_two.status(uid, "committed", counter=2)
    await async_wait_for(lambda: gw.ota.get(uid).state == "committed", 10)
    await online(say, on_two, counter=2, manifest=say.two)
    await async_wait_for(lambda: (gw.store.device(on_two.id).ota or {}).get("counter") == 2, 10)  # type: ignore[union-attr]
    status, shown = await say.call("GET", f"/api/v1/devices/{on_two.id}/offers")
    assert status == 200 and shown["rollback"]["release"]["ref"] == "thermostat@3"
    status, answer = await say.call("POST", f"/api/v1/devices/{elsewhere.id}/rollback", {})
    assert (status, answer["error"]["code"]) == (409, "no_revert")
    # offline: refused, nothing started
    on_two.client.publish(
        on_two.topic("state"), json.dumps({"v": 1, "dev": on_two.id, "state": "offline"}), qos=1, retain=True
    )
    await async_wait_for(lambda: not gw.is_online(on_two.id), 10, what="offline")
    status, answer = await say.call("POST", f"/api/v1/devices/{on_two.id}/rollback", {})
    assert (status, answer["error"]["code"]) == (409, "offline")
    assert gw.ota.active(on_two.id) is None
    # the command line, with the gateway's own token: shown, then started and followed
    db = gw_db
    out = await asyncio.to_thread(permabeta, db, "devices", "offers", on_two.id)
    assert out.returncode == 0, out.stderr
    assert "rollback to the set it ran before" in out.stdout and "thermostat@3" in out.stdout
    await online(say, on_two, counter=2, manifest=say.two)
    out = await asyncio.to_thread(permabeta, db, "devices", "rollback", on_two.id, "--no-wait")
    assert out.returncode == 0, out.stderr
    u = gw.ota.active(on_two.id)
    assert u is not None and u.release == say.three and f"update {u.id}" in out.stdout
    assert (await asyncio.to_thread(on_two.offer))["manifest"] == say.three


async def test_the_command_line_shows_the_offers_and_records_decisions(
    say: Say, ota_devices: MakeDevice, gw_db: Path | str
) -> None:
    gw = say.r.gw
    dev = await online(say, ota_devices())
    await say.call("PATCH", f"/api/v1/devices/{dev.id}/settings", {"policy": "ask"})
    gw.rollouts.create("thermostat@2", f"id={dev.id}", stages=(1.0,), no_revert=True, seed=1)
    db = gw_db
    out = await asyncio.to_thread(permabeta, db, "devices", "offers", dev.id)
    assert out.returncode == 0, out.stderr
    assert "thermostat@2" in out.stdout and "decision: none yet" in out.stdout
    out = await asyncio.to_thread(
        permabeta, db, "devices", "decide", dev.id, "thermostat@2", "later", "--until", "3d"
    )
    assert out.returncode == 0 and "later (not before" in out.stdout, out.stderr
    out = await asyncio.to_thread(permabeta, db, "devices", "decide", dev.id, "thermostat@2", "later")
    assert out.returncode == 1 and "later needs --until" in out.stderr
    out = await asyncio.to_thread(permabeta, db, "devices", "offers", dev.id, "--json")
    (offer,) = json.loads(out.stdout)["offers"]
    assert offer["state"] == "postponed" and offer["decision"]["decision"] == "later"
    out = await asyncio.to_thread(permabeta, db, "devices", "approve", dev.id, "thermostat@2")
    assert out.returncode == 0 and "approved" in out.stdout, out.stderr
    d = DecisionTable(say.r.store).get(dev.id, say.two)
    assert d is not None and d.decision == "now"
    await async_wait_for(lambda: gw.ota.active(dev.id) is not None, 10, what="offered once approved")
    out = await asyncio.to_thread(permabeta, db, "ota", "releases", "thermostat@2")
    assert out.returncode == 0 and "no release notes" in out.stdout, out.stderr
