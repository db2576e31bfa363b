"""Who may call what through the gateway's API (gateway/api_accounts.py,
docs/protocol.md 10.1), against a real gateway, Mosquitto and SQLite: every
route tried without a token, with an owner's token on another owner's
device, and with a role below its rule, each refused with nothing changed;
claims, ownership transfer, logins and tokens as owners and admins use them."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import api as gw_api
from gateway.accounts import CLAIM_TRIES, Accounts, new_claim_code
from gateway.api_accounts import ACCESS, LOGIN_TRIES
from gateway.broker import password_line
from gateway.settings import SettingsTable
from gateway.store import TelemetryRow
from ota.keys import Keys

from ..support import messages
from ..support.cli import permabeta
from .conftest import MakeRelease, Running, StartGateway

PASSWORD = "correct horse battery"


@dataclass
class World:
    r: Running
    session: aiohttp.ClientSession
    tokens: dict[str, str]  # account name -> its token ("gateway": the gateway's own)
    codes: dict[str, str]  # device -> its claim code

    async def call(
        self, who: str | None, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or self.tokens[who or '']}"} if who or token else {}
        async with self.session.request(method, self.r.url + path, headers=headers, json=body) as resp:
            if resp.content_type != "application/json":  # the web app's files
                return resp.status, await resp.read()
            return resp.status, await resp.json()

    def state(self) -> Any:
        """What a refused request must not change."""
        db = self.r.store.db
        return [
            [tuple(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY 1")]
            for table in (
                "device_owners",
                "device_claims",
                "device_settings",
                "updates",
                "accounts",
                "rollouts",
                "device_decisions",
                "twin_previews",
                "twin_devices",
                "ha_links",
            )
        ]


@pytest.fixture
async def world(start_gateway: StartGateway, keys: Keys, make_release: MakeRelease) -> AsyncIterator[World]:
    r = await start_gateway(keys)
    r.gw.ota.releases.add(make_release(2).path, 1.0)
    accounts = Accounts(r.store)
    tokens = {"gateway": r.token}
    for name, role in (("ann", "owner"), ("bob", "owner"), ("mia", "maker"), ("root", "admin")):
        tokens[name] = accounts.issue_token(accounts.create(name, role, PASSWORD, 1.0), "test", 1.0)
    codes = {}
    for dev in ("th-ann", "th-bob"):
        r.store.upsert_hello(dev, messages.hello(dev), 1.0)
        codes[dev] = new_claim_code()
        accounts.register_claim(dev, codes[dev], 1.0)
    ann, bob = accounts.get("ann"), accounts.get("bob")
    assert ann is not None and bob is not None
    accounts.claim(ann, codes["th-ann"], 1.0)
    accounts.claim(bob, codes["th-bob"], 1.0)
    async with aiohttp.ClientSession() as s:
        yield World(r, s, tokens, codes)


# a request that is valid for each route, on bob's things where it names one
_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/v1/login"): {"name": "ann", "password": PASSWORD},
    ("POST", "/api/v1/session"): {"name": "ann", "password": PASSWORD},
    ("POST", "/api/v1/devices/{id}/commands"): {"op": "ping", "timeout": 1},
    ("POST", "/api/v1/devices/{id}/update"): {"release": "thermostat@2"},
    ("PATCH", "/api/v1/devices/{id}/settings"): {"policy": "ask"},
    ("POST", "/api/v1/devices/{id}/approve"): {"release": "thermostat@2"},
    ("POST", "/api/v1/devices/{id}/decision"): {"release": "thermostat@2", "decision": "never"},
    ("POST", "/api/v1/devices/{id}/preview"): {"release": "thermostat@2"},
    ("PUT", "/api/v1/devices/{id}/claim-code"): {"code": "0000-0000-0000-0000"},
    ("PUT", "/api/v1/devices/{id}/registration"): {
        "model": "thermostat",
        "board": "thermostat-v1",
        "password_hash": password_line("th-new", "its own").split(":", 1)[1],
    },
    ("PUT", "/api/v1/devices/{id}/streams"): {"streams": {"sensors.humidity": "local"}},
    ("PUT", "/api/v1/devices/{id}/homeassistant"): {"linked": True},
    ("POST", "/api/v1/devices/{id}/forget"): {"confirm": "th-bob"},
    ("POST", "/api/v1/claims"): {"code": "0000-0000-0000-0000"},
    ("POST", "/api/v1/accounts"): {"name": "eve", "role": "admin", "password": PASSWORD},
    ("POST", "/api/v1/accounts/{name}/tokens"): {"label": "x"},
    ("POST", "/api/v1/rollouts"): {"release": "thermostat@2", "no_revert": True},
}
_FILL = {"id": "th-bob", "uid": "0123456789ab", "ref": "thermostat@2", "name": "bob", "tid": "0" * 12,
         "command": "pause"}  # fmt: skip


def _path(route: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: _FILL[m.group(1)], route)


def test_every_route_has_an_access_rule_and_every_rule_a_route() -> None:
    app = gw_api.make_app(None, "token")  # type: ignore[arg-type]
    routes = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    assert routes == set(ACCESS)


async def test_without_a_token_only_the_open_routes_answer(world: World) -> None:
    before = world.state()
    for (method, route), rule in ACCESS.items():
        status, answer = await world.call(None, method, _path(route), _BODIES.get((method, route)))
        if rule.role is None:
            assert status < 500, (method, route, answer)
        else:
            assert (status, answer["error"]["code"]) == (401, "unauthorized"), (method, route)
        status, _ = await world.call(None, method, _path(route), token="pbt_" + "x" * 43)
        assert status == 401 or rule.role is None, (method, route)
    assert world.state() == before


async def test_an_owner_cannot_see_or_touch_another_owner_s_device(world: World) -> None:
    before = world.state()
    for (method, route), rule in ACCESS.items():
        if not rule.device:
            continue
        status, answer = await world.call("ann", method, _path(route), _BODIES.get((method, route)))
        code = answer["error"]["code"]
        if rule.role == "owner":
            # as a device that does not exist: its id cannot be probed
            assert (status, code) == (404, "unknown_device"), (method, route, answer)
            assert answer["error"]["message"] == "no device 'th-bob'"
        else:
            assert (status, code) == (403, "forbidden"), (method, route, answer)
    assert world.state() == before
    status, answer = await world.call("ann", "GET", "/api/v1/devices/th-nobody")
    assert (status, answer["error"]["code"]) == (404, "unknown_device")


async def test_a_role_below_a_route_s_rule_is_refused(world: World) -> None:
    before = world.state()
    for (method, route), rule in ACCESS.items():
        if rule.role not in ("maker", "admin") or rule.device:
            continue
        for who in ("ann", "mia") if rule.role == "admin" else ("ann",):
            status, answer = await world.call(who, method, _path(route), _BODIES.get((method, route)))
            assert (status, answer["error"]["code"]) == (403, "forbidden"), (who, method, route, answer)
            assert f"role {rule.role}" in answer["error"]["message"]
    assert world.state() == before


async def test_an_owner_sees_its_own_devices_and_the_maker_every_one(world: World) -> None:
    status, mine = await world.call("ann", "GET", "/api/v1/devices")
    assert status == 200 and [d["id"] for d in mine] == ["th-ann"]
    status, every = await world.call("mia", "GET", "/api/v1/devices")
    # (and the devices of other tests whose retained hellos the session's broker replays)
    assert status == 200 and {"th-ann", "th-bob"} <= {d["id"] for d in every}
    for path in (
        "/api/v1/devices/th-ann",
        "/api/v1/devices/th-ann/settings",
        "/api/v1/devices/th-ann/updates",
    ):
        status, _ = await world.call("ann", "GET", path)
        assert status == 200, path
    status, me = await world.call("ann", "GET", "/api/v1/me")
    assert (status, me["name"], me["role"], me["devices"]) == (200, "ann", "owner", ["th-ann"])


async def test_an_owner_cannot_open_the_usb_repl_of_its_device_but_its_maker_can(world: World) -> None:
    body = {"op": "repl.open", "timeout": 1}
    status, answer = await world.call("ann", "POST", "/api/v1/devices/th-ann/commands", body)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, answer = await world.call("mia", "POST", "/api/v1/devices/th-ann/commands", body)
    assert status != 403, answer  # sent (the device here is offline, or does not answer)


async def test_an_owner_sets_the_update_policy_of_its_device_but_not_the_maker_s_cohorts(
    world: World,
) -> None:
    status, s = await world.call("ann", "PATCH", "/api/v1/devices/th-ann/settings", {"policy": "ask"})
    assert status == 200 and s["policy"] == "ask"
    for body in ({"channel": "beta"}, {"tag": ["lab"]}, {"policy": "auto", "untag": ["x"]}):
        status, answer = await world.call("ann", "PATCH", "/api/v1/devices/th-ann/settings", body)
        assert (status, answer["error"]["code"]) == (403, "forbidden"), body
    assert SettingsTable(world.r.store).get("th-ann").policy == "ask"
    status, s = await world.call("mia", "PATCH", "/api/v1/devices/th-ann/settings", {"channel": "beta"})
    assert status == 200 and s["channel"] == "beta"


async def test_an_update_of_another_owner_s_device_is_not_shown(world: World) -> None:
    status, u = await world.call("mia", "POST", "/api/v1/devices/th-bob/update", {"release": "thermostat@2"})
    assert status in (201, 409), u  # (offline: the update waits, or is refused as offline)
    if status == 201:
        status, answer = await world.call("ann", "GET", f"/api/v1/updates/{u['id']}")
        assert (status, answer["error"]["code"]) == (404, "unknown_update")
        status, _ = await world.call("bob", "GET", f"/api/v1/updates/{u['id']}")
        assert status == 200


async def test_a_device_changes_hands_by_its_claim_code(world: World) -> None:
    code = new_claim_code()
    status, _ = await world.call("mia", "PUT", "/api/v1/devices/th-new/claim-code", {"code": code})
    assert status == 200
    status, answer = await world.call(
        "ann", "POST", "/api/v1/claims", {"code": code.lower().replace("-", " ")}
    )
    assert (status, answer) == (201, {"device": "th-new", "owner": "ann"})
    status, answer = await world.call("bob", "POST", "/api/v1/claims", {"code": code})
    assert (status, answer["error"]["code"]) == (409, "claimed")
    status, answer = await world.call("bob", "DELETE", "/api/v1/devices/th-new/owner")
    assert (status, answer["error"]["code"]) == (404, "unknown_device")
    status, _ = await world.call("ann", "DELETE", "/api/v1/devices/th-new/owner")
    assert status == 200
    status, answer = await world.call("bob", "POST", "/api/v1/claims", {"code": code})
    assert (status, answer["device"]) == (201, "th-new")
    # an admin takes a device from its owner (a support case)
    status, _ = await world.call("root", "DELETE", "/api/v1/devices/th-new/owner")
    assert status == 200 and Accounts(world.r.store).owner_of("th-new") is None


async def test_the_next_owner_sees_nothing_of_the_previous_one_s_time_nor_inherits_its_say(
    world: World,
) -> None:
    store, dev = world.r.store, "th-ann"
    # ann's time with it: telemetry, an update, her policy, a decision, a preview's heater power
    store.add_telemetry([TelemetryRow(dev, 5.0, 5.0, 1, {"sensors": {"temperature": 19.5}})])
    status, _ = await world.call("ann", "PATCH", f"/api/v1/devices/{dev}/settings", {"policy": "ask"})
    assert status == 200
    status, _ = await world.call(
        "ann", "POST", f"/api/v1/devices/{dev}/decision", {"release": "thermostat@2", "decision": "never"}
    )
    assert status == 200
    store.db.execute("INSERT INTO twin_devices (device, heater_w, updated) VALUES (?, 2000, 1)", (dev,))
    status, _ = await world.call("ann", "DELETE", f"/api/v1/devices/{dev}/owner")
    assert status == 200
    status, _ = await world.call("bob", "POST", "/api/v1/claims", {"code": world.codes[dev]})
    assert status == 201
    status, rows = await world.call("bob", "GET", f"/api/v1/devices/{dev}/telemetry")
    assert (status, rows) == (200, [])  # (received before bob's claim)
    status, settings = await world.call("bob", "GET", f"/api/v1/devices/{dev}/settings")
    assert settings["policy"] == "auto" and settings["window"] is None
    for table in ("device_decisions", "twin_devices", "twin_previews"):
        assert store.db.execute(f"SELECT count(*) FROM {table} WHERE device = ?", (dev,)).fetchone()[0] == 0
    # a maker sees the device's whole record
    status, rows = await world.call("mia", "GET", f"/api/v1/devices/{dev}/telemetry")
    assert status == 200 and [r["sensors"]["temperature"] for r in rows] == [19.5]


async def test_guessing_claim_codes_through_the_api_is_limited(world: World) -> None:
    for _ in range(CLAIM_TRIES):
        status, answer = await world.call("ann", "POST", "/api/v1/claims", {"code": new_claim_code()})
        assert (status, answer["error"]["code"]) == (422, "bad_claim_code")
    status, answer = await world.call("ann", "POST", "/api/v1/claims", {"code": world.codes["th-bob"]})
    assert (status, answer["error"]["code"]) == (429, "rate_limited")
    for body in ({}, {"code": 7}, {"code": "x", "device": "th-bob"}, [1]):
        status, answer = await world.call("bob", "POST", "/api/v1/claims", body)
        assert status == 400, body


async def test_a_login_gives_a_token_and_wrong_passwords_are_limited(world: World) -> None:
    status, answer = await world.call(None, "POST", "/api/v1/login", {"name": "ann", "password": PASSWORD})
    assert status == 201 and answer["role"] == "owner"
    status, me = await world.call(None, "GET", "/api/v1/me", token=answer["token"])
    assert (status, me["name"]) == (200, "ann")
    for _ in range(LOGIN_TRIES):
        status, answer = await world.call(
            None, "POST", "/api/v1/login", {"name": "bob", "password": "guess-guess"}
        )
        assert (status, answer["error"]["code"]) == (401, "unauthorized")
    status, answer = await world.call(None, "POST", "/api/v1/login", {"name": "bob", "password": PASSWORD})
    assert (status, answer["error"]["code"]) == (429, "rate_limited")
    status, answer = await world.call(None, "POST", "/api/v1/login", {"name": "nobody", "password": PASSWORD})
    assert (status, answer["error"]["code"]) == (401, "unauthorized")


async def test_accounts_and_their_tokens_are_managed_by_an_admin_and_each_its_own(world: World) -> None:
    status, a = await world.call("root", "POST", "/api/v1/accounts", {"name": "cat", "role": "maker"})
    assert (status, a["name"], a["role"]) == (201, "cat", "maker")
    status, answer = await world.call("root", "POST", "/api/v1/accounts", {"name": "cat", "role": "owner"})
    assert (status, answer["error"]["code"]) == (409, "exists")
    status, t = await world.call("root", "POST", "/api/v1/accounts/cat/tokens", {"label": "ci"})
    assert status == 201
    status, me = await world.call(None, "GET", "/api/v1/me", token=t["token"])
    assert (status, me["role"]) == (200, "maker")
    # the gateway's own token is the admin that makes the first account
    status, _ = await world.call("gateway", "POST", "/api/v1/accounts", {"name": "dee", "role": "owner"})
    assert status == 201
    # an owner manages its own tokens only
    status, mine = await world.call("ann", "GET", "/api/v1/accounts/ann/tokens")
    assert status == 200 and [x["label"] for x in mine] == ["test"]
    status, answer = await world.call("ann", "GET", "/api/v1/accounts/bob/tokens")
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, _ = await world.call("ann", "DELETE", f"/api/v1/accounts/ann/tokens/{mine[0]['id']}")
    assert status == 200
    status, _ = await world.call("ann", "GET", "/api/v1/me")
    assert status == 401
    status, listed = await world.call("root", "GET", "/api/v1/accounts")
    assert status == 200 and {x["name"] for x in listed} >= {"ann", "bob", "cat", "dee", "mia", "root"}


# ---- the command line ---------------------------------------------------------------


async def test_accounts_and_claim_codes_from_the_command_line(world: World, tmp_path: Path) -> None:
    db = world.r.store.where

    async def run(*words: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(permabeta, db, *words, stdin=stdin)

    done = await run("account", "create", "eve", "--role", "owner", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0 and "account eve (owner) created" in done.stdout, done.stderr
    done = await run("account", "create", "eve", "--role", "maker")
    assert done.returncode == 1 and "there is an account 'eve' already" in done.stderr
    done = await run("account", "create", "fay", "--role", "owner", "--password-stdin", stdin="short\n")
    assert done.returncode == 1 and "10 to 1024 characters" in done.stderr
    done = await run("account", "token", "eve", "--label", "phone")
    token = done.stdout.strip()
    assert done.returncode == 0 and token.startswith("pbt_")
    # provisioned with the gateway's database: its code is registered, and eve claims the box
    into = tmp_path / "dev"
    done = await run(
        "provision", "--model", "thermostat", "--id", "th-eve", "--broker", "mqtt://127.0.0.1:1883",
        "--into", str(into), "--source",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (code,) = re.findall(r"claim code \(for the box; shown only now[^)]*\): (\S+)", done.stdout)
    assert "registered with the gateway" in done.stdout
    assert not any(code in f.read_text(errors="replace") for f in into.rglob("*") if f.is_file())
    status, answer = await world.call(None, "POST", "/api/v1/claims", {"code": code}, token=token)
    assert (status, answer["device"]) == (201, "th-eve")
    done = await run("account", "list")
    assert re.search(r"eve\s+owner\s+devices: th-eve", done.stdout), done.stdout
    done = await run("devices", "claim-code", "th-eve", "not-a-code")
    assert done.returncode == 1 and "16 letters and digits" in done.stderr


# ---- attacks on the accounts' endpoints, one test each ------------------------------


@pytest.mark.long
async def test_a_spray_of_unknown_names_does_not_lift_an_account_s_login_limit(world: World) -> None:
    for _ in range(LOGIN_TRIES):
        await world.call(None, "POST", "/api/v1/login", {"name": "mia", "password": "guess-guess"})
    for i in range(300):
        status, _ = await world.call(
            None, "POST", "/api/v1/login", {"name": f"n{i}", "password": "guess-guess"}
        )
        assert status == 401
    status, answer = await world.call(None, "POST", "/api/v1/login", {"name": "mia", "password": PASSWORD})
    assert (status, answer["error"]["code"]) == (429, "rate_limited")


async def test_the_login_limit_does_not_tell_which_names_have_an_account(world: World) -> None:
    answers = {}
    for name in ("mia", "nobody-at-all"):
        for _ in range(LOGIN_TRIES):
            guess = {"name": name, "password": "guess-guess"}
            status, _ = await world.call(None, "POST", "/api/v1/login", guess)
            assert status == 401
        status, answer = await world.call(None, "POST", "/api/v1/login", {"name": name, "password": "x"})
        answers[name] = (status, answer["error"]["code"])
    assert answers["mia"] == answers["nobody-at-all"] == (429, "rate_limited")


async def test_a_login_from_another_site_s_page_is_refused(world: World) -> None:
    body = json.dumps({"name": "ann", "password": PASSWORD})
    # a page's form or no-cors fetch can send text/plain, not JSON
    async with world.session.post(
        world.r.url + "/api/v1/login", data=body, headers={"Content-Type": "text/plain"}
    ) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (415, "bad_request")
    async with world.session.post(
        world.r.url + "/api/v1/login", data=body,
        headers={"Content-Type": "application/json", "Origin": "https://evil.example"},
    ) as resp:  # fmt: skip
        assert (resp.status, (await resp.json())["error"]["code"]) == (403, "csrf")
    status, answer = await world.call(None, "POST", "/api/v1/login", {"name": "ann", "password": PASSWORD})
    assert status == 201 and answer["token"].startswith("pbt_")


async def test_a_claim_code_taken_by_another_device_is_refused_not_a_failure(world: World) -> None:
    before = world.state()
    status, answer = await world.call(
        "mia", "PUT", "/api/v1/devices/th-new/claim-code", {"code": world.codes["th-bob"]}
    )
    assert (status, answer["error"]["code"]) == (409, "exists")
    assert world.state() == before


async def test_a_claim_code_for_what_is_not_a_device_id_is_refused(world: World) -> None:
    before = world.state()
    for dev in ("TH-1", "a" * 33, "-x", "th%2F1", "th 1"):
        status, answer = await world.call(
            "mia", "PUT", f"/api/v1/devices/{dev}/claim-code", {"code": new_claim_code()}
        )
        assert status in (400, 404), (dev, answer)
    assert world.state() == before


async def test_claiming_one_s_own_device_again_and_again_stores_nothing_more(world: World) -> None:
    for _ in range(50):
        status, _ = await world.call("ann", "POST", "/api/v1/claims", {"code": world.codes["th-ann"]})
        assert status == 201
    assert world.r.store.db.execute("SELECT count(*) FROM claim_attempts").fetchone()[0] == 0


async def test_odd_bodies_to_the_accounts_endpoints_are_refused_with_nothing_changed(world: World) -> None:
    before = world.state()
    odd: list[Any] = [None, [], "x", 1, {"name": ["ann"]}, {"name": "x" * 10_000, "role": "owner"},
                      {"name": "eve", "role": "owner", "password": True}, {"name": "eve", "role": "god"},
                      {"name": "eve\u0000", "role": "owner"}, {"extra": 1}]  # fmt: skip
    for body in odd:
        for method, path in (
            ("POST", "/api/v1/accounts"),
            ("POST", "/api/v1/login"),
            ("POST", "/api/v1/claims"),
        ):
            status, answer = await world.call("root", method, path, body)
            assert 400 <= status < 500, (path, body, answer)
    status, answer = await world.call("root", "POST", "/api/v1/accounts/ann/tokens", {"label": 5})
    assert status == 400
    assert world.state() == before
