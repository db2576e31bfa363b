"""Properties of the device protocol (firmware/pb/peer/protocol.py): topics, ids and
the JSON control messages, run on CPython; test_micropython_parity.py checks
MicroPython decodes the same."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.pb.errors import ProtocolError
from firmware.pb.net import wire_in
from firmware.pb.peer import protocol as proto

from .corpus import canon
from .strategies import (
    ID_RE,
    JSON_EDGE_CASES,
    KINDS,
    SCHEMAS,
    WRONG_TYPE,
    any_message,
    extra_fields,
    invalid_ids,
    invalid_messages,
    json_values,
    kinds,
    messages,
    mutated,
    names,
    to_json,
    valid_ids,
)

# Every code proto.decode may give (its docstring), and parse_topic's.
DECODE_CODES = {
    "too_large",
    "bad_json",
    "not_object",
    "missing_field",
    "bad_type",
    "bad_value",
    "unsupported_version",
    "bad_device_id",
}
TOPIC_CODES = {"unknown_topic", "bad_device_id"}


def code_of(call: Any, *args: Any) -> str | None:
    """The ProtocolError code of call(*args), or None if it returns; any other
    exception escapes and fails the test."""
    try:
        call(*args)
    except ProtocolError as exc:
        assert isinstance(exc.message, str) and exc.message
        return str(exc.code)
    return None


# ---- valid messages ---------------------------------------------------------


@given(any_message)
def test_every_valid_message_round_trips(kind_msg: tuple[str, dict[str, Any]]) -> None:
    kind, msg = kind_msg
    data = proto.encode(kind, msg)
    assert len(data) <= proto.MAX_MESSAGE
    # canon() tells 1 from 1.0 and True, and compares floats bit for bit
    assert canon(proto.decode(kind, data)) == canon(msg)
    assert proto.validate(kind, msg) is msg


@given(kinds.flatmap(lambda k: st.tuples(st.just(k), messages(k, extras=False), extra_fields(k))))
def test_unknown_fields_are_kept(kind_msg_extra: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    kind, msg, extra = kind_msg_extra
    msg = {**extra, **msg}
    decoded = proto.decode(kind, proto.encode(kind, msg))
    for name in extra:
        assert canon(decoded[name]) == canon(msg[name])


@given(any_message)
def test_encoding_is_compact_utf8_json(kind_msg: tuple[str, dict[str, Any]]) -> None:
    kind, msg = kind_msg
    data = proto.encode(kind, msg)
    # raw UTF-8, not \ud83d\ude00 pairs, which MicroPython's json would not join again
    assert data == to_json(msg)


def test_non_ascii_text_is_written_as_utf8() -> None:
    msg = {"v": 1, "id": "a", "op": "x", "args": {"name": "😀 é"}}
    assert proto.encode("cmd", msg) == '{"v":1,"id":"a","op":"x","args":{"name":"😀 é"}}'.encode()


def test_replies_built_by_helpers_are_valid() -> None:
    ok = proto.reply_ok("dev-1", "c1", {"x": [1, 2.5, None]})
    assert proto.decode("reply", proto.encode("reply", ok)) == ok
    err = proto.reply_error("dev-1", "c1", "bad_args", "no such feature")
    assert proto.decode("reply", proto.encode("reply", err)) == err
    assert "result" not in proto.reply_ok("dev-1", "c1")


# ---- invalid messages -------------------------------------------------------


@given(invalid_messages())
def test_invalid_messages_are_refused_with_their_code(case: tuple[str, Any, str]) -> None:
    kind, msg, expected = case
    assert code_of(proto.validate, kind, msg) == expected
    assert code_of(proto.decode, kind, to_json(msg)) == expected
    assert code_of(proto.encode, kind, msg) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_booleans_are_not_integers_or_numbers(kind: str) -> None:
    base = proto.validate(kind, _minimal(kind))
    for name, code, _ in SCHEMAS[kind]:
        if code in ("i", "n"):
            for value in (True, False):
                msg = {**base, name: value}
                assert code_of(proto.validate, kind, msg) == "bad_type"
                assert code_of(proto.decode, kind, to_json(msg)) == code_of(proto.validate, kind, msg)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e300, -1e300])
def test_nan_infinities_and_huge_values_are_not_numbers(kind: str, value: float) -> None:
    base = _minimal(kind)
    for name, code, _ in SCHEMAS[kind]:
        if code == "n":
            assert code_of(proto.validate, kind, {**base, name: value}) == "bad_type"
            if value == value and abs(value) != float("inf"):
                assert code_of(proto.decode, kind, to_json({**base, name: value})) == "bad_type"
        if code == "d" and value != 1e300 and value != -1e300:
            assert code_of(proto.encode, kind, {**base, name: {"x": {"y": [value]}}}) == "bad_value"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinities_are_refused_anywhere(kind: str, value: float) -> None:
    # CPython would write NaN, MicroPython nan, and neither is JSON
    assert code_of(proto.encode, kind, {**_minimal(kind), "extra": [1, {"x": value}]}) == "bad_value"
    assert code_of(proto.validate, kind, value) == "not_object"


@pytest.mark.parametrize("kind", KINDS)
def test_every_required_field_is_required(kind: str) -> None:
    base = _minimal(kind)
    for name in [f[0] for f in SCHEMAS[kind] if f[2]]:
        msg = {k: v for k, v in base.items() if k != name}
        assert code_of(proto.decode, kind, to_json(msg)) == "missing_field"


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_a_field_of_the_wrong_type_is_bad_type(kind: str, data: st.DataObject) -> None:
    name, code, _ = data.draw(st.sampled_from([f for f in SCHEMAS[kind] if f[1] != "a" and f[0] != "v"]))
    msg = {**data.draw(messages(kind)), name: data.draw(WRONG_TYPE[code])}
    assert code_of(proto.decode, kind, to_json(msg)) == "bad_type"


@given(kinds, st.integers().filter(lambda v: v != proto.VERSION))
def test_other_versions_are_unsupported(kind: str, version: int) -> None:
    assert code_of(proto.decode, kind, to_json({**_minimal(kind), "v": version})) == "unsupported_version"


@given(kinds, invalid_ids)
def test_bad_device_ids_are_refused(kind: str, dev: str) -> None:
    if "dev" in names(kind):
        assert code_of(proto.decode, kind, to_json({**_minimal(kind), "dev": dev})) == "bad_device_id"


@pytest.mark.parametrize("kind", ["cmd", "reply"])
@pytest.mark.parametrize("cmd_id", ["", "x" * (proto.MAX_ID + 1)])
def test_command_ids_must_be_1_to_32_characters(kind: str, cmd_id: str) -> None:
    assert code_of(proto.decode, kind, to_json({**_minimal(kind), "id": cmd_id})) == "bad_value"
    assert code_of(proto.decode, kind, to_json({**_minimal(kind), "id": "x" * proto.MAX_ID})) is None


@pytest.mark.parametrize("kind", KINDS)
def test_dev_and_id_are_reserved_in_every_kind(kind: str) -> None:
    """Wherever present, dev must be a device id and id 1-32 characters,
    whether the kind's schema declares them or not (docs/protocol.md 3.0)."""
    msg = _minimal(kind)
    for value in (5, None, True, [], {}, "NOT AN ID", "", "x" * 33):
        expected = "bad_type" if "dev" in names(kind) and not isinstance(value, str) else "bad_device_id"
        assert code_of(proto.decode, kind, to_json({**msg, "dev": value})) == expected
    for value in (5, None, True, [], {}, "", "x" * 33):
        expected = "bad_type" if "id" in names(kind) and not isinstance(value, str) else "bad_value"
        assert code_of(proto.decode, kind, to_json({**msg, "id": value})) == expected
    extra = {"dev": "th-01", "id": "x" * proto.MAX_ID, "state": "not checked outside a state"}
    if kind != "state":
        assert proto.decode(kind, to_json({**msg, **extra})) == {**msg, **extra}


def test_state_must_be_online_or_offline() -> None:
    for state in proto.STATES:
        assert proto.decode("state", to_json({**_minimal("state"), "state": state}))["state"] == state
    assert code_of(proto.decode, "state", to_json({**_minimal("state"), "state": "asleep"})) == "bad_value"


@given(kinds, json_values(2).filter(lambda v: not isinstance(v, dict)))
def test_non_objects_are_not_object(kind: str, value: Any) -> None:
    assert code_of(proto.decode, kind, to_json(value)) == "not_object"


@pytest.mark.parametrize(("payload", "expected"), JSON_EDGE_CASES)
def test_json_edge_cases(payload: bytes, expected: str) -> None:
    assert (code_of(proto.decode, "cmd", payload) or "ok") == expected


def test_messages_nested_too_deep_are_refused_on_the_way_out() -> None:
    deep: Any = 1
    for _ in range(proto.MAX_DEPTH - 2):  # the message and its args are two levels
        deep = [deep]
    assert code_of(proto.encode, "cmd", {**_minimal("cmd"), "args": {"a": deep}}) is None
    assert code_of(proto.encode, "cmd", {**_minimal("cmd"), "args": {"a": [deep]}}) == "too_large"


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object()])
def test_values_json_cannot_carry_are_refused_on_the_way_out(value: Any) -> None:
    assert code_of(proto.encode, "reply", {**_minimal("reply"), "result": {"x": value}}) == "bad_type"


def test_lone_surrogates_are_refused_on_the_way_out() -> None:
    assert code_of(proto.encode, "reply", {**_minimal("reply"), "result": "\ud800"}) == "bad_value"


def test_a_message_too_large_to_send_is_refused() -> None:
    msg = {**_minimal("reply"), "result": "x" * proto.MAX_MESSAGE}
    assert code_of(proto.encode, "reply", msg) == "too_large"


# ---- garbage in: a ProtocolError with a documented code, nothing else --------


@given(kinds, st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_cleanly(kind: str, payload: bytes) -> None:
    assert code_of(proto.decode, kind, payload) in DECODE_CODES | {None}


@given(kinds, json_values(3))
def test_arbitrary_json_values_are_refused_cleanly(kind: str, value: Any) -> None:
    assert code_of(proto.decode, kind, to_json(value)) in DECODE_CODES | {None}
    assert code_of(proto.validate, kind, value) in DECODE_CODES | {None}


def _fuzzy_message(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose keys are mostly field names, with values of any type."""
    all_names = sorted({n for k in KINDS for n in names(k)})
    base = st.fixed_dictionaries({"v": st.sampled_from([1, 1, 1, 2, True, 1.0, "1", None])})
    return base.flatmap(
        lambda b: st.dictionaries(
            st.sampled_from(all_names) | st.text(max_size=4),
            st.one_of(json_values(2), valid_ids, st.sampled_from(proto.STATES)),
            max_size=10,
        ).map(lambda d: {**d, **b})
    )


@given(kinds.flatmap(lambda k: st.tuples(st.just(k), _fuzzy_message(k))))
def test_messages_with_arbitrary_field_values_are_refused_cleanly(
    kind_msg: tuple[str, dict[str, Any]],
) -> None:
    kind, msg = kind_msg
    code = code_of(proto.decode, kind, to_json(msg))
    assert code in DECODE_CODES | {None}
    assert code_of(proto.validate, kind, msg) == code
    if code is None:
        assert code_of(proto.encode, kind, msg) is None


@given(any_message, st.data())
def test_mutated_messages_are_refused_cleanly(
    kind_msg: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    kind, msg = kind_msg
    payload = data.draw(mutated(proto.encode(kind, msg)))
    assert code_of(proto.decode, kind, payload) in DECODE_CODES | {None}


# ---- topics and ids ---------------------------------------------------------


@given(valid_ids, kinds)
def test_topics_round_trip(dev: str, kind: str) -> None:
    assert proto.parse_topic(proto.topic(dev, kind)) == (dev, kind)


@given(st.text(max_size=30) | st.lists(st.sampled_from(["pb", "dev-1", "cmd", "x", "", "/"])).map("/".join))
def test_arbitrary_topics_parse_or_raise_a_topic_code(t: str) -> None:
    code = code_of(proto.parse_topic, t)
    assert code in TOPIC_CODES | {None}
    if code is None:
        dev, kind = proto.parse_topic(t)
        assert proto.valid_id(dev) and kind in KINDS
        assert t == proto.topic(dev, kind)


@given(invalid_ids, kinds)
def test_topics_with_bad_device_ids_are_refused(dev: str, kind: str) -> None:
    if "/" not in dev:
        assert code_of(proto.parse_topic, proto.topic(dev, kind)) == "bad_device_id"


@pytest.mark.parametrize(
    "t",
    ["", "pb", "pb/dev", "pb/dev/", "pb/dev/nope", "pb/dev/cmd/x", "xx/dev/cmd", "/pb/dev/cmd", "PB/dev/cmd"],
)
def test_unknown_topics_are_refused(t: str) -> None:
    assert code_of(proto.parse_topic, t) == "unknown_topic"


@given(st.text(max_size=40) | valid_ids)
def test_valid_id_matches_its_definition(s: str) -> None:
    assert proto.valid_id(s) == bool(ID_RE.fullmatch(s))


@pytest.mark.parametrize("value", [None, 5, True, b"abc", ["abc"], {"a": 1}, 1.5])
def test_valid_id_refuses_non_strings(value: Any) -> None:
    assert proto.valid_id(value) is False


def _minimal(kind: str) -> dict[str, Any]:
    """The smallest valid message of a kind: its required fields only."""
    values = {"s": "x", "i": 1, "n": 1.5, "b": True, "d": {}, "l": [], "a": None}
    special = {"v": proto.VERSION, "dev": "dev-1", "id": "c1", "state": "online", "op": "ping"}
    msg = {name: special.get(name, values[code]) for name, code, required in SCHEMAS[kind] if required}
    return proto.validate(kind, msg)


# ---- the device's lean command decoder ---------------------------------------


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except ProtocolError as exc:
        return ("err", exc.code)


@given(invalid_messages().filter(lambda c: c[0] == "cmd"))
def test_device_decodes_commands_as_the_full_schema_does(case: tuple[str, Any, str]) -> None:
    _, msg, _ = case
    payload = to_json(msg)
    assert _outcome(wire_in.decode_cmd, payload) == _outcome(proto.decode, "cmd", payload)


@pytest.mark.parametrize(("payload", "code"), JSON_EDGE_CASES)
def test_device_command_decoder_on_json_edge_cases(payload: bytes, code: str) -> None:
    assert _outcome(wire_in.decode_cmd, payload) == _outcome(proto.decode, "cmd", payload)
