"""The gateway's side of the owners' data choices (docs/protocol.md 12):
a device that sends what its hello says it withholds does not get it
stored, and the streams a device is shown with come from its board and
its features' manifests."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.broker import BrokerUrl
from gateway.provision import board_for, initial_streams
from gateway.retention import DAY_S, Periods, kept
from gateway.service import Gateway
from gateway.store import Store, TelemetryRow
from gateway.streams import TWIN_GIVES, TWIN_NEEDS, ChoiceError, catalogue, check_choices, costs

from ..conftest import DbAt
from ..support import messages
from ..support.cli import permabeta
from .conftest import StartGateway
from .test_api_access import World, world  # noqa: F401 (the fixture)
from .test_ingest import hello
from .test_openapi import _check

SHIPPED = Path(__file__).resolve().parents[2] / "firmware" / "features"


def _telemetry(dev: str, seq: int) -> bytes:
    msg = {
        "v": 1,
        "dev": dev,
        "seq": seq,
        "ts": 1000.0 + seq,
        "sensors": {"temperature": 20.5, "humidity": 41.0},
        "actuators": {"relay": True},
        "features": {"thermostat": {"setpoint": 21.0, "heating": True}},
    }
    return json.dumps(msg).encode()


def test_what_a_device_says_it_withholds_is_not_stored_even_if_sent(db_at: DbAt) -> None:
    with Store(db_at()) as store:
        gw = Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)
        withheld = {
            "sensors.humidity": "local",
            "features.thermostat.setpoint": "off",
            "actuators.relay": "local",
        }
        gw.handle("pb/th-1/hello", hello("th-1", streams=withheld), True)
        gw.handle("pb/th-1/telemetry", _telemetry("th-1", 1), False)
        gw.flush()
        (row,) = store.telemetry("th-1", 10)
        assert row.data["sensors"] == {"temperature": 20.5}
        assert row.data["actuators"] == {}
        assert row.data["features"] == {"thermostat": {"heating": True}}
        # shared again (a new hello says so): stored again
        gw.handle("pb/th-1/hello", hello("th-1", streams={}), True)
        gw.handle("pb/th-1/telemetry", _telemetry("th-1", 2), False)
        gw.flush()
        assert store.telemetry("th-1", 10)[-1].data["sensors"] == {"temperature": 20.5, "humidity": 41.0}


def test_a_hello_whose_choices_are_not_choices_is_rejected(db_at: DbAt) -> None:
    with Store(db_at()) as store:
        gw = Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)
        for bad in ({"sensors.humidity": "share"}, {"sensors.humidity": 1}, ["sensors.humidity"]):
            gw.handle("pb/th-2/hello", hello("th-2", streams=bad), True)
        assert store.device("th-2") is None and sum(gw.rejects.values()) == 3


def test_every_shipped_stream_is_described_and_provisioned_with_its_default() -> None:
    for model in ("thermostat", "shirt"):
        board = board_for(model)
        manifests = {n: json.loads((SHIPPED / n / "manifest.json").read_text()) for n in board["features"]}
        streams = catalogue(board, manifests)
        assert all(s.doc != "Not described by its maker." for s in streams), model
        provisioned = json.loads(initial_streams(board, board["features"]))["choices"]
        assert provisioned == {s.path: s.default for s in streams if not s.needed}
    shirt = json.loads(initial_streams(board_for("shirt"), ["vent"]))["choices"]
    assert shirt["sensors.skin_temperature"] == "local" and shirt["sensors.humidity"] == "share"


def test_choices_are_checked_as_the_device_checks_them() -> None:
    streams = catalogue(board_for("thermostat"), {})
    assert check_choices(streams, {"sensors.humidity": "off"}) == {"sensors.humidity": "off"}
    for asked in (
        {"actuators.relay": "off"},
        {"hello": "local"},
        {"sensors.x": "local"},
        {},
        {"sensors.humidity": 1},
    ):
        try:
            check_choices(streams, asked)
        except ChoiceError:
            continue
        raise AssertionError(f"{asked} was taken")


# ---- how long the gateway keeps what a device shares: the device's period, a stream's own -------

NOW = 1_800_000_000.0
ROW = {
    "v": 1,
    "sensors": {"temperature": 20.5, "humidity": 41.0},
    "actuators": {"relay": True},
    "features": {"thermostat": {"setpoint": 21.0, "heating": True}},
}


def _rows(store: Store, dev: str, ages_days: list[float]) -> None:
    rows = [
        TelemetryRow(dev, NOW - a * DAY_S, NOW - a * DAY_S, i, dict(ROW)) for i, a in enumerate(ages_days)
    ]
    store.add_telemetry(rows)


def _by_age(store: Store, dev: str) -> dict[float, dict[str, Any]]:
    return {round((NOW - r.received) / DAY_S, 3): r.data for r in store.telemetry(dev, 1000)}


def test_a_stream_s_own_period_takes_only_its_values_from_the_rows_and_a_row_goes_with_its_last_value(
    db_at: DbAt,
) -> None:
    with Store(db_at()) as store:
        for dev in ("th-1", "th-2"):
            store.upsert_hello(dev, messages.hello(dev), NOW)
            _rows(store, dev, [1, 5, 40, 400])
        # th-1: a month; the room's humidity two days; the setpoint a year
        store.set_retention("th-1", 30, NOW)
        store.set_stream_retention("th-1", {"sensors.humidity": 2, "features.thermostat.setpoint": 365}, NOW)
        assert store.expire_shared(NOW) == 3  # (the row of 400 days gone, those of 5 and 40 changed)
        rows = _by_age(store, "th-1")
        assert rows[1] == ROW
        assert rows[5] == ROW | {"sensors": {"temperature": 20.5}}
        assert rows[40] == ROW | {
            "sensors": {},
            "actuators": {},
            "features": {"thermostat": {"setpoint": 21.0}},
        }
        assert 400 not in rows
        assert _by_age(store, "th-2") == dict.fromkeys([1, 5, 40, 400], ROW)  # (no period: nothing goes)
        assert store.expire_shared(NOW) == 0  # done is done
        # kept with no limit: the room's temperature, whatever the device's month
        _rows(store, "th-1", [500])
        store.set_stream_retention("th-1", {"sensors.temperature": "forever"}, NOW)
        assert store.expire_shared(NOW) == 1
        rows = _by_age(store, "th-1")
        assert rows[500] == ROW | {"sensors": {"temperature": 20.5}, "actuators": {}, "features": {}}
        assert rows[40]["sensors"] == {}  # (what went does not come back)
        # back to the device's period, the streams' own forgotten: whole rows go at a month
        store.set_stream_retention(
            "th-1",
            dict.fromkeys(["sensors.humidity", "sensors.temperature", "features.thermostat.setpoint"]),
            NOW,
        )
        assert store.periods("th-1") == Periods(30.0, {})
        store.expire_shared(NOW)
        assert sorted(_by_age(store, "th-1")) == [1, 5]


def test_a_row_loses_a_value_when_it_comes_of_age_between_passes_and_passes_read_only_those(
    db_at: DbAt,
) -> None:
    with Store(db_at()) as store:
        store.upsert_hello("th-1", messages.hello("th-1"), NOW)
        _rows(store, "th-1", [1, 1.4])
        store.set_retention("th-1", 30, NOW)
        store.set_stream_retention("th-1", {"sensors.humidity": 2, "actuators.relay": "forever"}, NOW)
        assert store.expire_shared(NOW) == 0
        assert store.expire_shared(NOW + 0.7 * DAY_S) == 1  # (the row of 1.4 days is 2.1 days old)
        assert store.expire_shared(NOW + 0.8 * DAY_S) == 0
        assert store.expire_shared(NOW + 1.1 * DAY_S) == 1
        assert all("humidity" not in r.data["sensors"] for r in store.telemetry("th-1", 10))
    with Store(db_at()) as store:  # (the gateway started again: a whole pass first)
        assert store.expire_shared(NOW + 40 * DAY_S) == 2
        left = store.telemetry("th-1", 10)
        assert [r.data["actuators"] for r in left] == [{"relay": True}] * 2
        assert all(r.data["sensors"] == {} and r.data["features"] == {} for r in left)


ages = st.floats(min_value=0, max_value=1000, allow_nan=False)
periods = st.one_of(st.none(), st.floats(min_value=0.01, max_value=800))


@settings(max_examples=200, deadline=None)
@given(
    age=ages,
    device=periods,
    own=st.dictionaries(
        st.sampled_from(
            ["sensors.temperature", "sensors.humidity", "actuators.relay", "features.thermostat.setpoint"]
        ),
        periods,
    ),
)
def test_a_row_keeps_every_value_younger_than_its_stream_s_period_and_none_older(
    age: float, device: float | None, own: dict[str, float | None]
) -> None:
    p = Periods(device, own)
    left = kept(ROW, age * DAY_S, p)
    paths = {
        "sensors.temperature", "sensors.humidity", "actuators.relay",
        "features.thermostat.setpoint", "features.thermostat.heating",
    }  # fmt: skip
    young = {path for path in paths if p.of(path) is None or age <= p.of(path)}  # type: ignore[operator]
    assert (left is None) == (not young)
    if left is not None:
        assert carried(left) == young
        assert left["v"] == 1
        whole = p.whole_row_days
        assert whole is None or age <= whole


def carried(msg: dict[str, Any]) -> set[str]:
    out = {f"{g}.{k}" for g in ("sensors", "actuators") for k in msg.get(g, {})}
    return out | {f"features.{f}.{k}" for f, r in msg.get("features", {}).items() for k in r}


async def test_an_owner_sets_a_stream_s_own_period_and_sees_each_stream_s_period_and_what_is_stored(
    world: World,  # noqa: F811
) -> None:
    r = world.r
    _rows(r.store, "th-ann", [0.5, 3])
    path = "/api/v1/devices/th-ann/streams"
    status, answer = await world.call(
        "ann",
        "PUT",
        path,
        {"retention_days": 30, "retention": {"sensors.humidity": 2, "actuators.relay": "forever"}},
    )
    _check("PUT", "/api/v1/devices/{id}/streams", status, answer)
    assert status == 200, answer
    shown = {s["path"]: s for s in answer["streams"]}
    assert answer["retention_days"] == 30
    assert (shown["sensors.humidity"]["retention_days"], shown["sensors.humidity"]["retention_own"]) == (2, 2)
    assert (shown["actuators.relay"]["retention_days"], shown["actuators.relay"]["retention_own"]) == (
        None,
        "forever",
    )
    assert (
        shown["sensors.temperature"]["retention_days"],
        shown["sensors.temperature"]["retention_own"],
    ) == (
        30,
        None,
    )
    assert shown["hello"]["retention_days"] is None and shown["hello"]["retention_own"] is None
    assert shown["sensors.humidity"]["stored"] == 2
    assert shown["sensors.humidity"]["oldest"] == pytest.approx(NOW - 3 * DAY_S)
    # the job: the humidity of three days ago goes, the rest stays
    r.store.expire_shared(NOW)
    status, answer = await world.call("ann", "GET", path)
    _check("GET", "/api/v1/devices/{id}/streams", status, answer)
    shown = {s["path"]: s for s in answer["streams"]}
    assert (shown["sensors.humidity"]["stored"], shown["sensors.temperature"]["stored"]) == (1, 2)
    # back to the device's period
    status, answer = await world.call("ann", "PUT", path, {"retention": {"sensors.humidity": None}})
    assert (
        status == 200
        and {s["path"]: s for s in answer["streams"]}["sensors.humidity"]["retention_own"] is None
    )
    # the export says the periods
    status, export = await world.call("ann", "GET", "/api/v1/devices/th-ann/export")
    assert status == 200 and export["retention"] == {"days": 30.0, "streams": {"actuators.relay": "forever"}}
    _check("GET", "/api/v1/devices/{id}/export", status, export)


async def test_an_owner_is_shown_nothing_stored_from_before_its_claim(world: World) -> None:  # noqa: F811
    """What the gateway holds of each stream, as the owner's page shows it, counts
    only what came since its claim (docs/protocol.md 10.1: a previous owner's
    data is not the new owner's to see); a maker sees all of it."""
    r = world.r
    _rows(r.store, "th-ann", [0.5, 3])
    r.store.db.execute("UPDATE device_owners SET since = ? WHERE device = 'th-ann'", (NOW - DAY_S,))
    path = "/api/v1/devices/th-ann/streams"
    for method, body in (("GET", None), ("PUT", {"retention_days": 30})):
        status, answer = await world.call("ann", method, path, body)
        assert status == 200, answer
        shown = {s["path"]: s for s in answer["streams"]}
        assert shown["sensors.humidity"]["stored"] == 1
        assert shown["sensors.humidity"]["oldest"] == pytest.approx(NOW - 0.5 * DAY_S)
    status, answer = await world.call("gateway", "GET", path)
    assert status == 200 and {s["path"]: s for s in answer["streams"]}["sensors.humidity"]["stored"] == 2


async def test_periods_that_cannot_be_and_callers_who_may_not_change_nothing(world: World) -> None:  # noqa: F811
    r = world.r
    path = "/api/v1/devices/th-ann/streams"
    await world.call("ann", "PUT", path, {"retention_days": 30, "retention": {"sensors.humidity": 2}})

    def state() -> Any:
        return [list(map(tuple, r.store.db.execute(f"SELECT * FROM {t} ORDER BY 1, 2"))) for t in
                ("data_retention", "stream_retention")]  # fmt: skip

    before = state()
    BAD = (422, "bad_retention")
    for who, body, want in (
        ("ann", {"retention": {"sensors.humidity": 0}}, (422, "bad_retention")),
        ("ann", {"retention": {"sensors.humidity": -3}}, (422, "bad_retention")),
        ("ann", {"retention": {"sensors.humidity": 1e300}}, (422, "bad_retention")),
        ("ann", {"retention": {"sensors.humidity": 36501}}, (422, "bad_retention")),
        ("ann", {"retention": {"sensors.humidity": True}}, (422, "bad_retention")),
        ("ann", {"retention": {"sensors.humidity": "30"}}, (422, "bad_retention")),
        ("ann", {"retention": {"sensors.humidity": "Infinity"}}, (422, "bad_retention")),
        ("ann", {"retention": {"sensors.humidity": [2]}}, (422, "bad_retention")),
        ("ann", {"retention": {"sensors.pressure": 2}}, (422, "bad_retention")),
        ("ann", {"retention": {"hello": 2}}, (422, "bad_retention")),
        ("ann", {"retention": {}}, (422, "bad_retention")),
        ("ann", {"retention": ["sensors.humidity"]}, (422, "bad_retention")),
        ("ann", {"retention_days": False}, (422, "bad_retention")),
        ("ann", {"retention_days": -1}, (422, "bad_retention")),
        ("ann", {"retention_days": 10**400}, (422, "bad_retention")),  # (was 500: no float holds it)
        ("ann", {"retention": {"sensors.humidity": -(10**400)}}, (422, "bad_retention")),
        # (a good period with a bad one: neither is taken)
        ("ann", {"retention_days": 7, "retention": {"sensors.temperature": 1, "sensors.x": 1}}, BAD),
        # (nor choices sent to the device with a bad period)
        ("ann", {"streams": {"sensors.humidity": "local"}, "retention": {"sensors.humidity": -1}}, BAD),
        ("ann", {"retention_days": 7, "keep": 1}, (400, "bad_request")),
        ("bob", {"retention": {"sensors.humidity": 9}}, (404, "unknown_device")),
        ("mia", {"retention": {"sensors.humidity": 9}}, (403, "forbidden")),
        ("mia", {"retention_days": 9}, (403, "forbidden")),
    ):  # fmt: skip
        status, answer = await world.call(who, "PUT", path, body)
        assert (status, answer["error"]["code"]) == want, (who, body, answer)
        assert state() == before, (who, body)
    # NaN is not JSON: the body is refused as such
    async with world.session.put(
        r.url + path,
        data='{"retention": {"sensors.humidity": NaN}}',
        headers={"Authorization": f"Bearer {world.tokens['ann']}", "Content-Type": "application/json"},
    ) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, "bad_request")
    assert state() == before
    # the periods are the owner's say: they go when the owner gives the device up
    status, _ = await world.call("ann", "DELETE", "/api/v1/devices/th-ann/owner")
    assert status == 200 and r.store.periods("th-ann") == Periods()


async def test_the_command_line_sets_a_stream_s_own_period_and_shows_each_stream_s(
    start_gateway: StartGateway,
) -> None:
    r = await start_gateway()
    r.store.upsert_hello("th-1", messages.hello("th-1"), NOW)
    _rows(r.store, "th-1", [1])

    async def cli(*words: str) -> Any:
        return await asyncio.to_thread(permabeta, r.store.where, "devices", "streams", "th-1", *words)

    done = await cli("--retention-days", "30", "--retention", "sensors.humidity=2",
                     "--retention", "actuators.relay=forever")  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = {ln.split()[0]: ln for ln in done.stdout.splitlines()[1:] if ln.startswith("  ") and ln.split()}
    assert "2 d (own)" in line["sensors.humidity"] and "30 d " in line["sensors.temperature"]
    assert "forever (own)" in line["actuators.relay"]
    assert r.store.periods("th-1") == Periods(30.0, {"sensors.humidity": 2.0, "actuators.relay": None})
    done = await cli("--retention", "sensors.humidity=device", "--json")
    assert done.returncode == 0, done.stderr
    shown = {s["path"]: s for s in json.loads(done.stdout)["streams"]}
    assert shown["sensors.humidity"]["retention_own"] is None and shown["sensors.humidity"]["stored"] == 1
    done = await cli("--retention", "sensors.humidity=soon")
    assert done.returncode != 0 and "a number of days, forever or device" in done.stderr
    done = await cli("--retention", "sensors.humidity=-2")
    assert done.returncode != 0 and "must be a number of days in (0, 36500], not -2" in done.stderr
    assert r.store.periods("th-1") == Periods(30.0, {"actuators.relay": None})


def test_keeping_back_a_stream_the_twin_needs_is_shown_to_cost_the_preview_and_no_other_stream_is() -> None:
    for model, needs in TWIN_NEEDS.items():
        streams = [s for s in catalogue(board_for(model), {}) if not s.needed]
        for s in streams:
            c = costs(s, model, {}, {})
            named = [x for x in c["local"] + c["off"] if "twin preview" in x]
            if s.path in needs:
                assert any("no twin preview of updates" in x for x in c["local"]), s.path
                assert s.kind == "actuator" or any("twin preview" in x for x in c["off"]), s.path
                assert s.path in TWIN_GIVES
            else:
                assert named == [], s.path


def test_a_device_s_nul_in_its_telemetry_stops_no_retention_pass_of_another(db_at: DbAt) -> None:
    """JSON's \\u0000 in one device's rows (PostgreSQL's JSON functions refuse
    it: the store keeps it there as U+FFFD): its own streams are counted and
    expired, and the other devices' rows after it are expired too."""
    with Store(db_at()) as store:
        for dev in ("th-0", "th-1"):
            store.upsert_hello(dev, messages.hello(dev), NOW)
        odd = ROW | {"features": {"thermostat": {"setpoint": 21.0, "note": "a\x00b"}}}
        store.add_telemetry([TelemetryRow("th-0", NOW - a * DAY_S, None, a, odd) for a in (1, 40)])
        _rows(store, "th-1", [1, 40])
        for dev in ("th-0", "th-1"):
            store.set_retention(dev, 30, NOW)
            store.set_stream_retention(dev, {"sensors.humidity": 2}, NOW)
        assert store.stream_counts("th-0", ["features.thermostat.note", "sensors.humidity"]) == {
            "features.thermostat.note": (2, NOW - 40 * DAY_S),
            "sensors.humidity": (2, NOW - 40 * DAY_S),
        }
        assert store.expire_shared(NOW) == 2  # (each device: the row of 40 days gone, that of 1 kept)
        kept = store.telemetry("th-0")[0].data["features"]["thermostat"]["note"]
        assert kept == ("a\x00b" if store.db.kind == "sqlite" else "a\ufffdb")  # (as a text column keeps it)
        assert sorted(_by_age(store, "th-1")) == [1]
