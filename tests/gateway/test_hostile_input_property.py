"""Property: whatever a device sends, through the gateway's real ingest
(Gateway.handle) and the real SQLite store, no exception escapes, every
accepted message reads back from the database equal to what was sent, a
rejected one changes nothing, and another device's telemetry in the same
batch is stored all the same.

The messages are schema-valid in shape (tests/firmware/strategies.py) with
extreme values put in: integers of any size and sign, floats up to NaN and
the infinities (written as JSON's NaN/Infinity literals or as 1e400), long
strings, and odd Unicode: NUL, lone surrogates (escaped, and raw), line
separators, the BOM, the last code point."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from firmware.pb.peer import ota_transfer as otaproto
from firmware.pb.peer import protocol as proto
from gateway.broker import BrokerUrl
from gateway.ingest import unstorable
from gateway.service import Gateway
from gateway.store import Store
from gateway.updates import new_update

from ..firmware.corpus import canon
from ..firmware.strategies import messages
from ..support.messages import hello as hello_message

EXAMPLES = 800  # per test: four tests, 3200 cases, about 25 s
_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_EDGE_INTS = [
    0,
    1,
    -1,
    -2,
    65535,
    65536,
    2**31 - 1,
    2**32,
    proto.MAX_INT,
    proto.MAX_INT + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    10**300,
    -(10**300),
    10**1000,
]
extreme_ints = st.sampled_from(_EDGE_INTS) | st.integers(-(2**70), 2**70) | st.integers()
extreme_floats = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        1e300,
        -1e300,
        1e299,
        9007199254740992.0,
        -0.0,
        5e-324,
        1.7976931348623157e308,
    ]
) | st.floats(allow_nan=True, allow_infinity=True)
extreme_numbers = extreme_ints | extreme_floats

_ODD = ["\x00", "\ud800", "\udfff", "\ud83d\ude00", "\u2028", "\ufeff", "\U0010ffff", "\x1b[2J", "\n", "é"]
odd_text = (
    st.lists(st.characters(exclude_categories=[]) | st.sampled_from(_ODD), max_size=16).map("".join)
    | st.tuples(st.sampled_from([*_ODD, "x"]), st.integers(100, 1200)).map(lambda t: t[0] * t[1])
    | st.text(max_size=6)
)


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return _leaf | st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3)


# built once: hypothesis spends its time building strategies, not drawing from them
_leaf = st.none() | st.booleans() | extreme_numbers | odd_text
_json1 = _nested(_leaf)
_json2 = _nested(_json1)
_lists = st.lists(_json1, max_size=4)
_dicts = st.dictionaries(odd_text, _json2, max_size=4)


def _like(value: Any) -> st.SearchStrategy[Any]:
    """An extreme value of value's JSON type."""
    if isinstance(value, bool) or value is None:
        return st.just(value)
    if isinstance(value, float):
        return extreme_numbers
    if isinstance(value, int):
        return extreme_ints
    if isinstance(value, str):
        return odd_text
    return _lists if isinstance(value, list) else _dicts


@st.composite
def extreme(draw: st.DrawFn, msg: dict[str, Any], keep: tuple[str, ...] = ("v", "dev")) -> dict[str, Any]:
    """msg with some of its values (and nested values) made extreme, in
    their own JSON type; an extra field or two of any extreme value."""
    out = dict(msg)
    for name, value in msg.items():
        if name not in keep and draw(st.booleans()):
            out[name] = draw(_like(value))
    if out.get("features") and isinstance(out["features"], dict) and draw(st.booleans()):
        out["features"] = {k: draw(_json1) for k in out["features"]}  # entries of any shape
    for _ in range(draw(st.integers(0, 2))):
        out[draw(odd_text)] = draw(_json2)
    return out


@st.composite
def payloads(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    """msg as a device could write it: escaped or raw UTF-8 (a raw lone
    surrogate is not UTF-8), NaN and infinities as literals or as 1e400."""
    text = json.dumps(msg, ensure_ascii=draw(st.booleans()), allow_nan=True)
    if draw(st.booleans()):
        text = text.replace("-Infinity", "-1e400").replace("Infinity", "1e400")
    return text.encode("utf-8", "surrogatepass")


# ---- the gateway and its store ---------------------------------------------------------


class Bench:
    """One gateway (not connected: Gateway.handle is what the MQTT loop
    calls for each message) on one database, shared by every example of a
    module; each example uses devices of its own."""

    def __init__(self, db: Path) -> None:
        self.store = Store(db)
        self.gw = Gateway(BrokerUrl("127.0.0.1", 1), self.store, api=None)
        self._n = itertools.count()
        self.other = "other-dev"
        self.hello(self.other)

    def new_device(self) -> str:
        dev = f"dev-{next(self._n)}"
        self.hello(dev)
        return dev

    def hello(self, dev: str) -> None:
        msg = hello_message(dev)
        self.send(dev, "hello", json.dumps(msg).encode())
        assert self.store.device(dev) is not None

    def send(self, dev: str, kind: str, payload: bytes, retain: bool = False, note: bool = False) -> bool:
        """Handle one message; True if it was accepted. No exception may escape."""
        before = dict(self.gw.counters)
        rejects = dict(self.gw.rejects)
        self.gw.handle(proto.topic(dev, kind), payload, retain)
        after = self.gw.counters
        outcomes = sum(after[k] - before[k] for k in ("accepted", "rejected", "ignored"))
        assert outcomes == 1, f"one message, {outcomes} outcomes"
        accepted = after["accepted"] == before["accepted"] + 1
        reason = next((r for r, n in self.gw.rejects.items() if n != rejects.get(r, 0)), None)
        if note:  # in --hypothesis-show-statistics
            event(f"{kind}: " + ("accepted" if accepted else f"rejected ({reason})"))
        return accepted

    def other_telemetry(self, seq: int) -> dict[str, Any]:
        msg = {
            "v": 1,
            "dev": self.other,
            "seq": seq,
            "ts": 1767226020.5,
            "sensors": {"temperature": 21.0},
            "actuators": {"relay": False},
            "features": {},
        }
        assert self.send(self.other, "telemetry", json.dumps(msg).encode())
        return msg

    def flush_and_check_other(self, sent: list[dict[str, Any]]) -> None:
        """Flush, and check that the other device's rows of this batch are stored."""
        stored_before = self.gw.counters["stored"]
        self.gw.flush()
        rows = self.store.telemetry(self.other, len(sent))
        assert [r.seq for r in rows] == [m["seq"] for m in sent]
        assert self.gw.counters["stored"] >= stored_before + len(sent)
        assert self.gw.rejects.get("internal", 0) == 0


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    b = Bench(tmp_path_factory.mktemp("property") / "gw.db")
    yield b
    b.store.close()


_SEQ = itertools.count(1)  # the other device's telemetry, numbered across examples


def _numbers_in_bounds(kind: str, msg: dict[str, Any]) -> bool:
    for name, code, _ in proto._SCHEMAS[kind]:
        if code in ("i", "n") and name in msg:
            lo, hi = proto.bounds(name)
            v = msg[name]
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                return False
    return True


def _same(a: Any, b: Any) -> bool:
    return canon(a) == canon(b)


def _device_view(store: Store, dev: str) -> Any:
    d = store.device(dev)
    assert d is not None
    return canon(d.to_dict())


# ---- the properties -----------------------------------------------------------------


@pytest.mark.long
@_settings
@given(st.data())
def test_hostile_telemetry_is_stored_equal_or_rejected_and_loses_nothing(
    bench: Bench, data: st.DataObject
) -> None:
    dev = bench.new_device()
    msg = data.draw(extreme(data.draw(messages("telemetry", extras=False)) | {"dev": dev}))
    payload = data.draw(payloads(msg))
    first = bench.other_telemetry(next(_SEQ))
    before = bench.store.telemetry_count(dev)
    accepted = bench.send(dev, "telemetry", payload, note=True)
    second = bench.other_telemetry(next(_SEQ))
    bench.flush_and_check_other([first, second])  # one batch with the hostile row
    rows = bench.store.telemetry(dev, 5)
    if not accepted:
        assert len(rows) == before == 0
        return
    decoded = json.loads(payload)
    assert _numbers_in_bounds("telemetry", decoded) and unstorable(decoded) is None
    assert len(rows) == 1
    r = rows[0]
    assert r.seq == decoded["seq"] and type(r.seq) is int
    assert r.ts == decoded["ts"]
    assert _same(r.data, {k: v for k, v in decoded.items() if k not in ("v", "dev", "seq", "ts")})
    record = bench.store.device(dev)
    assert record is not None and _same(record.last_telemetry, r.data)


@pytest.mark.long
@_settings
@given(st.data())
def test_hostile_hello_is_stored_equal_or_rejected_and_the_fleet_still_lists(
    bench: Bench, data: st.DataObject
) -> None:
    dev = bench.new_device()
    msg = data.draw(extreme(data.draw(messages("hello", extras=False)) | {"dev": dev}))
    payload = data.draw(payloads(msg))
    before = _device_view(bench.store, dev)
    first = bench.other_telemetry(next(_SEQ))
    accepted = bench.send(dev, "hello", payload, retain=data.draw(st.booleans()), note=True)
    bench.flush_and_check_other([first])
    d = bench.store.device(dev)
    assert d is not None
    if not accepted:
        assert _device_view(bench.store, dev) == before
    else:
        decoded = json.loads(payload)
        assert _numbers_in_bounds("hello", decoded) and unstorable(decoded) is None
        assert _same(d.hello, decoded)
        assert _same(d.features, decoded["features"])
        for name in ("model", "board", "runtime", "reset_cause", "boot_count", "heap_free", "keepalive"):
            assert _same(getattr(d, name), decoded[name]), name
        assert d.telemetry_s == decoded["telemetry_s"]
        assert _same(d.platform, decoded.get("platform"))
    # what the API and `devices list` show of every device can be made and written as JSON
    json.dumps([d.summary(), d.to_dict()])


@_settings
@given(st.data())
def test_hostile_event_state_and_reply_are_stored_equal_or_rejected(
    bench: Bench, data: st.DataObject
) -> None:
    dev = bench.new_device()
    kind = data.draw(st.sampled_from(("event", "state", "reply")))
    msg = data.draw(
        extreme(data.draw(messages(kind, extras=False)) | {"dev": dev}, keep=("v", "dev", "state", "id"))
    )
    if kind == "reply":
        msg["id"] = dev  # unique: a command sent to it, so that its reply is recorded
        bench.store.add_command(msg["id"], dev, "ping", {}, 1.0)
    payload = data.draw(payloads(msg))
    before = (_device_view(bench.store, dev), bench.store.events(dev))
    first = bench.other_telemetry(next(_SEQ))
    accepted = bench.send(dev, kind, payload, retain=kind == "state", note=True)
    bench.flush_and_check_other([first])
    if not accepted:
        assert (_device_view(bench.store, dev), bench.store.events(dev)) == before
        return
    decoded = json.loads(payload)
    assert _numbers_in_bounds(kind, decoded) and unstorable(decoded) is None
    if kind == "event":
        (e,) = bench.store.events(dev)
        assert (e["kind"], e["feature"], e["message"]) == (
            decoded["kind"],
            decoded.get("feature"),
            decoded.get("message"),
        )
    elif kind == "state":
        d = bench.store.device(dev)
        assert d is not None and d.online == (decoded["state"] == "online")
        if decoded["state"] == "online":  # a change (a new device is offline): recorded with its reason
            assert d.state_reason == decoded.get("reason")
    else:
        cmd = bench.store.command(decoded["id"])
        assert cmd is not None and cmd["device"] == dev
        assert _same(json.loads(cmd["reply"]), decoded)


_STATUS = {
    "v": 1,
    "dev": "x",
    "id": "5f2a9c01b7e4",
    "state": "downloading",
    "counter": 2,
    "bytes": 1,
    "total": 2,
}
_STATUS_OPTIONAL = {"reason": "x", "ts": 1767226200.0}
_REQ = {"v": 1, "dev": "x", "id": "5f2a9c01b7e4", "obj": "manifest", "off": 0, "len": 2048, "seq": 1}


@_settings
@given(st.data())
def test_hostile_update_status_and_request_are_stored_equal_or_rejected(
    bench: Bench, data: st.DataObject
) -> None:
    dev = bench.new_device()
    kind = data.draw(st.sampled_from(("ota/status", "ota/req")))
    if kind == "ota/status":
        optional = {k: st.just(v) for k, v in _STATUS_OPTIONAL.items()}
        base = _STATUS | data.draw(st.fixed_dictionaries({}, optional=optional))
        base["state"] = data.draw(st.sampled_from(otaproto.STATES))
    else:
        base = dict(_REQ)
    msg = data.draw(extreme(base | {"dev": dev}, keep=("v", "dev", "state", "obj")))
    uid = msg["id"]
    # (an update's id is a string: hostile ids of other types are the message's, not a stored update's)
    known = isinstance(uid, str) and unstorable(uid) is None
    if known:
        # an update of this device, not the one in progress: a status records what the device says of it
        bench.gw.ota.table.save(new_update(uid, dev, "0" * 64, "thermostat", 2, "2026.11.2", 1, 1.0))
    payload = data.draw(payloads(msg))
    first = bench.other_telemetry(next(_SEQ))
    accepted = bench.send(dev, kind, payload, retain=data.draw(st.booleans()), note=True)
    bench.flush_and_check_other([first])
    if not accepted:
        return
    decoded = json.loads(payload)
    assert unstorable(decoded) is None
    # the integer fields of its kind (an unknown field is kept as it is)
    for k in ("off", "len", "seq") if kind == "ota/req" else ("bytes", "total", "counter"):
        if k in decoded:
            assert 0 <= decoded[k] <= proto.MAX_INT
    if kind == "ota/status" and known:
        u = bench.gw.ota.table.get(uid)
        assert u is not None and u.device_state == decoded["state"]
