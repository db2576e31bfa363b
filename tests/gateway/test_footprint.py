"""Everything stored about a device, exported and forgotten
(gateway/footprint.py, docs/protocol.md 10.3): on real SQLite, and through
a gateway running in this process on the session's Mosquitto, its API and
its command line. The export holds each table's rows of the device and
none of another's; forgetting leaves nothing of the device but its claim
code and the mark, nothing of another changed, and no retained message of
it at the broker; a forgotten device's telemetry is not kept until it is
claimed again; a rollout counts a forgotten member as it did."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounts import Accounts, new_claim_code
from gateway.cli_registry import password_hash
from gateway.footprint import TABLES, csv_export, forget, json_export, stored
from gateway.registry import Registry
from gateway.rollouts import Gone
from gateway.store import SCHEMA_VERSION, Store, TelemetryRow
from ota.keys import Keys

from ..conftest import DbAt
from ..support import messages
from ..support.cli import permabeta
from ..support.mosquitto import Mosquitto
from ..support.mqtt import TestClient
from ..support.ota import OtaDevice
from ..support.schema import as_of
from ..support.wait import async_wait_for
from .conftest import MakeRelease, Running, StartGateway
from .test_api_access import PASSWORD, World, world  # noqa: F401
from .test_rollout_service import StepClock, ends, offer_of, online, recorded, releases

MakeDevice = Callable[..., OtaDevice]
A, B = "alpha-01", "bravo-02"
_KEPT = {"device_claims", "device_forgotten", "device_registry"}  # what forgetting leaves of a device


def _fill(store: Store, dev: str, t: float) -> None:
    """A row of dev in every table that names a device, as the gateway writes them."""
    db = store.db
    store.upsert_hello(dev, messages.hello(dev), t)  # devices, device_boots
    store.set_state(dev, True, "online", t + 1)  # device_states
    store.add_telemetry([TelemetryRow(dev, t + 2, t + 2, 1, {"sensors": {"temperature": 21.5}})])
    store.add_event(dev, "sensor_error", "thermostat", "no reading", t + 3)
    store.add_command(f"c-{dev}", dev, "ping", {}, t + 4)
    store.count_reject(f"spoofed-{dev}", f"pb/{dev}/telemetry", f"from {dev}", t + 5)
    db.execute("INSERT INTO device_settings (device, channel) VALUES (?, 'beta')", (dev,))
    db.execute("INSERT INTO accounts (id, name, role, created) VALUES (?, ?, 'owner', 0)", (t, f"o{int(t)}"))
    db.execute("INSERT INTO device_owners (device, account, since) VALUES (?, ?, ?)", (dev, t, t))
    db.execute("INSERT INTO device_claims (device, code_hash, created) VALUES (?, ?, ?)", (dev, f"h{t}", t))
    Registry(store).register(dev, "thermostat", "thermostat-v1", password_hash(dev, "pw"), t)
    db.execute(
        "INSERT INTO releases (id, model, counter, version, manifest, files, size, zsize, added)"
        " VALUES (?, 'thermostat', ?, '1', ?, 0, 0, 0, 0)",
        (f"rel-{dev}", int(t), b"\x00"),
    )
    db.execute(
        "INSERT INTO updates (id, device, release, model, counter, version, state, freshness, started,"
        " updated, deadline) VALUES (?, ?, ?, 'thermostat', 2, '1', 'committed', 1, ?, ?, ?)",
        (f"u-{dev}", dev, f"rel-{dev}", t + 6, t + 6, t + 99),
    )
    db.execute("INSERT INTO update_steps (update_id, at, state) VALUES (?, ?, 'offered')", (f"u-{dev}", t))
    db.execute(
        "INSERT INTO device_decisions (device, release, decision, at) VALUES (?, ?, 'now', ?)",
        (dev, f"rel-{dev}", t + 7),
    )
    db.execute(
        "INSERT INTO twin_previews (device, release, state, requested) VALUES (?, ?, 'ready', ?)",
        (dev, f"rel-{dev}", t + 8),
    )
    db.execute("INSERT INTO twin_devices (device, heater_w, updated) VALUES (?, 2000, ?)", (dev, t + 8))
    db.execute("INSERT INTO data_retention (device, days, set_at) VALUES (?, 30, ?)", (dev, t + 8))
    db.execute(
        "INSERT INTO stream_retention (device, stream, days, set_at) VALUES (?, 'sensors.humidity', 2, ?)",
        (dev, t + 8),
    )
    db.execute("INSERT INTO ha_links (device, account, since) VALUES (?, ?, ?)", (dev, t, t + 8))
    rid = f"r{int(t)}"  # (ids that name no device)
    db.execute(
        "INSERT INTO rollouts (id, release, ref, model, cohort, stages, soak, max_failure_rate, metrics,"
        " reverts, seed, state, stage, stage_started, created, updated) VALUES (?, ?, 'thermostat@2',"
        " 'thermostat', 'all', '[1.0]', 60, 0.05, '[]', '{}', 1, 'halted', 0, ?, ?, ?)",
        (rid, f"rel-{dev}", t, t, t),
    )
    db.execute(
        "INSERT INTO rollout_members (rollout, device, stage, from_counter, update_id, offered)"
        " VALUES (?, ?, 0, 0, ?, ?)",
        (rid, dev, f"u-{dev}", t + 6),
    )
    numbers = {"devices": {dev: "verify: hash mismatch"}}
    db.execute(
        "INSERT INTO rollout_decisions (rollout, at, stage, kind, result, reason, numbers)"
        " VALUES (?, ?, 0, 'revert_failed', 'failed', ?, ?)",
        (rid, t + 9, f"1 not reverted after 3 tries: {dev} (verify: hash mismatch)", json.dumps(numbers)),
    )


def _export(store: Store, dev: str, since: float | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(b"".join(json_export(store, dev, 5.0, since)))
    return doc


def test_every_table_that_names_a_device_is_in_the_footprint(db_at: DbAt) -> None:
    with Store(db_at()) as store:
        tables = sorted(store.db.tables())
        columns = {t: store.db.columns(t) for t in tables}
    naming = {t for t in tables if "device" in columns[t]}
    # devices by its id, update_steps by its update; the rest by their `device`
    assert naming | {"devices", "update_steps"} <= {t.name for t in TABLES}


def test_the_export_holds_the_device_s_rows_of_every_table_and_none_of_another_s(db_at: DbAt) -> None:
    with Store(db_at()) as store:
        _fill(store, A, 1000.0)
        _fill(store, B, 2000.0)
        both = {"devices": {A: "timeout", B: "verify: hash mismatch"}}
        store.db.execute(
            "INSERT INTO rollout_decisions (rollout, at, stage, kind, result, reason, numbers)"
            " VALUES ('r1000', 1, 0, 'revert_failed', 'failed', ?, ?)",
            (f"2 not reverted after 3 tries: {A} (timeout), {B} (verify: hash mismatch)", json.dumps(both)),
        )
        doc = _export(store, A)
        # (a decision that names both shows A's part, and counts the other)
        shared = doc["tables"]["rollout_decisions"][-1]
        assert json.loads(shared["numbers"]) == {"devices": {A: "timeout"}, "others": 1}
        assert shared["reason"] == f"2 not reverted after 3 tries: {A} (timeout), 1 other"
        assert (doc["device"], doc["exported_at"], doc["since"]) == (A, 5.0, None)
        assert doc["schema"] == store.schema
        # how long the gateway keeps what it shares: the device's period, a stream's own
        retention = {"days": 30.0, "streams": {"sensors.humidity": 2.0}}
        assert doc["retention"] == retention
        assert [t for t, rows in doc["tables"].items() if not rows] == ["device_forgotten"]
        # (what provisioning recorded, without its password's hash: not the owner's to see)
        assert [r["password_hash"] for r in doc["tables"]["device_registry"]] == [None]
        assert list(doc["tables"]) == [t.name for t in TABLES]
        assert B not in json.dumps(doc)
        assert doc["tables"]["telemetry"][0]["data"] == '{"sensors":{"temperature":21.5}}'  # as stored
        # the same rows in the zip, a CSV file each
        with zipfile.ZipFile(io.BytesIO(b"".join(csv_export(store, A, 5.0)))) as zf:
            assert zf.namelist() == ["export.csv"] + [f"{t.name}.csv" for t in TABLES]
            meta = dict(csv.reader(io.TextIOWrapper(zf.open("export.csv"), "utf-8")))
            assert meta == {"key": "value", "device": A, "exported_at": "5.0", "schema": str(store.schema),
                            "since": "", "retention": json.dumps(retention)}  # fmt: skip
            for name, rows in doc["tables"].items():
                got = list(csv.DictReader(io.TextIOWrapper(zf.open(f"{name}.csv"), "utf-8", newline="")))
                want = [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
                assert got == want, name
            assert B not in str([zf.read(n) for n in zf.namelist()])


def test_an_owner_s_export_starts_at_its_claim(db_at: DbAt) -> None:
    with Store(db_at()) as store:
        _fill(store, A, 1000.0)
        store.add_telemetry([TelemetryRow(A, 1500.0, None, 2, {"after": True})])
        doc = _export(store, A, since=1200.0)
        assert [r["data"] for r in doc["tables"]["telemetry"]] == ['{"after":true}']
        for name in (
            "events",
            "commands",
            "device_boots",
            "device_states",
            "updates",
            "update_steps",
            "device_decisions",
            "twin_previews",
            "rollout_members",
            "rollout_decisions",
            "rejects",
        ):
            assert doc["tables"][name] == [], name  # fmt: skip
        assert len(doc["tables"]["devices"]) == len(doc["tables"]["device_settings"]) == 1  # what holds now


def test_forgetting_deletes_the_device_s_rows_and_leaves_another_s_as_they_were(db_at: DbAt) -> None:
    with Store(db_at()) as store:
        _fill(store, A, 1000.0)
        _fill(store, B, 2000.0)
        others = _export(store, B)["tables"]
        removed = forget(store, A, [Gone("r1000", 0, "committed", 1, 1)], 3000.0)
        assert removed["telemetry"] == removed["devices"] == removed["rollout_members"] == 1
        doc = _export(store, A)
        left = {t: rows for t, rows in doc["tables"].items() if rows}
        assert set(left) == _KEPT and left["device_forgotten"] == [{"device": A, "at": 3000.0}]
        assert A not in json.dumps([r for t, rows in left.items() if t not in _KEPT for r in rows])
        assert _export(store, B)["tables"] == others
        assert store.forgotten(A) and not store.forgotten(B)
        # what names no device stays: the reject's count, the rollout's member counted
        reject = store.rejects()[f"spoofed-{A}"]
        assert (reject["count"], reject["last_topic"], reject["last_detail"]) == (1, None, None)
        [decision] = store.db.execute("SELECT * FROM rollout_decisions WHERE rollout = 'r1000'")
        assert json.loads(decision["numbers"]) == {"devices": {}, "forgotten": 1}
        assert decision["reason"] == "1 not reverted after 3 tries: 1 forgotten"
        assert A not in json.dumps([list(r) for r in store.db.execute("SELECT * FROM rollout_forgotten")])
        [(count, offered)] = store.db.execute("SELECT count, offered FROM rollout_forgotten")
        assert (count, offered) == (1, 1)


def test_a_forgotten_device_keeps_no_history_of_its_boots_and_states(db_at: DbAt) -> None:
    with Store(db_at()) as store:
        _fill(store, A, 1000.0)
        forget(store, A, [], 3000.0)
        store.upsert_hello(A, messages.hello(A, boot_count=7), 3001.0)
        store.set_state(A, False, "lost", 3002.0)
        d = store.device(A)
        assert d is not None and d.boot_count == 7 and not d.online  # the gateway operates it
        assert store.history("device_boots", A, 0, 9999) == store.history("device_states", A, 0, 9999) == []


def test_a_database_of_schema_10_gets_the_tables_of_11_and_12_with_nothing_forgotten_nor_expiring(
    db_at: DbAt,
) -> None:
    with Store(db_at()) as store:
        _fill(store, A, 1000.0)
        as_of(store, 10)
    with Store(db_at(), readonly=True) as old:  # (read as it is)
        assert old.schema == 10 and not old.forgotten(A) and old.forgotten_devices() == set()
    with Store(db_at()) as store:
        assert store.schema == SCHEMA_VERSION and store.forgotten_devices() == set()
        assert store.retention(A) is None and store.expire_shared(1e12) == 0
        assert len(_export(store, A)["tables"]["telemetry"]) == 1
        forget(store, A, [], 2000.0)
        assert store.forgotten_devices() == {A}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(st.text(max_size=30), st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
        max_size=4,
    )
)
def test_any_stored_value_comes_back_from_either_export_as_it_was_stored(values: list[Any]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "gw.db") as store:
        store.upsert_hello(A, messages.hello(A), 1.0)
        for i, v in enumerate(values):
            store.add_event(A, "note", None, v if isinstance(v, str) else json.dumps(v), float(i))
        rows = _export(store, A)["tables"]["events"]
        assert [r["message"] for r in rows] == [v if isinstance(v, str) else json.dumps(v) for v in values]
        with zipfile.ZipFile(io.BytesIO(b"".join(csv_export(store, A, 5.0)))) as zf:
            got = list(csv.DictReader(io.TextIOWrapper(zf.open("events.csv"), "utf-8", newline="")))
        assert [r["message"] for r in got] == [r["message"] for r in rows]


# ---- through the gateway: the broker, the API, the command line ----------------------


def _retained(mosquitto: Mosquitto, dev: str) -> list[tuple[str, bytes, bool]]:
    """What a fresh subscriber to the device's subtree gets at once: its retained messages."""
    client = TestClient(mosquitto, *mosquitto.operator())
    try:
        client.subscribe(f"pb/{dev}/#")
        got = []
        while more := client.messages(timeout=1.0):
            got += more
        return got
    finally:
        client.close()


async def _call(r: Running, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, r.url + path, json=body, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_forgotten_device_leaves_no_retained_message_and_nothing_it_sends_is_kept_until_claimed(
    start_gateway: StartGateway, ota_devices: MakeDevice, mosquitto: Mosquitto
) -> None:
    r = await start_gateway()
    accounts = Accounts(r.store)
    ann = accounts.create("ann", "owner", PASSWORD, 1.0)
    token = accounts.issue_token(ann, "test", 1.0)
    dev = await online(r, ota_devices())
    code = new_claim_code()
    accounts.register_claim(dev.id, code, 1.0)
    accounts.claim(ann, code, 1.0)
    dev.status("0123456789ab", "downloading", bytes=0)  # (retained, as every status)

    def send(seq: int) -> None:
        msg = {"v": 1, "dev": dev.id, "seq": seq, "ts": 1.0, "sensors": {}, "actuators": {}, "features": {}}
        dev.client.publish(dev.topic("telemetry"), json.dumps(msg), qos=1)
        event = {"v": 1, "dev": dev.id, "ts": 1.0, "kind": "sensor_error", "message": "x"}
        dev.client.publish(dev.topic("event"), json.dumps(event), qos=1)

    send(1)
    await async_wait_for(lambda: r.store.telemetry_count(dev.id) == 1 and r.store.events(dev.id), 10)
    kinds = {t.rsplit("/", 1)[1] for t, _, _ in await asyncio.to_thread(_retained, mosquitto, dev.id)}
    assert kinds == {"hello", "state", "status"}
    status, answer = await _call(r, token, "POST", f"/api/v1/devices/{dev.id}/forget", {"confirm": dev.id})
    assert status == 200 and answer["retained_cleared"] and answer["removed"]["telemetry"] == 1, answer
    assert await asyncio.to_thread(_retained, mosquitto, dev.id) == []
    # still there, and operated; nothing it says is kept
    ignored = r.gw.counters["ignored"]
    send(2)
    await async_wait_for(lambda: r.gw.counters["ignored"] >= ignored + 2, 10, what="telemetry ignored")
    assert r.gw.is_online(dev.id)
    assert r.store.telemetry_count(dev.id) == 0 and r.store.events(dev.id) == []
    assert "bad_json" not in r.gw.rejects  # (the broker passing on the clearing is no bad message)
    # claimed again: kept again
    status, _ = await _call(r, token, "POST", "/api/v1/claims", {"code": code})
    assert status == 201 and not r.store.forgotten(dev.id)
    send(3)
    await async_wait_for(lambda: r.store.telemetry_count(dev.id) == 1, 10, what="telemetry kept again")
    assert [row.seq for row in r.store.telemetry(dev.id)] == [3]


async def test_who_may_export_and_forget_a_device(world: World) -> None:  # noqa: F811
    # (another owner's device is as one that does not exist, and the roles below: test_api_access)
    status, answer = await world.call("bob", "POST", "/api/v1/devices/th-ann/forget", {"confirm": "th-ann"})
    assert (status, answer["error"]["code"]) == (404, "unknown_device")
    status, answer = await world.call("mia", "POST", "/api/v1/devices/th-ann/forget", {"confirm": "th-ann"})
    assert (status, answer["error"]["code"]) == (403, "forbidden")  # a maker: not an owner's device
    for body in (None, {}, {"confirm": "th-bob"}, {"confirm": "th-ann", "and": 1}):
        status, answer = await world.call("ann", "POST", "/api/v1/devices/th-ann/forget", body)
        assert status == 400 and answer["error"]["code"] in ("unconfirmed", "bad_request"), body
    assert world.r.store.device("th-ann") is not None
    status, answer = await world.call("ann", "GET", "/api/v1/devices/th-ann/export?format=xml")
    assert (status, answer["error"]["code"]) == (400, "bad_request")
    status, doc = await world.call("ann", "GET", "/api/v1/devices/th-ann/export")
    assert status == 200 and doc["device"] == "th-ann" and doc["since"] == 1.0  # its claim
    status, doc = await world.call("mia", "GET", "/api/v1/devices/th-bob/export")
    assert status == 200 and doc["since"] is None and doc["tables"]["devices"][0]["id"] == "th-bob"
    status, answer = await world.call("ann", "POST", "/api/v1/devices/th-ann/forget", {"confirm": "th-ann"})
    assert status == 200 and answer["device"] == "th-ann", answer
    status, me = await world.call("ann", "GET", "/api/v1/me")
    assert me["devices"] == []  # (it was forgotten with its owner)
    status, _ = await world.call("root", "POST", "/api/v1/devices/th-bob/forget", {"confirm": "th-bob"})
    assert status == 200
    world.r.store.upsert_hello("th-free", messages.hello("th-free"), 1.0)  # no owner: a maker's to forget
    status, _ = await world.call("mia", "POST", "/api/v1/devices/th-free/forget", {"confirm": "th-free"})
    assert status == 200
    status, answer = await world.call("mia", "GET", "/api/v1/devices/th-nobody/export")
    assert (status, answer["error"]["code"]) == (404, "unknown_device")


async def test_a_rollout_counts_a_forgotten_member_as_it_did_and_goes_on(
    start_gateway: StartGateway, keys: Keys, make_release: MakeRelease, ota_devices: MakeDevice
) -> None:
    clock = StepClock(1_900_000_000.0)
    r = await start_gateway(keys, clock=clock)
    releases(r, make_release)
    took, failed, busy = [await online(r, ota_devices()) for _ in range(3)]
    away = ota_devices()
    r.store.upsert_hello(away.id, messages.hello(away.id), clock.t)  # known, offline
    ids = ", ".join(d.id for d in (took, failed, busy, away))
    roll = r.gw.rollouts.create("thermostat@2", f"id in ({ids})", stages=(1.0,), no_revert=True, seed=1)
    uids = {}
    for d, state in ((took, "committed"), (failed, "failed"), (busy, None)):
        uid = uids[d.id] = await async_wait_for(lambda d=d: recorded(r, roll.id, d), 10, what="offered")
        await offer_of(d, uid)
        if state is not None:
            d.status(uid, state, **({"counter": 2} if state == "committed" else {"reason": "verify: x"}))
            await ends(r, uid, state)

    def counts() -> dict[str, int]:
        return {k: n for k, n in r.gw.rollouts.status(roll)["stages"][0]["counts"].items() if n}

    before = counts()
    assert before == {"committed": 1, "failed": 1, "offered": 1, "offline": 1}
    for d in (took, failed, busy):
        await r.gw.forget(d.id)
    assert [m.device for m in r.gw.rollouts.table.members(roll.id)] == [away.id]
    assert counts() == before  # (busy as it was: its update ended as it was forgotten)
    assert r.gw.ota.active(busy.id) is None and r.gw.ota.of_device(busy.id) == []
    await offer_of(busy, uids[busy.id], op="cancel")  # (and the device told so)
    # the stage's first look: the hard-failure rule counts their updates as it did
    clock.t += roll.soak_s / 3
    await r.gw.rollouts.tick()
    [look] = r.gw.rollouts.table.decisions(roll.id, kind="look")
    assert (look["numbers"]["hard"]["offered"], look["numbers"]["hard"]["failed"]) == (3, 1)
    assert counts() == before and r.gw.rollouts.table.get(roll.id) is not None


async def test_the_command_line_exports_and_forgets_only_when_told_to(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    r = await start_gateway()
    _fill(r.store, A, 1000.0)

    async def cli(*words: str, stdin: str = "") -> Any:
        return await asyncio.to_thread(permabeta, r.store.where, *words, stdin=stdin)

    out = tmp_path / "a.zip"
    done = await cli("devices", "export", A, "--format", "csv", "--out", str(out))
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(out) as zf:
        assert "telemetry.csv" in zf.namelist()
    done = await cli("devices", "export", A)
    assert done.returncode == 0 and json.loads(done.stdout)["device"] == A
    done = await cli("devices", "forget", A)  # (no terminal to ask on)
    assert done.returncode == 1 and "--yes" in done.stderr and r.store.device(A) is not None
    done = await cli("devices", "forget", A, "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{A} forgotten: ") and "retained messages cleared" in done.stdout
    assert r.store.device(A) is None and stored(r.store, A)  # (its claim code and the mark stay)
