"""The web app's server side (gateway/webapp.py, docs/app.md), against a real
gateway, Mosquitto and SQLite: its files and packages, served from the
gateway alone and nothing else under their names; and the live events, which
reach an owner for its own devices only."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import webapp
from gateway.accounts import Accounts, new_claim_code

from ..support.mosquitto import Mosquitto
from .conftest import Running, StartGateway
from .test_hostile_device import Device, online, telemetry

PASSWORD = "correct horse battery"


@pytest.fixture
async def gw(start_gateway: StartGateway) -> AsyncIterator[Running]:
    yield await start_gateway()


@pytest.fixture
def pair(mosquitto: Mosquitto) -> Iterator[tuple[Device, Device]]:
    made = (Device(mosquitto, "th"), Device(mosquitto, "th"))
    yield made
    for d in made:
        d.close()


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers=headers or {}, allow_redirects=False) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def test_the_app_and_its_packages_are_served_by_the_gateway(gw: Running) -> None:
    status, kind, body = await _get(gw.url + "/app/")
    assert (status, kind) == (200, "text/html")
    assert b'src="app.js"' in body and b"vendor/chart.umd.min.js" in body
    assert b"http" not in body.replace(b"http-equiv", b"")  # nothing from elsewhere
    for name, kind in (
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("offer.js", "text/javascript"),
    ):
        status, got, body = await _get(f"{gw.url}/app/{name}")
        assert (status, got) == (200, kind), name
        assert body == (webapp.APP / name).read_bytes()
    for name, rel in webapp.VENDOR.items():
        status, got, body = await _get(f"{gw.url}/app/vendor/{name}")
        assert (status, got) == (200, "text/javascript"), name
        assert body == (webapp.PACKAGES / rel).read_bytes()
    status, _, _ = await _get(gw.url + "/")
    assert status == 302


@pytest.mark.parametrize(
    "path",
    [
        "/app/..%2Fwebapp.py",
        "/app/%2E%2E%2Fwebapp.py",
        "/app/.hidden",
        "/app/missing.js",
        "/app/vendor/..%2F..%2Fpackage.json",
        "/app/vendor/chart.js",  # a package file not named in VENDOR
        "/app/web/app.js",
        "/app/vendor/../../api.py",
    ],
)
async def test_nothing_else_is_served_under_the_app_s_names(gw: Running, path: str) -> None:
    status, kind, body = await _get(gw.url + path)
    # (a path of no route at all asks for a token first, as every unknown path does)
    assert status in (401, 404), path
    assert kind.startswith("application/json")
    assert json.loads(body)["error"]["code"] in ("not_found", "unauthorized")


async def test_packages_not_installed_are_said_so(
    gw: Running, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(webapp, "PACKAGES", tmp_path)
    status, _, body = await _get(gw.url + "/app/vendor/chart.umd.min.js")
    error = json.loads(body)["error"]
    assert (status, error["code"]) == (503, "not_built")
    assert "make web" in error["message"]


class Events:
    """A reader of GET /api/v1/events: the events as they come."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def read(self, url: str, token: str, opened: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as s, s.get(url + "/api/v1/events", headers=headers) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            opened.set()
            kind = None
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind is not None:
                    await self.got.put((kind, json.loads(line[6:])))

    async def telemetry_of(self, want: int) -> list[tuple[str, int]]:
        """(device, seq) of the next `want` telemetry events."""
        out: list[tuple[str, int]] = []
        while len(out) < want:
            kind, data = await asyncio.wait_for(self.got.get(), 10)
            if kind == "telemetry":
                out.append((data["device"], data["message"]["seq"]))
        return out


async def test_an_owner_is_told_live_of_its_own_devices_only(
    gw: Running, pair: tuple[Device, Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webapp, "OWNERS_TTL_S", 0.5)
    mine, theirs = pair
    accounts = Accounts(gw.store)
    ann = accounts.create("ann", "owner", PASSWORD, 1.0)
    maker = accounts.create("mia", "maker", PASSWORD, 1.0)
    await online(gw, mine, theirs)
    code = new_claim_code()
    accounts.register_claim(mine.id, code, 1.0)
    accounts.claim(ann, code, 1.0)
    owner_events, maker_events = Events(), Events()
    opened = [asyncio.Event(), asyncio.Event()]
    readers = [
        asyncio.create_task(owner_events.read(gw.url, accounts.issue_token(ann, "t", 1.0), opened[0])),
        asyncio.create_task(maker_events.read(gw.url, accounts.issue_token(maker, "t", 1.0), opened[1])),
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 10)
        await asyncio.sleep(0.2)  # (the stream's listener is on once its first bytes are out)
        for seq in (1, 2, 3):
            await theirs.send("telemetry", telemetry(theirs.id, seq))
            await mine.send("telemetry", telemetry(mine.id, seq))
        # the owner gets its device's three, in order, and nothing of the other's
        assert await owner_events.telemetry_of(3) == [(mine.id, 1), (mine.id, 2), (mine.id, 3)]
        seen = await maker_events.telemetry_of(6)
        assert sorted(seen) == sorted([(d.id, s) for d in pair for s in (1, 2, 3)])
        await theirs.send("telemetry", telemetry(theirs.id, 4))
        await mine.send("telemetry", telemetry(mine.id, 4))
        assert await owner_events.telemetry_of(1) == [(mine.id, 4)]
        # an update's progress is a `status` event (the page reloads its updates at one: it was
        # the gateway's `ota/status`, which no stream passed on)
        status = {"v": 1, "dev": mine.id, "id": "0123456789ab", "state": "downloading", "ts": time.time()}
        await mine.send("ota/status", status)
        while (got := await asyncio.wait_for(owner_events.got.get(), 10))[0] != "status":
            pass
        assert got[1]["device"] == mine.id and got[1]["message"]["state"] == "downloading", got
        # the owner gives the device up: its events stop within the owners' TTL
        accounts.release(ann, mine.id)
        await asyncio.sleep(webapp.OWNERS_TTL_S + 0.3)
        await mine.send("telemetry", telemetry(mine.id, 5))
        while (mine.id, 5) not in await maker_events.telemetry_of(1):
            pass
        await asyncio.sleep(0.2)
        assert [k for k, _ in _drain(owner_events.got) if k == "telemetry"] == []
    finally:
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    assert not gw.task.done()


def _drain(q: asyncio.Queue[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


async def test_events_need_an_account(gw: Running) -> None:
    status, _, body = await _get(gw.url + "/api/v1/events")
    assert (status, json.loads(body)["error"]["code"]) == (401, "unauthorized")


async def test_an_account_holds_a_few_streams_and_one_ends_when_its_token_is_revoked(
    gw: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webapp, "OWNERS_TTL_S", 0.3)
    accounts = Accounts(gw.store)
    ann = accounts.create("ann", "owner", PASSWORD, 1.0)
    tokens = [accounts.issue_token(ann, f"t{i}", 1.0) for i in range(webapp.STREAMS_PER_ACCOUNT + 1)]
    async with aiohttp.ClientSession() as s:
        opened = []
        for token in tokens[:-1]:
            resp = await s.get(gw.url + "/api/v1/events", headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 200
            await resp.content.readline()  # (the stream is open: its first line is out)
            opened.append(resp)
        fifth = {"Authorization": f"Bearer {tokens[-1]}"}
        async with s.get(gw.url + "/api/v1/events", headers=fifth) as more:
            assert (more.status, (await more.json())["error"]["code"]) == (429, "too_many_streams")
        # a token revoked: the stream it opened ends with its reason, within the TTL
        (token_id,) = [t["id"] for t in accounts.tokens(ann) if t["label"] == "t0"]
        assert accounts.revoke_token(ann, str(token_id))
        rest = await asyncio.wait_for(opened[0].content.read(), 5)
        assert b"event: ended" in rest
        for resp in opened:
            resp.close()
    assert not gw.task.done()
