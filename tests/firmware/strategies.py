"""Hypothesis strategies for the firmware's wire formats: every MQTT packet
tuple that firmware.pb.net.mqtt encodes, every message kind of firmware.pb.peer.protocol
(built from its schemas), and broken variants of both."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from firmware.pb.net import mqtt
from firmware.pb.peer import protocol as proto

# ---- MQTT -------------------------------------------------------------------

# MQTT strings are well-formed UTF-8 without NUL (MQTT-1.5.3); codec="utf-8"
# leaves out the surrogates, which have no UTF-8 form.
_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
_NAME_CHARS = st.characters(codec="utf-8", exclude_characters="\x00+#/")

mqtt_strings = st.text(_CHARS, max_size=12)
pids = st.integers(1, mqtt.MAX_PID)
qos01 = st.sampled_from((0, 1))

_levels = st.text(_NAME_CHARS, max_size=6)
topic_names = st.lists(_levels, min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def _structured_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(_levels, st.just("+")), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "#"


# The codec checks only that a filter is non-empty and has no NUL, so any
# such string is a filter it must carry, besides well-placed wildcards.
topic_filters = st.one_of(_structured_filters(), st.text(_CHARS, min_size=1, max_size=12))
payloads = st.binary(max_size=64)


@st.composite
def connect_packets(draw: st.DrawFn) -> tuple[Any, ...]:
    will = draw(st.none() | st.tuples(topic_names, payloads, qos01, st.booleans()))
    user = draw(st.none() | mqtt_strings)
    password = None if user is None else draw(st.none() | payloads)
    client_id = draw(mqtt_strings)
    return (mqtt.CONNECT, client_id, draw(st.booleans()), draw(st.integers(0, 65535)), will, user, password)


@st.composite
def publish_packets(draw: st.DrawFn, payload: st.SearchStrategy[bytes] = payloads) -> tuple[Any, ...]:
    topic = draw(topic_names)
    body = draw(payload)
    retain = draw(st.booleans())
    if draw(st.booleans()):
        return (mqtt.PUBLISH, topic, body, 1, retain, draw(st.booleans()), draw(pids))
    return (mqtt.PUBLISH, topic, body, 0, retain, False, 0)  # no DUP and no packet id at QoS 0


connacks = st.tuples(st.just(mqtt.CONNACK), st.booleans(), st.integers(0, 5))
pubacks = st.tuples(st.just(mqtt.PUBACK), pids)
subscribes = st.tuples(
    st.just(mqtt.SUBSCRIBE), pids, st.lists(st.tuples(topic_filters, qos01), min_size=1, max_size=4)
)
subacks = st.tuples(
    st.just(mqtt.SUBACK), pids, st.lists(st.sampled_from((0, 1, 2, 0x80)), min_size=1, max_size=5)
)
unsubscribes = st.tuples(st.just(mqtt.UNSUBSCRIBE), pids, st.lists(topic_filters, min_size=1, max_size=4))
unsubacks = st.tuples(st.just(mqtt.UNSUBACK), pids)
bare = st.sampled_from(((mqtt.PINGREQ,), (mqtt.PINGRESP,), (mqtt.DISCONNECT,)))

packets = st.one_of(
    connect_packets(),
    connacks,
    publish_packets(),
    pubacks,
    subscribes,
    subacks,
    unsubscribes,
    unsubacks,
    bare,
)


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """data cut at arbitrary points (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """data with a few bytes replaced, flipped, inserted or deleted, or cut short."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(("set", "flip", "insert", "delete", "truncate")))
        i = draw(st.integers(0, max(len(b) - 1, 0)))
        if how == "insert" or not b:
            b.insert(i, draw(st.integers(0, 255)))
        elif how == "set":
            b[i] = draw(st.integers(0, 255))
        elif how == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "delete":
            del b[i]
        else:
            del b[i:]
    return bytes(b)


# Bytes drawn by their role in UTF-8, so overlong forms, surrogates, values
# past U+10FFFF and truncated sequences come up often, not once in a while.
_UTF8_BYTE_CLASSES = (
    (0x20, 0x7E),
    (0x80, 0xBF),
    (0xC0, 0xC1),
    (0xC2, 0xDF),
    (0xE0, 0xE0),
    (0xE1, 0xEC),
    (0xED, 0xED),
    (0xEE, 0xEF),
    (0xF0, 0xF0),
    (0xF1, 0xF3),
    (0xF4, 0xF4),
    (0xF5, 0xFF),
)
utf8ish = st.lists(
    st.sampled_from(_UTF8_BYTE_CLASSES).flatmap(lambda r: st.integers(r[0], r[1])), max_size=10
).map(bytes) | st.text(_CHARS, max_size=6).map(lambda s: s.encode("utf-8"))


def raw_publish(topic: bytes, payload: bytes = b"", first: int = 0x30) -> bytes:
    """A PUBLISH built by hand, for topics the encoder refuses to write."""
    body = len(topic).to_bytes(2, "big") + topic + payload
    return bytes((first,)) + mqtt.encode_length(len(body)) + body


# ---- protocol messages ------------------------------------------------------

KINDS = tuple(proto._SCHEMAS)  # the schemas are the spec; tests read them
SCHEMAS: dict[str, tuple[tuple[str, str, int], ...]] = proto._SCHEMAS

ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)


def json_values(depth: int = 2) -> st.SearchStrategy[Any]:
    """Finite JSON values nested at most `depth` containers deep."""
    if depth == 0:
        return json_scalars
    inner = json_values(depth - 1)
    return st.one_of(
        json_scalars,
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
    )


valid_ids = st.from_regex(ID_RE, fullmatch=True)
invalid_ids = st.text(max_size=40).filter(lambda s: not ID_RE.fullmatch(s)) | st.sampled_from(
    ["", "-a", "_a", "Abc", "a/b", "a+b", "a#", "a b", "x" * 33, "dév"]
)
numbers = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(min_value=-1e300, max_value=1e300, exclude_min=True, exclude_max=True),
)

_BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "s": st.text(max_size=10),
    "i": st.integers(),
    "n": numbers,
    "b": st.booleans(),
    "d": st.dictionaries(st.text(max_size=6), json_values(2), max_size=3),
    "l": st.lists(json_values(2), max_size=3),
    "a": json_values(2),
}
_BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "v": st.just(proto.VERSION),
    "dev": valid_ids,
    "id": st.text(min_size=1, max_size=proto.MAX_ID),
    "state": st.sampled_from(proto.STATES),
    "op": st.sampled_from(proto.OPS) | st.text(max_size=10),
}

_shallow = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=2),
    st.dictionaries(st.text(max_size=4), json_scalars, max_size=2),
)
_ints = st.integers()
_floats = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)
_texts = st.text(max_size=6)
_lists = st.lists(json_scalars, max_size=2)
_dicts = st.dictionaries(st.text(max_size=4), json_scalars, max_size=2)
# Finite JSON values a field of each type must refuse. Booleans are listed
# on purpose for "i" and "n": on CPython a bool is an int.
WRONG_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "s": st.one_of(st.none(), st.booleans(), _ints, _floats, _lists, _dicts),
    "i": st.one_of(st.none(), st.booleans(), _floats, st.just(1.0), _texts, _lists, _dicts),
    "n": st.one_of(st.none(), st.booleans(), _texts, st.just("1"), _lists, _dicts),
    "b": st.one_of(st.none(), st.sampled_from((0, 1)), _ints, _floats, _texts, _lists, _dicts),
    "d": st.one_of(st.none(), st.booleans(), _ints, _floats, _texts, _lists),
    "l": st.one_of(st.none(), st.booleans(), _ints, _floats, _texts, _dicts),
}


def in_bounds(name: str, code: str) -> st.SearchStrategy[Any]:
    """Values of an integer or number field within proto's bounds for it
    (the bounds themselves come up often); a hello's protocol level is
    one the gateway serves or above."""
    lo, hi = proto.bounds(name)
    if name == "proto":
        lo = proto.PROTOCOLS[0]
    ints = st.integers(lo, hi)
    if code == "i":
        return ints
    return ints | st.floats(min_value=lo, max_value=hi)


def out_of_bounds(name: str, code: str) -> st.SearchStrategy[Any]:
    """Values of the field's type (huge integers too) outside its bounds."""
    lo, hi = proto.bounds(name)
    ints = st.integers(hi + 1, 2**80) | st.integers(-(2**80), lo - 1)
    if code == "i":
        return ints
    return (
        ints
        | st.floats(min_value=hi, max_value=1e299, exclude_min=True)
        | st.floats(-1e299, lo, exclude_max=True)
    )


def names(kind: str) -> list[str]:
    return [name for name, _code, _required in SCHEMAS[kind]]


# Names reserved in every kind, declared there or not (docs/protocol.md 3.0).
RESERVED = ("dev", "id")


@st.composite
def extra_fields(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """Fields the kind's schema does not name; they must be kept as they are.
    Names other kinds use ("state" on a hello, "dev" on a cmd) come up often;
    a reserved name gets a value valid for it."""
    known = set(names(kind)) | set(RESERVED)
    others = sorted({n for k in KINDS for n in names(k)} - known)
    key = st.sampled_from(others) | st.text(max_size=8).filter(lambda s: s not in known)
    extra = draw(st.dictionaries(key, json_values(2), max_size=3))
    for name in RESERVED:
        if name not in names(kind) and draw(st.booleans()):
            extra[name] = draw(_BY_NAME[name])
    return extra


@st.composite
def messages(draw: st.DrawFn, kind: str, extras: bool = True) -> dict[str, Any]:
    """A valid message of `kind`: every required field, some optional ones,
    and (with extras) unknown fields."""
    msg = draw(extra_fields(kind)) if extras else {}
    for name, code, required in SCHEMAS[kind]:
        if required or draw(st.booleans()):
            if name in _BY_NAME:
                msg[name] = draw(_BY_NAME[name])
            elif code in ("i", "n"):
                msg[name] = draw(in_bounds(name, code))
            else:
                msg[name] = draw(_BY_TYPE[code])
    if kind == "hello":
        msg["features"] = draw(st.dictionaries(st.text(max_size=8), features_entries, max_size=3))
        msg["caps"] = draw(st.lists(st.text(max_size=8), max_size=4))
        if "addons" in msg:
            msg["addons"] = draw(st.lists(st.text(max_size=8), max_size=2))
        if "streams" in msg:
            msg["streams"] = draw(
                st.dictionaries(st.text(max_size=12), st.sampled_from(("local", "off")), max_size=3)
            )
    return msg


# A hello's feature entry: the fields the runtime sends, and others kept as they are.
features_entries = st.fixed_dictionaries(
    {},
    optional={
        "version": st.text(max_size=8),
        "enabled": st.booleans(),
        "running": st.booleans(),
        "error": st.text(max_size=12),
        "waiting": st.lists(st.text(max_size=8), max_size=2),
        "extra": json_values(1),
    },
)


kinds = st.sampled_from(KINDS)
any_message = kinds.flatmap(lambda k: st.tuples(st.just(k), messages(k)))


@st.composite
def invalid_messages(draw: st.DrawFn) -> tuple[str, Any, str]:
    """(kind, message, the error code validate must raise) for a message
    that breaks exactly one rule."""
    kind = draw(kinds)
    msg = draw(messages(kind))
    fields = SCHEMAS[kind]
    rule = draw(st.sampled_from(("type", "missing", "version", "dev", "id", "state", "range", "not_object")))
    if rule == "type":
        name, code, _ = draw(st.sampled_from([f for f in fields if f[1] != "a"]))
        msg[name] = draw(WRONG_TYPE[code])
        return kind, msg, "missing_field" if name == "v" and msg[name] is None else "bad_type"
    if rule == "missing":
        name = draw(st.sampled_from([f[0] for f in fields if f[2]]))
        del msg[name]
        return kind, msg, "missing_field"
    if rule == "version":
        msg["v"] = draw(st.integers().filter(lambda v: v != proto.VERSION))
        return kind, msg, "unsupported_version"
    # dev and id are checked in every kind; where the schema declares them,
    # a value that is not a string fails the type check first
    declared = names(kind)
    if rule == "dev":
        not_an_id = _shallow.filter(lambda v: not (isinstance(v, str) and ID_RE.fullmatch(v)))
        msg["dev"] = draw(invalid_ids if "dev" in declared else invalid_ids | not_an_id)
        return kind, msg, "bad_device_id"
    if rule == "id":
        long_ids = st.text(min_size=proto.MAX_ID + 1, max_size=proto.MAX_ID + 8)
        bad = st.just("") | long_ids
        msg["id"] = draw(bad if "id" in declared else bad | _shallow.filter(lambda v: not isinstance(v, str)))
        return kind, msg, "bad_value"
    numeric = [f for f in fields if f[1] in ("i", "n") and f[0] != "v"]
    if rule == "range" and numeric:
        name, code, _ = draw(st.sampled_from(numeric))
        msg[name] = draw(out_of_bounds(name, code))
        return kind, msg, "bad_value"
    if rule == "state" and kind == "state":
        msg["state"] = draw(st.text(max_size=10).filter(lambda s: s not in proto.STATES))
        return kind, msg, "bad_value"
    return kind, draw(_shallow.filter(lambda v: not isinstance(v, dict))), "not_object"


def to_json(msg: Any) -> bytes:
    """JSON as the firmware and gateway write it: compact, raw UTF-8."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# Payloads that exercise the JSON layer itself, each with the code decode
# must give for it (as a "cmd").
JSON_EDGE_CASES: list[tuple[bytes, str]] = [
    (b"", "bad_json"),
    (b"{", "bad_json"),
    (b"\xff", "bad_json"),
    (b'{"v":1,"id":"\xc0\xaf","op":"x"}', "bad_json"),  # overlong "/"
    (b'{"v":1,"id":"\xed\xa0\x80","op":"x"}', "bad_json"),  # a surrogate, UTF-8 encoded
    (b'{"v":1,"id":"\xf4\x90\x80\x80","op":"x"}', "bad_json"),  # past U+10FFFF
    (b'{"v":1,"id":"a","op":"x","args":{"t":NaN}}', "bad_json"),
    (b'{"v":1,"id":"a","op":"x","args":{"t":Infinity}}', "bad_json"),
    (b'{"v":1,"id":"a","op":"x","args":{"t":-Infinity}}', "bad_json"),
    (b'{"v":1,"id":"a","op":"x","args":{"t":1e400}}', "bad_value"),
    (b'{"v":1,"id":"a","op":"x","args":{"t":[-1e999]}}', "bad_value"),
    (b'{"v":1,"id":"a","op":"x","args":[1e400]}', "bad_type"),  # args is an object
    (b'{"v":1,"id":"a","op":"x","extra":1e400}', "bad_value"),
    (b"1e400", "not_object"),
    (b"[" * 2048 + b"]" * 2048, "too_large"),
    (b'{"v":1,"id":"a","op":"x","args":' + b"[" * 1500 + b"]" * 1500 + b"}", "too_large"),
    (b'{"v":1,"id":"a","op":"x","args":{"a":' + b"[" * 15 + b"]" * 15 + b"}}", "too_large"),
    (b"x" * (proto.MAX_MESSAGE + 1), "too_large"),
    (b'{"v":1,"id":"a","op":"x","dev":5}', "bad_device_id"),  # dev is reserved in every kind
    (b'{"v":1,"id":"a","op":"x","dev":"th-01"}', "ok"),
    (b'{"v":1,"id":5,"op":"x"}', "bad_type"),
    (b'{"v":1,"id":"","op":"x"}', "bad_value"),
    (b'{"v":1,"id":"a","op":"x","args":{"a":' + b"[" * 14 + b"]" * 14 + b"}}", "ok"),
    (b'{"v":1,"id":"a","op":"x","args":{"t":1e-400,"u":-0.0}}', "ok"),
    (b'{"v":1,"id":"a","op":"x","args":{"s":"\\ud800"}}', "ok"),  # a lone surrogate is valid JSON
    (b'{"v":1,"id":"a","op":"x","v":2}', "unsupported_version"),  # the last duplicate wins
    (b'{"v":true,"id":"a","op":"x"}', "bad_type"),
    (b'{"v":1.0,"id":"a","op":"x"}', "bad_type"),
    (b'{"v":null,"id":"a","op":"x"}', "missing_field"),
    (b'{"v":1,"id":"a","op":true}', "bad_type"),
    (b' \t\r\n{"v":1,"id":"\xf0\x9f\x98\x80","op":"x"}\n', "ok"),
]


def collect(strategy: st.SearchStrategy[Any], n: int = 150) -> list[Any]:
    """n examples of strategy, drawn by hypothesis inside one @given run
    (cases to run on CPython and on the MicroPython unix port alike)."""
    cases: list[Any] = []

    @settings(
        max_examples=n,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(case: Any) -> None:
        cases.append(case)

    draw()
    return cases
