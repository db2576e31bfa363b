"""Two gateway workers of a pool on one database and one Mosquitto, each with
a broker account of its own (gateway/pool.py): the fleet's telemetry is split
between them and stored once, each device has one owner, a command's reply
finds the worker that waits for it, a request that changes something reaches
the leader through either worker's API, and a worker killed mid-flight loses
nothing: the other takes its devices and the updates over within seconds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.accounts import Accounts
from gateway.api_pool import leader_api
from gateway.broker import free_port
from gateway.cli_registry import password_hash
from gateway.client import ApiClient, pool_apis
from gateway.errors import ApiError
from gateway.pool import BEAT_S, TTL_S, Pool, PoolError
from gateway.service import Gateway
from gateway.store import Store
from ota.keys import Keys
from ota.release import Release

from ..conftest import _db_at
from ..support.mosquitto import Mosquitto
from ..support.ota import OtaDevice
from ..support.wait import async_wait_for
from .conftest import Running, StartGateway, stop
from .test_webapp import Events

MakeDevice = Callable[..., OtaDevice]
PASSWORD = "a maker's long password"


def answering(dev: OtaDevice) -> OtaDevice:
    """dev answers every command it is sent with ok (on its one connection:
    the broker binds a client id to its user name)."""
    client = dev.client
    client.subscribe(f"pb/{dev.id}/cmd", qos=1)

    def on_message(c: Any, u: Any, m: Any) -> None:
        if m.topic.endswith("/cmd"):
            cmd = json.loads(m.payload)
            reply = {"v": 1, "dev": dev.id, "id": cmd["id"], "ok": True, "result": {"op": cmd["op"]}}
            c.publish(f"pb/{dev.id}/reply", json.dumps(reply), qos=1)
        else:
            client.received.put((m.topic, m.payload, m.retain))

    client.c.on_message = on_message
    return dev


def telemetry(dev: str, seq: int) -> str:
    msg = {"v": 1, "dev": dev, "seq": seq, "ts": time.time(), "sensors": {"temperature": 20.0 + seq}}
    return json.dumps(msg | {"actuators": {}, "features": {}})


async def pool_of_two(
    start_gateway: StartGateway, keys: Keys, db: Path | str | None = None
) -> tuple[Running, Running]:
    a = await start_gateway(keys, worker="gw-a", db=db)
    b = await start_gateway(keys, worker="gw-b", db=db)
    await async_wait_for(
        lambda: a.gw.pool.members == b.gw.pool.members == ["gw-a", "gw-b"] and a.gw.leading != b.gw.leading,
        10,
        what="a pool of two with one leader",
    )
    return a, b


async def test_a_worker_refused_for_its_name_leaves_the_one_that_runs_alone(
    start_gateway: StartGateway, keys: Keys, mosquitto: Mosquitto, gw_db: Path | str
) -> None:
    """A second process started under the name of a worker that runs
    (docs/makers.md, "A pool of gateway workers") is refused before it does
    anything: it does not connect to the broker (where its account's client
    id would cut the running one off), write the API's address or token, or
    on leaving take the running worker's row and leases with it."""
    a, b = await pool_of_two(start_gateway, keys)
    api, token = a.store.get_meta("api"), a.store.get_meta("pool_token")
    leases = a.gw.pool.leases()
    with Store(gw_db) as store:
        # (as if another machine: two in one process are one process to the pool)
        namesake = Gateway(
            mosquitto.gateway_url, store, api=("127.0.0.1", 0), pool=Pool(store, "gw-a", host="elsewhere")
        )
        with pytest.raises(PoolError, match="another worker named 'gw-a' runs"):
            await namesake.run()
        assert not namesake.connected.is_set() and namesake.api_url is None
    await asyncio.sleep(2 * BEAT_S)
    assert a.gw.pool.members == b.gw.pool.members == ["gw-a", "gw-b"]
    assert {w.name for w in a.gw.pool.workers()} == {"gw-a", "gw-b"}
    assert a.store.get_meta("api") == api and a.store.get_meta("pool_token") == token
    assert {k: v[0] for k, v in a.gw.pool.leases().items()} == {k: v[0] for k, v in leases.items()}
    assert a.gw.leading != b.gw.leading


async def test_the_command_line_goes_to_another_worker_when_the_one_it_knows_is_gone(
    start_gateway: StartGateway, keys: Keys, gw_db: Path | str
) -> None:
    """meta.api names a worker that runs, but for the seconds after it was
    killed it names a dead one (docs/makers.md, "A pool of gateway workers"):
    the command line, refused there, goes to another live worker of the pool."""
    a, b = await pool_of_two(start_gateway, keys)
    # (each worker's API is in the pool's record from its first beat after the API started)
    await async_wait_for(lambda: sorted(u for u, _ in pool_apis(gw_db)) == sorted([a.url, b.url]), 10)
    dead = f"http://127.0.0.1:{free_port()}"  # (where a killed worker's API was: nothing listens)
    client = ApiClient(dead, a.token)
    client.others = lambda: pool_apis(gw_db)
    got = await asyncio.to_thread(client.request, "GET", "/api/v1/devices")
    # (a live worker answered: the devices the shared broker's retained hellos made known)
    assert isinstance(got, list) and client.url in (a.url, b.url)
    lone = ApiClient(dead, a.token)  # (a gateway alone has no other to go to)
    with pytest.raises(ApiError, match=f"cannot reach the gateway at {dead}"):
        await asyncio.to_thread(lone.request, "GET", "/api/v1/devices")


async def call(r: Running, path: str, body: Any, status: int, method: str = "POST") -> dict[str, Any]:
    """body to path of r's API, with the gateway's token; the answer, of that status."""
    token = {"Authorization": f"Bearer {r.token}"}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{r.url}{path}", json=body, headers=token, ssl=False) as answer,
    ):
        got: dict[str, Any] = await answer.json()
        assert answer.status == status, got
        return got


async def update_to_trial(dev: OtaDevice, release: Release, via: Running) -> str:
    """An update of dev asked through the API of `via`, driven to trial as the device does."""
    uid = str((await call(via, f"/api/v1/devices/{dev.id}/update", {"release": "thermostat@2"}, 201))["id"])
    offer = await asyncio.to_thread(dev.offer)
    assert offer["id"] == uid
    # (that worker shows the leader's update, from the database, if it does not lead)
    assert (u := via.gw.ota.active(dev.id)) is not None and u.id == uid
    assert via.gw.ota.serving == via.gw.leading
    objs = [("manifest", offer["size"], offer["manifest"])]
    objs += [(f.zsha256, f.zsize, f.zsha256) for f in release.files]
    await asyncio.to_thread(dev.stream, uid, objs)
    for state in ("offered", "downloading", "staged", "verified", "activating", "trial"):
        dev.status(uid, state, counter=2)
    return uid


async def update_to_commit(lead: Running, dev: OtaDevice, release: Release, via: Running) -> str:
    """An update of dev asked through the API of `via`, driven to committed as the device does."""
    uid = await update_to_trial(dev, release, via)
    dev.status(uid, "committed", counter=2)
    table = lead.gw.ota.table
    await async_wait_for(lambda: (u := table.get(uid)) is not None and u.ended, 10, what="committed")
    done = table.get(uid)
    assert done is not None and done.state == "committed", done
    return uid


async def online(r: Running, devices: list[OtaDevice]) -> list[str]:
    """Each device says hello and online; their ids, once r's database has them online."""
    for d in devices:
        await asyncio.to_thread(d.hello)
    ids = [d.id for d in devices]
    await async_wait_for(
        lambda: all((rec := r.store.device(i)) is not None and rec.online for i in ids), 10, what="online"
    )
    return ids


def leader(*rs: Running) -> Running:
    (lead,) = [r for r in rs if r.gw.leading]
    return lead


async def test_two_workers_share_the_fleet_and_one_killed_loses_nothing(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice
) -> None:
    a, b = await pool_of_two(start_gateway, keys)
    store = a.store
    for r in (a, b):
        r.gw.ota.releases.add(release.path, time.time())
    devices = [answering(ota_devices()) for _ in range(8)]
    ids = await online(a, devices)
    # each device has one owner, and both own some
    owners = {d.id: [r.gw.pool.owns(d.id) for r in (a, b)] for d in devices}
    assert all(sum(o) == 1 for o in owners.values()), owners
    # one boot each: only the owner records a hello
    # (the session's broker replays the retained hellos of other tests' devices too: ours are counted)
    boots = store.db.execute("SELECT device, count(*) FROM device_boots GROUP BY device").fetchall()
    assert sorted((str(x[0]), int(x[1])) for x in boots if x[0] in ids) == sorted((i, 1) for i in ids)

    # a device that joins what a pool's shared subscription could be called takes nothing
    # (Mosquitto would deliver it a share, then refuse it by its ACL: the pool's group is secret)
    thief = ota_devices()
    for share in ("$share/permabeta/", "$share/gateway/", "$share/pb/", "$share/pool/", ""):
        thief.client.subscribe(f"{share}pb/+/telemetry", qos=1)
        thief.client.subscribe(f"{share}pb/+/event", qos=1)
    # telemetry: each message to one worker, stored once; both take a share
    for seq in range(1, 11):
        for d in devices:
            d.client.publish(d.topic("telemetry"), telemetry(d.id, seq), qos=1)
    stored = [(a.gw.counters["stored"], b.gw.counters["stored"])]

    def rows() -> int:
        return sum(store.telemetry_count(i) for i in ids)

    await async_wait_for(lambda: rows() == 80, 10, what="80 rows")
    await asyncio.sleep(0.6)  # (a flush more: nothing stored twice)
    assert rows() == 80
    took = [r.gw.counters["stored"] - n for r, n in zip((a, b), stored[0], strict=True)]
    assert min(took) > 0 and sum(took) == 80, took
    assert thief.client.messages(0.2) == []

    # a command from either worker, to a device either owns: its reply finds the sender
    for r in (a, b):
        for d in devices[:3]:
            reply = await r.gw.send_command(d.id, "ping", timeout=5)
            assert reply["ok"] and reply["result"] == {"op": "ping"}
    sent = store.db.execute("SELECT worker, status FROM commands").fetchall()
    assert sorted((str(w), str(s)) for w, s in sent) == [("gw-a", "ok")] * 3 + [("gw-b", "ok")] * 3
    # and through the API of the worker that does not lead (passed on to the leader)
    lead = leader(a, b)
    other = b if lead is a else a
    body = await call(other, f"/api/v1/devices/{devices[0].id}/commands", {"op": "status"}, 200)
    assert body["reply"]["result"] == {"op": "status"}, body
    sent_by = store.db.execute("SELECT worker FROM commands WHERE op = 'status'").fetchone()[0]
    assert sent_by == lead.gw.pool.name
    # a maker's page on the worker that does not lead: its session made and used there, the
    # Origin its own (the leader is told the host the page was asked of)
    Accounts(store).create("mia", "maker", PASSWORD, time.time())
    page = {"Origin": other.url}
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{other.url}/api/v1/session", json={"name": "mia", "password": PASSWORD}, headers=page
        ) as answer:
            assert answer.status == 201, await answer.text()
            cookie, csrf = answer.cookies["pb_session"].value, (await answer.json())["csrf"]
        async with s.post(
            f"{other.url}/api/v1/devices/{devices[0].id}/commands",
            json={"op": "ping"},
            headers=page | {"Cookie": f"pb_session={cookie}", "X-CSRF-Token": csrf},
        ) as answer:
            body = await answer.json()
            assert answer.status == 200 and body["reply"]["ok"], body

    # an update asked at the worker that does not lead is the leader's, and commits
    await update_to_commit(lead, devices[1], release, other)

    # the leader is killed (it leaves nothing behind: no clean goodbye), with an update on
    # trial, and another on its way
    trying = devices[4]
    on_trial = await update_to_trial(trying, release, other)
    await async_wait_for(lambda: lead.gw.ota.get(on_trial).state == "trial", 5, what="trial")
    dev = devices[2]
    uid = str((await call(other, f"/api/v1/devices/{dev.id}/update", {"release": "thermostat@2"}, 201))["id"])
    offer = await asyncio.to_thread(dev.offer)
    dev.status(uid, "offered", counter=2)
    await async_wait_for(lambda: lead.gw.ota.get(uid).state == "offered", 5, what="offered")
    killed_at = time.monotonic()
    lead.gw.pool.release = lambda: None  # type: ignore[method-assign]
    await stop(lead)
    # the device on trial commits while no worker leads: its status waits at the broker
    assert not other.gw.leading
    trying.status(on_trial, "committed", counter=2)
    await async_wait_for(lambda: other.gw.leading, TTL_S + 5, what="the other worker leading")
    took = time.monotonic() - killed_at
    assert took < TTL_S + 3, took
    assert other.gw.pool.members == [other.gw.pool.name]
    assert all(other.gw.pool.owns(d.id) for d in devices)
    # the update goes on with the survivor, from what the database holds
    objs = [("manifest", offer["size"], offer["manifest"])]
    objs += [(f.zsha256, f.zsize, f.zsha256) for f in release.files]
    await asyncio.to_thread(dev.stream, uid, objs)
    for state in ("downloading", "staged", "verified", "activating", "trial", "committed"):
        dev.status(uid, state, counter=2)
    for u in (uid, on_trial):
        await async_wait_for(lambda: other.gw.ota.table.get(u).ended, 10, what="committed")  # type: ignore[union-attr]  # noqa: B023
        assert other.gw.ota.table.get(u).state == "committed"  # type: ignore[union-attr]
    # the devices the killed worker owned are the survivor's to watch: silent past their
    # deadline (three telemetry periods, 30 s here), they are marked so
    mine = [d.id for d in devices if owners[d.id][[a, b].index(other)]]
    theirs = [d.id for d in devices if d.id not in mine]
    other.gw.check_liveness(time.time() + 60)
    for dev_id in theirs:
        record = other.store.device(dev_id)
        assert record is not None and not record.online and record.state_reason == "silent"


async def test_a_device_revoked_or_forgotten_through_either_worker_is_so_at_both(
    start_gateway: StartGateway, keys: Keys, ota_devices: MakeDevice
) -> None:
    a, b = await pool_of_two(start_gateway, keys)
    lead = leader(a, b)
    other = b if lead is a else a
    gone, forgotten, kept = (ota_devices() for _ in range(3))
    for d in (gone, forgotten, kept):
        await asyncio.to_thread(d.hello)
    store = other.store
    await async_wait_for(
        lambda: all((r := store.device(d.id)) is not None and r.online for d in (gone, forgotten, kept)),
        10,
        what="online",
    )
    registration = {"model": "thermostat", "board": "thermostat-v1"}
    registration["password_hash"] = password_hash(gone.id, "its own")
    await call(other, f"/api/v1/devices/{gone.id}/registration", registration, 200, "PUT")
    await call(other, f"/api/v1/devices/{gone.id}/revoke", {}, 200)
    await call(other, f"/api/v1/devices/{forgotten.id}/forget", {"confirm": forgotten.id}, 200)
    await asyncio.sleep(2.5)  # (two beats: each worker has read the lists again)
    for seq in range(1, 21):
        for d in (gone, forgotten, kept):
            d.client.publish(d.topic("telemetry"), telemetry(d.id, seq), qos=1)
    await async_wait_for(lambda: store.telemetry_count(kept.id) == 20, 10, what="the kept device's rows")
    await asyncio.sleep(0.6)
    # whichever worker the broker gave each message to, nothing of either is kept
    assert store.telemetry_count(gone.id) == 0 and store.telemetry_count(forgotten.id) == 0
    assert a.gw.rejects.get("revoked", 0) + b.gw.rejects.get("revoked", 0) == 20
    assert min(r.gw.rejects.get("revoked", 0) for r in (a, b)) > 0


async def test_a_worker_s_name_is_checked_and_a_worker_alone_leads_nothing_else(
    start_gateway: StartGateway, keys: Keys
) -> None:
    with pytest.raises(Exception, match="device-style id"):
        await start_gateway(keys, worker="GW A")
    r = await start_gateway(keys, worker="gw-solo")
    await async_wait_for(lambda: r.gw.leading, TTL_S + 2, what="leading alone")
    assert isinstance(r.gw, Gateway) and r.gw.pool.members == ["gw-solo"]


@pytest.fixture
def pg_db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path | str:
    """A database of the test's own in the session's PostgreSQL cluster."""
    return _db_at("postgresql", request, tmp_path, monkeypatch)()


async def test_a_page_on_one_worker_is_told_live_what_the_other_alone_hears(
    start_gateway: StartGateway, keys: Keys, ota_devices: MakeDevice, pg_db: str
) -> None:
    """The app's live events cross the pool (gateway/pool_events.py): a page
    whose stream one worker serves is told every telemetry message of the
    fleet, each once, whichever worker the broker gave it to, and a device
    going offline and online though another worker owns it."""
    a, b = await pool_of_two(start_gateway, keys, pg_db)
    assert a.gw.pool_events is not None and b.gw.pool_events is not None
    devices = [ota_devices() for _ in range(6)]
    while not any(b.gw.pool.owns(d.id) for d in devices):  # (ids are random: make one worker b owns)
        devices.append(ota_devices())
    ids = await online(a, devices)
    # nothing is passed on while no page is open
    for d in devices:
        d.client.publish(d.topic("telemetry"), telemetry(d.id, 1), qos=1)
    await async_wait_for(
        lambda: sum(a.store.telemetry_count(i) for i in ids) == len(ids), 10, what="a row each"
    )
    assert a.gw.pool_events.sent == b.gw.pool_events.sent == 0

    events = Events()
    opened = asyncio.Event()
    reader = asyncio.create_task(events.read(a.url, a.token, opened))
    try:
        await asyncio.wait_for(opened.wait(), 10)
        # (the other worker hears within a beat that a page is open here)
        await async_wait_for(lambda: b.gw.pool_events.watched_until > time.monotonic(), 10, what="watched")
        for seq in range(2, 12):
            for d in devices:
                d.client.publish(d.topic("telemetry"), telemetry(d.id, seq), qos=1)
        got = await events.telemetry_of(len(ids) * 10)  # (ten each: six devices, or more)
        assert sorted(got) == sorted((i, seq) for i in ids for seq in range(2, 12))
        assert b.gw.pool_events.sent > 0  # (the broker gave worker b its share, and b passed it on)
        await asyncio.sleep(0.5)
        assert events.got.empty() or all(k != "telemetry" for k, _ in events.got._queue)  # type: ignore[attr-defined]

        # a device worker b owns goes offline, then comes back: the page on a is told both
        theirs = next(d for d in devices if b.gw.pool.owns(d.id))
        state = {"v": 1, "dev": theirs.id, "state": "offline", "reason": "sleeping"}
        theirs.client.publish(theirs.topic("state"), json.dumps(state), qos=1, retain=True)
        await _told(events, "offline", theirs.id)
        theirs.client.publish(
            theirs.topic("state"), json.dumps(state | {"state": "online"}), qos=1, retain=True
        )
        await _told(events, "online", theirs.id)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    # the page closed: worker b stops passing events on within a few beats
    await async_wait_for(lambda: b.gw.pool_events.watched_until < time.monotonic(), 10, what="unwatched")
    sent = b.gw.pool_events.sent
    for d in devices:
        d.client.publish(d.topic("telemetry"), telemetry(d.id, 12), qos=1)
    await async_wait_for(
        lambda: sum(a.store.telemetry_count(i) for i in ids) == 12 * len(ids), 10, what="12 rows each"
    )
    assert b.gw.pool_events.sent == sent


async def _told(events: Events, kind: str, dev: str) -> None:
    while True:
        got, data = await asyncio.wait_for(events.got.get(), 10)
        if got == kind and data["device"] == dev:
            return


async def test_what_a_device_says_of_itself_is_taken_in_its_order_by_the_pool(
    start_gateway: StartGateway, keys: Keys, ota_devices: MakeDevice
) -> None:
    """Order where it matters (docs/makers.md, "A pool of gateway workers"):
    states and update statuses reach every worker in the order the device
    sent them (non-shared subscriptions, one topic each), and one worker acts
    on each (the owner, the leader): the last one said is the one that
    stands, after a burst of them."""
    a, b = await pool_of_two(start_gateway, keys)
    devices = [ota_devices() for _ in range(4)]
    ids = await online(a, devices)
    for d in devices:
        for k in range(40):
            state = {"v": 1, "dev": d.id, "state": "offline" if k % 2 else "online", "reason": f"r{k}"}
            if k % 2 == 0:
                state.pop("reason")
            d.client.publish(d.topic("state"), json.dumps(state), qos=1, retain=True)
    # (the 40th, k = 39, says offline, reason r39)
    await async_wait_for(
        lambda: all((rec := a.store.device(i)) is not None and rec.state_reason == "r39" for i in ids),
        10,
        what="every device's last state kept",
    )
    await asyncio.sleep(0.5)
    for i in ids:
        rec = a.store.device(i)
        assert rec is not None and not rec.online and rec.state_reason == "r39"
        assert not a.gw.is_online(i) and not b.gw.is_online(i)


async def test_a_pool_on_two_machines_shares_releases_and_passes_requests_on(
    start_gateway: StartGateway, keys: Keys, release: Release, ota_devices: MakeDevice, pg_db: str
) -> None:
    """Workers on two machines (docs/makers.md, "Workers on several machines"):
    each with a folder of its own and its API on every address over HTTPS. A
    release uploaded through the one that does not lead is passed on to the
    leader at the address it published, trusted by the certificate it
    published; its blobs go into the database. The leader stops: the other
    leads, and serves an update to commit from blobs it fetches from there."""
    from gateway.archive import TAR_TYPE, pack_release

    a = await start_gateway(keys, worker="gw-a", db=pg_db, machine="machine-a", api=("0.0.0.0", 0))
    b = await start_gateway(keys, worker="gw-b", db=pg_db, machine="machine-b", api=("0.0.0.0", 0))
    await async_wait_for(lambda: a.gw.pool.members == b.gw.pool.members == ["gw-a", "gw-b"], 10, what="pool")
    await async_wait_for(lambda: a.gw.leading != b.gw.leading, 10, what="one leader")
    lead, other = (a, b) if a.gw.leading else (b, a)
    assert lead.gw.pool.reach is not None and lead.gw.pool.reach.startswith("https://")
    await async_wait_for(lambda: leader_api(other.gw, time.time()) is not None, 10, what="the leader's API")
    token = {"Authorization": f"Bearer {other.token}", "Content-Type": TAR_TYPE}
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{other.url}/api/v1/releases", data=pack_release(release), headers=token, ssl=False
        ) as answer,
    ):
        got = await answer.json()
        assert answer.status in (200, 201), got
    names = {f.zsha256 for f in release.files}
    rows = lead.store.db.execute("SELECT zsha256 FROM release_blobs").fetchall()
    assert names <= {str(r[0]) for r in rows}
    assert not any((other.store.beside(".blobs") / n).exists() for n in names)

    dev = answering(ota_devices())
    await online(other, [dev])
    await stop(lead)
    await async_wait_for(lambda: other.gw.leading, TTL_S + 5, what="the other machine's worker leads")
    uid = await update_to_commit(other, dev, release, other)
    assert other.gw.ota.table.get(uid) is not None
    assert all((other.store.beside(".blobs") / n).exists() for n in names)


async def test_a_leader_on_another_machine_with_its_api_on_loopback_is_said_out_of_reach(
    start_gateway: StartGateway, keys: Keys, pg_db: str
) -> None:
    """Nothing is passed on to another machine's loopback: the request is
    answered 503, saying why and what to do."""
    a = await start_gateway(keys, worker="gw-a", db=pg_db, machine="machine-a")
    await async_wait_for(lambda: a.gw.leading, 10, what="gw-a leads")
    assert a.gw.pool.reach is None
    b = await start_gateway(keys, worker="gw-b", db=pg_db, machine="machine-b", api=("0.0.0.0", 0))
    await async_wait_for(lambda: b.gw.pool.members == ["gw-a", "gw-b"], 10, what="pool")
    # (once the leader's beat has published its API)
    await async_wait_for(lambda: leader_api(b.gw, time.time()) is not None, 10, what="the leader's API")
    got = await call(b, "/api/v1/devices/th-x/update", {"release": "thermostat@2"}, 503)
    assert "runs on machine-a with its API on its loopback" in got["error"]["message"], got
