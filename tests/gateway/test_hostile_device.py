"""Attacks by one compromised device on the gateway, one test per attack,
named after it: a client holding one device's own broker credentials
publishes on that device's own topics through the session's real Mosquitto
to a real gateway (in this process) with its real SQLite store. Each test
checks that the gateway keeps running and that another device's data still
lands (docs/security.md 7)."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware.pb.peer import protocol as proto
from gateway.errors import CommandTimeoutError
from ota.keys import Keys
from ota.release import Release

from ..conftest import sqlite_only, unique_id
from ..support import messages
from ..support.mosquitto import Mosquitto
from ..support.mqtt import TestClient
from ..support.ota import OtaDevice
from ..support.wait import async_wait_for
from .conftest import Running, StartGateway, stop


def hello(dev: str, **over: Any) -> dict[str, Any]:
    return messages.hello(dev, **({"platform": "micropython", "ts": time.time()} | over))


def telemetry(dev: str, seq: int = 1, **over: Any) -> dict[str, Any]:
    msg = {
        "v": 1,
        "dev": dev,
        "seq": seq,
        "ts": time.time(),
        "sensors": {"temperature": 21.0},
        "actuators": {"relay": False},
        "features": {},
    }
    return msg | over


class Device:
    """A device played by an MQTT client with its own broker credentials
    (from its config.json, as an attacker holding the board would have them)."""

    def __init__(self, broker: Mosquitto, prefix: str) -> None:
        self.id = unique_id(prefix)
        password = secrets.token_urlsafe(12)
        broker.add_user(self.id, password)
        self.client = TestClient(broker, self.id, password, client_id=self.id)
        self.retained: set[str] = set()

    async def send(self, kind: str, msg: dict[str, Any] | bytes, retain: bool = False) -> None:
        payload = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
        topic = proto.topic(self.id, kind)
        if retain:
            self.retained.add(topic)
        await asyncio.to_thread(self.client.publish, topic, payload, 1, retain)

    async def register(self, **over: Any) -> None:
        """What a device does at connect: hello and online, retained."""
        await self.send("hello", hello(self.id, **over), retain=True)
        await self.send("state", {"v": 1, "dev": self.id, "state": "online", "ts": time.time()}, retain=True)

    def close(self) -> None:
        for topic in self.retained:  # the session's broker outlives this test
            self.client.publish(topic, b"", 1, True)
        self.client.close()


@pytest.fixture
def devices(mosquitto: Mosquitto) -> Iterator[Callable[[str], Device]]:
    made: list[Device] = []

    def make(prefix: str) -> Device:
        d = Device(mosquitto, prefix)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


async def online(r: Running, *devs: Device, **over: Any) -> None:
    for d in devs:
        await d.register(**over)
    await async_wait_for(lambda: all(r.gw.is_online(d.id) for d in devs), 10, what="devices online")


def rejected(r: Running, reason: str) -> int:
    return r.gw.rejects.get(reason, 0)


async def lands(r: Running, dev: Device, seq: int) -> None:
    """dev's telemetry seq is sent and stored."""
    await dev.send("telemetry", telemetry(dev.id, seq))
    await async_wait_for(
        lambda: any(row.seq == seq for row in r.store.telemetry(dev.id, 20)),
        10,
        what=f"{dev.id} seq {seq} stored",
    )


def running(r: Running) -> bool:
    if r.task.done():
        raise AssertionError(
            f"the gateway stopped: {r.task.exception() if not r.task.cancelled() else 'cancelled'}"
        )
    return True


async def rejected_for(r: Running, reason: str, before: int, what: str) -> None:
    await async_wait_for(lambda: rejected(r, reason) > before, 10, what=what)
    assert running(r)


# ---- numbers that once reached SQLite as they came ------------------------------------------


async def test_retained_telemetry_with_seq_2_63_does_not_stop_the_gateway_across_a_restart(
    start_gateway: StartGateway, devices: Callable[[str], Device], tmp_path: Path
) -> None:
    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other)
    before = rejected(r, "bad_value")
    # retained: the broker gives it to every gateway that subscribes, at every restart
    await rogue.send("telemetry", telemetry(rogue.id, 2**63), retain=True)
    await other.send("telemetry", telemetry(other.id, 1))
    await rejected_for(r, "bad_value", before, "seq 2**63 rejected")
    await lands(r, other, 2)
    assert r.store.telemetry_count(rogue.id) == 0

    await stop(r)
    r = await start_gateway()  # the same database, a new session: the retained copy comes again
    await rejected_for(r, "bad_value", before + 1, "seq 2**63 rejected after the restart")
    await online(r, other)
    await lands(r, other, 3)
    assert "seq must be within" in (r.store.rejects()["bad_value"]["last_detail"] or "")
    assert r.gw.rejects.get("internal", 0) == 0


async def test_a_reply_naming_another_device_s_command_ends_nothing_of_it(
    start_gateway: StartGateway, devices: Callable[[str], Device]
) -> None:
    """A command the gateway sent to one device, still waiting (here: sent
    by a gateway that stopped before its answer), is not ended by another
    device replying with its id: it stays sent, for its own device's reply."""
    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other)
    r.store.add_command("c-other-1", other.id, "ping", {}, time.time())
    await rogue.send(
        "reply", {"v": 1, "dev": rogue.id, "id": "c-other-1", "ok": False, "error": {"code": "forged"}}
    )
    await lands(r, rogue, 1)  # (its reply came before this, on its own connection)
    row = r.store.command("c-other-1")
    assert row is not None and (row["status"], row["reply"]) == ("sent", None)
    await other.send("reply", {"v": 1, "dev": other.id, "id": "c-other-1", "ok": True, "result": {}})
    await async_wait_for(lambda: (r.store.command("c-other-1") or {})["status"] == "late", 10, what="late")
    assert running(r)


async def test_a_command_whose_wait_is_cancelled_is_recorded_so_and_its_reply_after_as_late(
    start_gateway: StartGateway, devices: Callable[[str], Device]
) -> None:
    """A command waiting for its reply when the gateway stops (its tasks
    cancelled) stayed `sent` for good: it is `cancelled`, and a reply that
    comes all the same is recorded `late`, as one after a timeout is (it was
    dropped); another device's reply naming it ends nothing of it."""
    r = await start_gateway()
    dev, rogue = devices("th"), devices("th")
    await online(r, dev, rogue)
    waiting = asyncio.create_task(r.gw.send_command(dev.id, "ping", timeout=60))
    rows: list[Any] = []

    def sent() -> bool:
        rows[:] = r.store.db.execute("SELECT id, status FROM commands WHERE device = ?", (dev.id,)).fetchall()
        return bool(rows)

    await async_wait_for(sent, 10, what="the command sent")
    cmd_id = rows[0][0]
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (r.store.command(cmd_id) or {})["status"] == "cancelled"
    await rogue.send(
        "reply", {"v": 1, "dev": rogue.id, "id": cmd_id, "ok": False, "error": {"code": "forged"}}
    )
    await lands(r, rogue, 1)
    assert (r.store.command(cmd_id) or {})["status"] == "cancelled"
    await dev.send("reply", {"v": 1, "dev": dev.id, "id": cmd_id, "ok": True, "result": {"pong": 1}})
    await async_wait_for(lambda: (r.store.command(cmd_id) or {})["status"] == "late", 10, what="late")
    assert json.loads((r.store.command(cmd_id) or {})["reply"])["result"] == {"pong": 1}
    # so is one that timed out; a reply repeated changes nothing of what was recorded
    with pytest.raises(CommandTimeoutError):
        await r.gw.send_command(dev.id, "ping", timeout=0.2)
    (late_id,) = [
        row[0]
        for row in r.store.db.execute("SELECT id, status FROM commands WHERE device = ?", (dev.id,))
        if row[1] == "timeout"
    ]
    for n in (1, 2):
        await dev.send("reply", {"v": 1, "dev": dev.id, "id": late_id, "ok": True, "result": {"n": n}})
    await lands(r, dev, 2)
    row = r.store.command(late_id) or {}
    assert row["status"] == "late" and json.loads(row["reply"])["result"] == {"n": 1}, row
    assert running(r)


async def test_telemetry_with_a_huge_or_negative_ts_is_rejected_and_others_land(
    start_gateway: StartGateway, devices: Callable[[str], Device]
) -> None:
    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other)
    for n, ts in enumerate((10**30, 2**63, -1, 1e20)):
        before = rejected(r, "bad_value")
        await rogue.send("telemetry", telemetry(rogue.id, 1, ts=ts))
        await rejected_for(r, "bad_value", before, f"ts {ts} rejected")
        await lands(r, other, n + 1)
    assert r.store.telemetry_count(rogue.id) == 0


async def test_retained_update_status_with_bytes_beyond_64_bits_does_not_stop_the_gateway(
    start_gateway: StartGateway, devices: Callable[[str], Device]
) -> None:
    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other)
    before = rejected(r, "bad_value")
    status = {
        "v": 1,
        "dev": rogue.id,
        "id": "5f2a9c01b7e4",
        "state": "downloading",
        "bytes": 2**64,
        "total": 1,
    }
    await rogue.send("ota/status", status, retain=True)
    await rejected_for(r, "bad_value", before, "bytes 2**64 rejected")
    for k, v in (("total", 2**63), ("counter", 10**20), ("ts", 1e300)):
        before = rejected(r, "bad_value")
        await rogue.send("ota/status", {**status, "bytes": 1, k: v})
        await rejected_for(r, "bad_value", before, f"{k} {v} rejected")
    await lands(r, other, 1)
    assert r.gw.rejects.get("internal", 0) == 0


async def test_update_request_with_a_seq_beyond_the_chunk_headers_32_bits_is_rejected(
    start_gateway: StartGateway, devices: Callable[[str], Device]
) -> None:
    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other)
    req = {
        "v": 1,
        "dev": rogue.id,
        "id": "5f2a9c01b7e4",
        "obj": "manifest",
        "off": 0,
        "len": 2048,
        "seq": 2**32,
    }
    for k in ("seq", "off"):
        before = rejected(r, "bad_value")
        await rogue.send("ota/req", {**req, "seq": 1, k: 2**32})
        await rejected_for(r, "bad_value", before, f"{k} 2**32 rejected")
    await lands(r, other, 1)
    assert r.gw.rejects.get("internal", 0) == 0


# ---- text and numbers JSON should not carry ------------------------------------------------


async def test_hello_holding_a_lone_surrogate_is_rejected_and_the_device_record_kept(
    start_gateway: StartGateway, devices: Callable[[str], Device]
) -> None:
    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other)
    before = rejected(r, "bad_value")
    # "\ud800" is valid JSON, but no UTF-8 text: SQLite could not store it
    await rogue.send("hello", json.dumps(hello(rogue.id, model="\ud800")).encode(), retain=True)
    await rejected_for(r, "bad_value", before, "lone surrogate rejected")
    d = r.store.device(rogue.id)
    assert d is not None and d.model == "thermostat"
    await lands(r, other, 1)


async def test_telemetry_holding_nan_an_infinity_or_an_integer_no_float_holds_is_rejected(
    start_gateway: StartGateway, devices: Callable[[str], Device]
) -> None:
    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other)
    body = json.dumps(telemetry(rogue.id, 1))
    for payload, reason in (
        (body.replace('"temperature": 21.0', '"temperature": NaN'), "bad_json"),
        (body.replace('"temperature": 21.0', '"temperature": Infinity'), "bad_json"),
        (body.replace('"temperature": 21.0', '"temperature": -1e400'), "bad_value"),
        # (an integer no float holds: stored, it failed every twin preview of the device after)
        (body.replace('"temperature": 21.0', '"temperature": 1' + "0" * 400), "bad_value"),
    ):
        before = rejected(r, reason)
        await rogue.send("telemetry", payload.encode())
        await rejected_for(r, reason, before, payload)
    await lands(r, other, 1)
    assert r.store.telemetry_count(rogue.id) == 0


# ---- the fleet view ---------------------------------------------------------------------------


def cli_list(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "devices", "list", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_hello_whose_feature_entries_are_not_objects_does_not_break_the_fleet_listing(
    start_gateway: StartGateway, devices: Callable[[str], Device], gw_db: Path | str
) -> None:
    import aiohttp

    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other)
    for features in (
        {"thermostat": 5},
        {"thermostat": ["1.0.0"]},
        {"x": {"version": 2}},
        {"x": {"running": "yes"}},
        {"x": {"waiting": "outdoor_temperature"}},
        {"x": {"waiting": [3]}},
    ):
        before = rejected(r, "bad_type")
        await rogue.send("hello", hello(rogue.id, features=features), retain=True)
        await rejected_for(r, "bad_type", before, f"features {features} rejected")
    odds = (
        {"caps": [1]},
        {"addons": [1]},
        {"addons": "co2"},
        {"ota": [2]},
        {"ota": {"counter": "2"}},
        {"ota": {"image": 3}},
        {"platform": 3},
    )
    for odd in odds:
        before = rejected(r, "bad_type")
        await rogue.send("hello", hello(rogue.id, **odd), retain=True)
        await rejected_for(r, "bad_type", before, f"{odd} rejected")
    async with aiohttp.ClientSession() as s, s.get(r.url + "/api/v1/devices", headers=r.headers()) as resp:
        assert resp.status == 200
        listed = {d["id"]: d for d in await resp.json()}
    assert listed[rogue.id]["features"] == {"thermostat": "1.0.0"}  # as before the attack
    assert other.id in listed
    out = cli_list(gw_db)
    assert out.returncode == 0, out.stderr
    assert other.id in out.stdout


@sqlite_only
async def test_a_stored_hello_of_an_odd_shape_does_not_break_the_fleet_listing(
    start_gateway: StartGateway, devices: Callable[[str], Device], tmp_path: Path
) -> None:
    """A row stored before hello was validated as it is now (or by a bug)
    is shown as well as can be; the other devices are listed."""
    import aiohttp

    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other)
    odd = {"thermostat": 5, "\x1b[31mred": {"version": "1\n2"}}
    with sqlite3.connect(tmp_path / "gw.db") as db:
        db.execute(
            "UPDATE devices SET features = ?, model = ? WHERE id = ?", (json.dumps(odd), "\x1b[2J", rogue.id)
        )
    async with aiohttp.ClientSession() as s, s.get(r.url + "/api/v1/devices", headers=r.headers()) as resp:
        assert resp.status == 200
        listed = {d["id"]: d for d in await resp.json()}
    assert listed[rogue.id]["features"] == {"thermostat": None, "\x1b[31mred": "1\n2"}
    assert other.id in listed
    out = cli_list(tmp_path / "gw.db")
    assert out.returncode == 0, out.stderr
    assert other.id in out.stdout and rogue.id in out.stdout
    assert "\x1b" not in out.stdout  # a device's text cannot drive the operator's terminal
    assert "\\x1b[2J" in out.stdout


async def test_a_hello_whose_ota_texts_hold_escapes_cannot_drive_the_terminal_of_devices_show(
    start_gateway: StartGateway, devices: Callable[[str], Device], gw_db: Path | str
) -> None:
    r = await start_gateway()
    rogue = devices("th")
    await online(r, rogue)
    ota = {"counter": 0, "state": "\x1b[2Jtrial", "manifest": "\x1b]0;x\x07abc", "image": "1.2\x1b[31m"}
    await rogue.send("hello", hello(rogue.id, ota=ota), retain=True)

    def stored() -> object:
        d = r.store.device(rogue.id)
        return (d.ota or {}).get("image") if d is not None else None

    await async_wait_for(lambda: stored() == ota["image"], 10, what="the hello stored")
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "devices", "show", rogue.id, "--db", str(gw_db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "image: 1.2\\x1b[31m" in out.stdout and "release: counter 0, \\x1b[2Jtrial" in out.stdout


# ---- failures validation cannot catch --------------------------------------------------------
# SQLite triggers make the real database refuse one device's rows, as a full
# disk or a bug would: what validation passed can still fail to be stored.


def refuse(db: Path, table: str, when: str, op: str = "INSERT") -> None:
    with sqlite3.connect(db) as c:
        c.execute(
            f"CREATE TRIGGER refuse_{table}_{op.lower()} BEFORE {op} ON {table} WHEN {when} "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )


@sqlite_only
async def test_a_telemetry_row_that_cannot_be_stored_costs_the_other_rows_of_its_batch_nothing(
    start_gateway: StartGateway, devices: Callable[[str], Device], tmp_path: Path
) -> None:
    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other)
    refuse(tmp_path / "gw.db", "telemetry", f"NEW.device = '{rogue.id}'")
    r.gw.flush_interval = 1.0  # so that both devices' rows share a batch
    stored = r.gw.counters["stored"]
    await asyncio.gather(
        rogue.send("telemetry", telemetry(rogue.id, 1)),
        other.send("telemetry", telemetry(other.id, 1)),
        other.send("telemetry", telemetry(other.id, 2)),
    )
    await async_wait_for(lambda: rejected(r, "internal") >= 1, 10, what="the failed row rejected as internal")
    await async_wait_for(lambda: r.store.telemetry_count(other.id) == 2, 10, what="the other rows stored")
    assert running(r)
    assert r.store.telemetry_count(rogue.id) == 0
    assert r.gw.counters["stored"] == stored + 2
    assert r.store.rejects()["internal"]["last_topic"] == proto.topic(rogue.id, "telemetry")
    await lands(r, other, 3)


@sqlite_only
async def test_a_device_that_cannot_be_marked_offline_does_not_stop_the_liveness_watch(
    start_gateway: StartGateway, devices: Callable[[str], Device], tmp_path: Path
) -> None:
    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    await online(r, rogue, other, keepalive=1, telemetry_s=0.1)  # silent for 3.5 s: gone
    refuse(tmp_path / "gw.db", "devices", f"NEW.id = '{rogue.id}' AND NEW.online = 0", op="UPDATE")
    r.gw.watch_interval = 0.2
    # both fall silent: the watch marks the other offline, and goes on trying the one it cannot
    await async_wait_for(lambda: not r.gw.is_online(other.id), 15, what="the silent device marked offline")
    d = r.store.device(other.id)
    assert d is not None and not d.online and d.state_reason == "silent"
    assert running(r)
    await lands(r, other, 1)  # and it comes back
    assert r.gw.is_online(other.id)


@sqlite_only
async def test_a_hello_that_cannot_be_stored_is_rejected_as_internal_and_the_gateway_goes_on(
    start_gateway: StartGateway, devices: Callable[[str], Device], tmp_path: Path
) -> None:
    r = await start_gateway()
    rogue, other = devices("th"), devices("th")
    refuse(tmp_path / "gw.db", "devices", f"NEW.id = '{rogue.id}'")
    await rogue.send("hello", hello(rogue.id), retain=True)
    await async_wait_for(lambda: rejected(r, "internal") >= 1, 10, what="hello rejected as internal")
    assert running(r)
    assert r.store.device(rogue.id) is None
    await online(r, other)
    await lands(r, other, 1)


@sqlite_only
async def test_an_update_that_cannot_be_saved_does_not_keep_another_from_its_deadline(
    start_gateway: StartGateway,
    keys: Keys,
    release: Release,
    ota_devices: Callable[..., OtaDevice],
    devices: Callable[[str], Device],
    tmp_path: Path,
) -> None:
    r = await start_gateway(keys, deadline=1.5)
    a, b = ota_devices(), ota_devices()
    for d in (a, b):
        await asyncio.to_thread(d.hello)
    await async_wait_for(lambda: r.gw.is_online(a.id) and r.gw.is_online(b.id), 10, what="devices online")
    r.gw.ota.releases.add(release.path, 0.0)
    ua = await r.gw.ota.start(a.id, "thermostat@2")
    ub = await r.gw.ota.start(b.id, "thermostat@2")
    refuse(tmp_path / "gw.db", "updates", f"NEW.device = '{a.id}' AND NEW.state = 'failed'")

    def state(uid: str) -> str | None:
        u = r.gw.ota.table.get(uid)
        return u.state if u is not None else None

    # neither device takes its offer: both pass their deadline, and a's end cannot be saved
    await async_wait_for(lambda: state(ub.id) == "failed", 10, what="b's update timed out")
    stored = r.gw.ota.table.get(ub.id)
    assert stored is not None and stored.reason == "timeout"
    assert state(ua.id) == "offered"  # as far as the database could keep it
    assert running(r)
    other = devices("th")
    await online(r, other)
    await lands(r, other, 1)
