"""The owner's say on updates, end to end (docs/rollouts.md 8.1): a gateway
with keys and its API in this loop, the session's Mosquitto, and virtual
thermostats that run the firmware's own update code. An owner asked first
sees the offer with its signed notes and what it changes, puts it off,
then says now, and the device commits it; another owner's device is out
of reach; a device whose owner said never is not offered the release; a
rollback goes through only where the maker signed one, and then commits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.accounts import Accounts, new_claim_code
from gateway.service import Gateway
from ota.keys import Keys
from ota.release import build

from ..gateway.conftest import StartGateway, start_gateway  # noqa: F401 (the fixture, used here too)
from ..support.wait import async_wait_for
from .conftest import FEATURES, MakeDevice

NOTES = (
    "Eco pre-heats while energy is cheap.\nIt publishes the hour's price: nothing leaves your home but that."
)


@dataclass
class Owners:
    gw: Gateway
    url: str
    tokens: dict[str, str]  # account -> token
    session: aiohttp.ClientSession

    async def call(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        async with self.session.request(method, self.url + path, headers=headers, json=body) as resp:
            return resp.status, await resp.json()

    async def offers(self, who: str, dev: str) -> dict[str, Any]:
        status, answer = await self.call(who, "GET", f"/api/v1/devices/{dev}/offers")
        assert status == 200, answer
        return dict(answer)

    def claim(self, who: str, dev: str) -> None:
        accounts, code = Accounts(self.gw.store), new_claim_code()
        accounts.register_claim(dev, code, time.time())
        account = accounts.get(who)
        assert account is not None
        accounts.claim(account, code, time.time())


@pytest.fixture
async def owners(start_gateway: StartGateway, keys: Keys) -> AsyncIterator[Owners]:  # noqa: F811
    r = await start_gateway(keys)
    accounts = Accounts(r.store)
    tokens = {}
    for name, role in (("ann", "owner"), ("bob", "owner"), ("mia", "maker")):
        tokens[name] = accounts.issue_token(accounts.create(name, role, None, 1.0), "test", 1.0)
    async with aiohttp.ClientSession() as session:
        yield Owners(r.gw, r.url, tokens, session)


@pytest.mark.long
async def test_an_owner_asked_first_reads_the_offer_puts_it_off_says_now_then_rolls_back(
    owners: Owners, make_device: MakeDevice, keys: Keys, tmp_path: Path
) -> None:
    gw = owners.gw
    eco = build(
        "thermostat",
        [FEATURES / "thermostat", FEATURES / "eco"],
        "2.0.0",
        tmp_path / "r2",
        2,
        keys=keys,
        notes=NOTES,
    )
    # the factory set (thermostat alone) signed again above it: the maker's revert
    back = build("thermostat", [FEATURES / "thermostat"], "1.0.0-again", tmp_path / "r3", 3, keys=keys)
    for r in (eco, back):
        gw.ota.releases.add(r.path, time.time())
    asker, decliner, bobs = await make_device(), await make_device(), await make_device()
    owners.claim("ann", asker.id)
    owners.claim("ann", decliner.id)
    owners.claim("bob", bobs.id)
    for dev in (asker, decliner, bobs):
        await async_wait_for(lambda d=dev: gw.is_online(d.id), 10, what=f"{dev.id} online")
    status, _ = await owners.call("ann", "PATCH", f"/api/v1/devices/{asker.id}/settings", {"policy": "ask"})
    assert status == 200
    # (its heater off: a rollout's offer waits while the thermostat heats)
    values = {"feature": "thermostat", "values": {"mode": "off"}}
    status, reply = await owners.call(
        "ann", "POST", f"/api/v1/devices/{asker.id}/commands", {"op": "config.set", "args": values}
    )
    assert status == 200 and reply["reply"]["ok"], reply
    # the owner of the other device says never before the rollout comes
    status, d = await owners.call(
        "ann",
        "POST",
        f"/api/v1/devices/{decliner.id}/decision",
        {"release": "thermostat@2", "decision": "never"},
    )
    assert (status, d["decision"], d["ref"]) == (200, "never", "thermostat@2")
    roll = gw.rollouts.create(
        "thermostat@2", f"id={asker.id} or id={decliner.id}", stages=(1.0,), reverts=["thermostat@3"], seed=1
    )

    # what the owner is shown: the notes, signed with the release, and what it changes
    shown = await owners.offers("ann", asker.id)
    assert shown["runs"]["counter"] == 0 and shown["runs"]["features"] == {"thermostat": "1.1.0"}
    assert shown["policy"] == "ask" and shown["rollback"] is None
    (offer,) = shown["offers"]
    assert offer["release"]["ref"] == "thermostat@2" and offer["notes"] == NOTES
    assert offer["rollout"] == roll.id and offer["decision"] is None
    assert offer["state"] in ("awaiting_owner", "pending")
    changes = offer["changes"]
    assert changes["features"]["added"] == [{"name": "eco", "version": "1.0.0"}]
    assert changes["features"]["unchanged"] == [{"name": "thermostat", "version": "1.1.0"}]
    assert changes["summary"] == "new: publishes boost, cheap, price"
    assert changes["unknown"] == [] and changes["lacks"] == []
    assert offer["descriptions"]["eco"].startswith("Pre-heats while energy is cheap")

    # later: put off for a day, and not offered meanwhile
    status, d = await owners.call(
        "ann",
        "POST",
        f"/api/v1/devices/{asker.id}/decision",
        {"release": "thermostat@2", "decision": "later", "until": "1d"},
    )
    assert status == 200 and d["decision"] == "later" and d["until"] > time.time() + 86000
    await asyncio.sleep(2.5)  # (steps of the rollout)
    (offer,) = (await owners.offers("ann", asker.id))["offers"]
    assert offer["state"] == "postponed" and offer["decision"]["decision"] == "later"
    counts = gw.rollouts.status(roll)["stages"][0]["counts"]
    assert counts["postponed"] == 1 and counts["declined"] == 1
    assert gw.ota.active(asker.id) is None and gw.ota.active(decliner.id) is None

    # the other owner cannot see it, nor decide, nor roll it back
    for method, path, body in (
        ("GET", "offers", None),
        ("POST", "decision", {"release": "thermostat@2", "decision": "now"}),
        ("POST", "rollback", {}),
    ):
        status, answer = await owners.call("bob", method, f"/api/v1/devices/{asker.id}/{path}", body)
        assert (status, answer["error"]["code"]) == (404, "unknown_device"), path

    # now: offered at the next step, and the device commits it
    status, d = await owners.call(
        "ann", "POST", f"/api/v1/devices/{asker.id}/decision", {"release": "thermostat@2", "decision": "now"}
    )
    assert status == 200 and d["until"] is None
    row = await async_wait_for(
        lambda: (m := gw.rollouts.table.member(roll.id, asker.id)) is not None and m.update_id and m,
        10,
        what="offered",
    )
    await async_wait_for(lambda: gw.ota.get(row.update_id).state == "committed", 30, what="committed")
    await async_wait_for(lambda: (asker.pointer() or {}).get("counter") == 2, 10, what="on release 2")
    await async_wait_for(lambda: asker.running() == ["eco", "thermostat"], 10, what="eco running")

    # the declined device was never offered it, and counts neither as failed nor treated
    assert gw.rollouts.table.member(roll.id, decliner.id).update_id is None  # type: ignore[union-attr]
    (declined,) = (await owners.offers("ann", decliner.id))["offers"]
    assert declined["state"] == "declined" and declined["decision"]["decision"] == "never"
    # a maker sees every device, and the decisions
    status, seen = await owners.call("mia", "GET", f"/api/v1/devices/{decliner.id}/offers")
    assert status == 200 and seen["offers"][0]["state"] == "declined"
    status, rollout = await owners.call("mia", "GET", f"/api/v1/rollouts/{roll.id}")
    assert status == 200 and rollout["stages"][0]["counts"]["declined"] == 1

    # the rollback the maker signed: back to the factory set, as release 3
    await async_wait_for(
        lambda: (gw.store.device(asker.id).ota or {}).get("state") == "committed",
        10,
        what="hello on 2",  # type: ignore[union-attr]
    )
    shown = await owners.offers("ann", asker.id)
    assert shown["offers"] == [] and shown["runs"]["release"]["ref"] == "thermostat@2"
    assert shown["rollback"]["release"]["ref"] == "thermostat@3"
    assert shown["rollback"]["changes"]["features"]["removed"] == [{"name": "eco", "version": "1.0.0"}]
    assert shown["rollback"]["changes"]["summary"] == "no longer: publishes boost, cheap, price"
    status, u = await owners.call("ann", "POST", f"/api/v1/devices/{asker.id}/rollback", {})
    assert status == 201 and u["ref"] == "thermostat@3", u
    await async_wait_for(lambda: gw.ota.get(u["id"]).state == "committed", 30, what="rolled back")
    await async_wait_for(lambda: (asker.pointer() or {}).get("counter") == 3, 10, what="on release 3")
    await async_wait_for(lambda: asker.running() == ["thermostat"], 10, what="eco gone")
    # back on the set before: no release takes it back to 2's set again
    await async_wait_for(
        lambda: (gw.store.device(asker.id).ota or {}).get("counter") == 3,
        10,
        what="hello on 3",  # type: ignore[union-attr]
    )
    status, answer = await owners.call("ann", "POST", f"/api/v1/devices/{asker.id}/rollback", {})
    assert (status, answer["error"]["code"]) == (409, "no_revert")
    assert (await owners.offers("ann", asker.id))["rollback"] is None
    # a copy of 2's set signed below the counter it runs is no way back; one above it is
    for counter in (1, 4):
        again = build(
            "thermostat",
            [FEATURES / "thermostat", FEATURES / "eco"],
            f"2.0.0-{counter}",
            tmp_path / f"c{counter}",
            counter,
            keys=keys,
        )
        gw.ota.releases.add(again.path, time.time())
        rollback = (await owners.offers("ann", asker.id))["rollback"]
        assert (rollback and rollback["release"]["ref"]) == (None if counter == 1 else "thermostat@4")
