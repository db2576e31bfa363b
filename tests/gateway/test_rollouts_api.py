"""Rollouts through the gateway's API and CLI (docs/rollouts.md 4): what a
maker creates, what is refused and why, the commands, and a device updated
by hand leaving its rollout. The devices here are registered but offline:
nothing is offered (tests/simulator/test_rollouts.py runs whole fleets)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.settings import SettingsTable, changed
from ota.keys import Keys

from ..support import messages
from ..support.cli import permabeta
from .conftest import MakeRelease, Running, StartGateway


class Api:
    def __init__(self, r: Running, session: aiohttp.ClientSession) -> None:
        self.r = r
        self.session = session

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.r.url + path, headers=self.r.headers(), json=body
        ) as resp:
            return resp.status, await resp.json()

    async def refused(self, body: dict[str, Any]) -> tuple[int, str, str]:
        status, answer = await self.call("POST", "/api/v1/rollouts", body)
        assert status >= 400, answer
        return status, answer["error"]["code"], answer["error"]["message"]


@pytest.fixture
async def api(start_gateway: StartGateway, keys: Keys, make_release: MakeRelease) -> AsyncIterator[Api]:
    r = await start_gateway(keys)
    for counter in (2, 3):
        r.gw.ota.releases.add(make_release(counter, extra=f"r{counter}").path, 1.0)
    table = SettingsTable(r.store)
    for i in range(30):
        dev = f"th-{i:02d}"
        r.store.upsert_hello(dev, messages.hello(dev), 1.0)
        table.save(
            changed(
                table.get(dev), channel="beta" if i < 20 else "stable", tag=["lab"] if i % 5 == 0 else None
            ),
            1.0,
        )
    r.store.upsert_hello("sh-00", messages.hello("sh-00", model="shirt"), 1.0)
    async with aiohttp.ClientSession() as s:
        yield Api(r, s)


async def test_a_rollout_takes_the_cohort_of_the_release_s_model_in_random_stages(api: Api) -> None:
    status, st = await api.call(
        "POST",
        "/api/v1/rollouts",
        {"release": "thermostat@2", "cohort": "channel=beta and not tag=lab", "stages": "25%,100%",
         "soak": "1h", "revert": ["thermostat@3"], "seed": 7},
    )  # fmt: skip
    assert status == 201, st
    r = st["rollout"]
    assert (r["ref"], r["state"], r["stage"], r["stages"], r["soak_s"]) == (
        "thermostat@2",
        "running",
        0,
        [0.25, 1.0],
        3600,
    )
    assert r["cohort"] == "channel=beta and not tag=lab" and r["seed"] == 7
    assert r["reverts"] == {"0": api.r.gw.ota.releases.find("thermostat@3").id}
    members = api.r.gw.rollouts.table.members(r["id"])
    assert len(members) == 16  # 20 beta, 4 of them lab
    assert sum(1 for m in members if m.stage == 0) == 4
    assert {m.device for m in members} == {f"th-{i:02d}" for i in range(20) if i % 5}
    # offline, not offered: stage 1's members wait for their devices, stage 2's for their stage
    counts = [s["counts"] for s in st["stages"]]
    assert (counts[0]["offline"], counts[1]["pending"]) == (4, 12)
    status, listed = await api.call("GET", "/api/v1/rollouts")
    assert [x["id"] for x in listed] == [r["id"]]
    status, again = await api.call("GET", f"/api/v1/rollouts/{r['id'][:6]}")
    assert status == 200 and again["rollout"]["id"] == r["id"]
    decisions = api.r.gw.rollouts.table.decisions(r["id"])
    assert decisions[0]["kind"] == "created" and decisions[0]["numbers"] == {"stages": [4, 12]}


async def test_the_factory_set_signed_again_covers_the_factory_set_in_a_later_rollout(
    api: Api, make_release: MakeRelease
) -> None:
    """A revert that matches no stored release covers the factory set; once
    offered it is stored, and the maker's next revert of the factory set
    (the same files, a higher counter) matches it: it still covers the
    factory set, as the revert before it did."""
    status, st = await api.call(
        "POST",
        "/api/v1/rollouts",
        {"release": "thermostat@2", "cohort": "id=th-01", "revert": ["thermostat@3"]},
    )
    assert status == 201 and st["rollout"]["reverts"] == {"0": api.r.gw.ota.releases.find("thermostat@3").id}
    for counter, extra in ((4, "r4"), (5, "r3")):  # a new release; the factory set signed again
        api.r.gw.ota.releases.add(make_release(counter, extra=extra).path, 1.0)
    status, st = await api.call(
        "POST",
        "/api/v1/rollouts",
        {"release": "thermostat@4", "cohort": "id=th-02", "revert": ["thermostat@5"]},
    )
    again = api.r.gw.ota.releases.find("thermostat@5").id
    assert status == 201, st
    assert st["rollout"]["reverts"] == {"0": again, "3": again}


async def test_what_cannot_be_rolled_out_is_refused_saying_why(api: Api) -> None:
    base = {"release": "thermostat@2", "no_revert": True}
    cases = [
        ({**base, "cohort": "channel=alpha"}, (422, "bad_cohort", "unknown channel 'alpha'")),
        ({**base, "cohort": "tag=nowhere"}, (422, "no_devices", "selects no thermostat")),
        (
            {"release": "thermostat@2"},
            (422, "no_revert", "no revert for the members that run the factory set"),
        ),
        ({"release": "thermostat@3", "revert": ["thermostat@2"]}, (422, "no_revert", "has counter 2")),
        (
            {**base, "metrics": ["thermostat.nothing"]},
            (422, "bad_rollout", "unknown metric 'thermostat.nothing'"),
        ),
        ({**base, "stages": "50%"}, (422, "bad_rollout", "the last stage must be 100%")),
        ({**base, "soak": "forever"}, (422, "bad_rollout", "a duration is")),
        ({**base, "release": "thermostat@9"}, (404, "unknown_release", "no release thermostat@9")),
        ({**base, "colour": "red"}, (400, "bad_request", "unknown field 'colour'")),
        ({**base, "seed": "x"}, (400, "bad_request", "'seed' must be a int")),
        ({"cohort": "all"}, (400, "bad_request", "'release' names the release")),
    ]
    for body, (status, code, words) in cases:
        got = await api.refused(body)
        assert got[:2] == (status, code) and words in got[2], (body, got)
    assert api.r.gw.rollouts.table.all() == []
    # a device is in one running rollout at a time
    status, _ = await api.call("POST", "/api/v1/rollouts", {**base, "cohort": "tag=lab"})
    assert status == 201
    got = await api.refused({**base, "cohort": "id=th-05"})
    assert got[:2] == (409, "in_rollout") and "th-05 in" in got[2]


async def test_pause_resume_abort_and_a_device_updated_by_hand_leaves(api: Api) -> None:
    status, st = await api.call("POST", "/api/v1/rollouts", {"release": "thermostat@2", "no_revert": True})
    rid = st["rollout"]["id"]
    for command, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        status, st = await api.call("POST", f"/api/v1/rollouts/{rid}/{command}")
        assert (status, st["rollout"]["state"]) == (200, state)
    for command, code in (("resume", "wrong_state"), ("abort", "wrong_state"), ("revert", "no_revert")):
        status, answer = await api.call("POST", f"/api/v1/rollouts/{rid}/{command}")
        assert answer["error"]["code"] == code, (command, answer)
    assert (await api.call("POST", f"/api/v1/rollouts/{rid}/explode"))[0] == 404
    assert (await api.call("GET", "/api/v1/rollouts/ffffffffffff"))[1]["error"]["code"] == "unknown_rollout"
    kinds = [d["kind"] for d in api.r.gw.rollouts.table.decisions(rid)]
    assert kinds == ["created", "pause", "resume", "abort"]
    # a device of a running rollout is not updated by hand unless forced; then it leaves
    status, st = await api.call("POST", "/api/v1/rollouts", {"release": "thermostat@2", "no_revert": True})
    rid = st["rollout"]["id"]
    status, answer = await api.call("POST", "/api/v1/devices/th-03/update", {"release": "thermostat@3"})
    assert (status, answer["error"]["code"]) == (409, "in_rollout") and rid in answer["error"]["message"]
    # (an update that cannot start leaves it in the rollout)
    status, answer = await api.call(
        "POST", "/api/v1/devices/th-03/update", {"release": "thermostat@9", "force": True}
    )
    assert (status, answer["error"]["code"]) == (404, "unknown_release")
    assert api.r.gw.rollouts.table.member(rid, "th-03").left is None  # type: ignore[union-attr]
    status, _ = await api.call(
        "POST", "/api/v1/devices/th-03/update", {"release": "thermostat@3", "force": True}
    )
    assert status == 201
    left = [m for m in api.r.gw.rollouts.table.members(rid) if m.device == "th-03"]
    assert left[0].left is not None
    st = (await api.call("GET", f"/api/v1/rollouts/{rid}"))[1]
    assert sum(s["counts"]["left"] for s in st["stages"]) == 1


def _cli(db: Path, *words: str) -> subprocess.CompletedProcess[str]:
    return permabeta(db, "rollout", *words)


async def test_the_cli_creates_lists_and_shows_a_rollout(api: Api, gw_db: Path | str) -> None:
    db = gw_db
    out = await asyncio.to_thread(
        _cli,
        db,
        "create",
        "thermostat@2",
        "--cohort",
        "tag=lab",
        "--stages",
        "50%,100%",
        "--revert",
        "thermostat@3",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("rollout ") and "thermostat@2 to tag=lab, running" in lines[0]
    rid = lines[0].split()[1].rstrip(":")
    assert any(line.startswith(">  1   50% [") and "offline" in line for line in lines), lines
    out = await asyncio.to_thread(_cli, db, "list")
    assert rid in out.stdout and "running" in out.stdout
    out = await asyncio.to_thread(_cli, db, "status", rid, "--once")
    assert out.returncode == 0 and "stage 1 of 2" in out.stdout
    out = await asyncio.to_thread(_cli, db, "create", "thermostat@2", "--cohort", "channel=alpha")
    assert out.returncode == 1 and "unknown channel 'alpha'" in out.stderr


async def test_a_new_rollout_takes_its_devices_from_a_completed_or_halted_one(api: Api) -> None:
    status, st = await api.call("POST", "/api/v1/rollouts", {"release": "thermostat@2", "no_revert": True})
    old = api.r.gw.rollouts.table.find(st["rollout"]["id"])
    api.r.gw.rollouts.table.change(old, 2.0, "completed", "the last stage passed", state="completed")
    status, st = await api.call(
        "POST", "/api/v1/rollouts", {"release": "thermostat@3", "no_revert": True, "cohort": "tag=lab"}
    )
    assert status == 201, st
    taken = {m.device for m in api.r.gw.rollouts.table.members(st["rollout"]["id"])}
    left = {m.device for m in api.r.gw.rollouts.table.members(old.id) if m.left is not None}
    assert taken == left == {f"th-{i:02d}" for i in range(0, 30, 5)}  # never acted on by both


async def test_a_device_updated_by_hand_leaves_a_halted_or_completed_rollout_too(api: Api) -> None:
    # (neither offers it the release nor reverts it over the update by hand)
    status, st = await api.call("POST", "/api/v1/rollouts", {"release": "thermostat@2", "no_revert": True})
    old = api.r.gw.rollouts.table.find(st["rollout"]["id"])
    for state, dev in (("completed", "th-01"), ("halted", "th-02")):
        old = api.r.gw.rollouts.table.change(old, 2.0, state, "by the test", state=state)
        status, _ = await api.call(
            "POST", f"/api/v1/devices/{dev}/update", {"release": "thermostat@3", "force": True}
        )
        assert status == 201
        assert api.r.gw.rollouts.table.member(old.id, dev).left is not None  # type: ignore[union-attr]
    assert sum(m.left is not None for m in api.r.gw.rollouts.table.members(old.id)) == 2


async def test_an_offer_stored_but_not_recorded_when_the_gateway_stopped_is_not_made_again(api: Api) -> None:
    from gateway.rollout_service import RolloutService
    from gateway.updates import new_update

    _, st = await api.call("POST", "/api/v1/rollouts", {"release": "thermostat@2", "no_revert": True})
    r = api.r.gw.rollouts.table.find(st["rollout"]["id"])
    dev = api.r.gw.rollouts.table.members(r.id)[0].device
    rel = api.r.gw.ota.releases.find("thermostat@2")
    # the update was stored, then the gateway stopped before the member's row said so
    u = new_update("0123456789ab", dev, rel.id, rel.model, rel.counter, rel.version, 1, r.created + 1)
    api.r.gw.ota.table.save(u)
    fresh = RolloutService(api.r.gw)  # a gateway started again
    await fresh.tick()
    row = next(m for m in fresh.table.members(r.id) if m.device == dev)
    assert row.update_id == "0123456789ab"


async def test_odd_input_to_the_rollout_and_settings_endpoints_gets_a_clear_refusal(api: Api) -> None:
    odd_rollouts: list[Any] = [
        {"release": "thermostat@2", "stages": "nan%,100%"},
        {"release": "thermostat@2", "stages": "1e308%"},
        {"release": "thermostat@2", "stages": ",".join(["1%"] * 500)},
        {"release": "thermostat@2", "soak": "9" * 400 + "d"},
        {"release": "thermostat@2", "max_failure_rate": "-inf"},
        {"release": "thermostat@2", "seed": 2**63},
        {"release": "thermostat@2", "seed": True},
        {"release": "thermostat@2", "cohort": "(" * 5000},
        {"release": "thermostat@2", "cohort": "id=\ud800"},
        {"release": "thermostat@2", "metrics": [["x"]]},
        {"release": "thermostat@2", "revert": ["thermostat@" + "9" * 5000]},
        {"release": "\x00" * 100},
        {"release": "thermostat@2", "no_revert": "yes"},
        [],
        "x",
        None,
    ]
    for body in odd_rollouts:
        status, answer = await api.call("POST", "/api/v1/rollouts", body)
        assert 400 <= status < 500 and answer["error"]["message"], (body, status, answer)
    for path in (
        "/api/v1/rollouts/" + "é" * 8,
        "/api/v1/rollouts/%00%00%00%00",
        "/api/v1/rollouts/abcd/pause",
    ):
        status, answer = await api.call("POST" if path.endswith("pause") else "GET", path)
        assert status == 404, (path, answer)
    odd_settings: list[Any] = [
        {"tag": ["a"] * 20000},
        {"untag": [None]},
        {"window": "23:59-00:00" * 1000},
        {"window": "\ud800"},
        {"policy": "window", "window": "00:00-00:01", "channel": "beta", "tag": ["x" * 32]},
    ]
    for body in odd_settings:
        status, answer = await api.call("PATCH", "/api/v1/devices/th-01/settings", body)
        assert status < 500, (body, status, answer)
    # what was refused changed nothing of the fleet; the last body was a valid one
    assert api.r.gw.rollouts.table.all() == []
    s = SettingsTable(api.r.store).get("th-01")
    assert s.policy == "window" and s.tags == frozenset({"x" * 32})
    assert SettingsTable(api.r.store).get("th-02").policy == "auto"
