"""The gateway's classification of incoming messages (pure)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from firmware.pb.errors import ProtocolError
from firmware.pb.peer import protocol as proto
from gateway.ingest import Accepted, Rejected, classify, decode, unstorable

from ..support import messages


def hello(dev: str = "th-1", **over: object) -> bytes:
    msg = messages.hello(dev, features={}, caps=[], heap_free=1, telemetry_s=10)
    msg.update(over)
    return json.dumps(msg).encode()


def known(dev: str) -> bool:
    return dev == "th-1"


def test_hello_from_a_new_device_is_accepted() -> None:
    verdict = classify("pb/new-1/hello", hello("new-1"), True, known)
    assert isinstance(verdict, Accepted) and verdict.dev == "new-1" and verdict.kind == "hello"


def test_own_commands_echoed_are_ignored_but_retained_commands_rejected() -> None:
    cmd = b'{"v":1,"id":"a","op":"ping"}'
    assert classify("pb/th-1/cmd", cmd, False, known) is None
    verdict = classify("pb/th-1/cmd", cmd, True, known)
    assert isinstance(verdict, Rejected) and verdict.reason == "retained_command"


def test_clearing_a_retained_message_is_ignored() -> None:
    assert classify("pb/th-1/hello", b"", True, known) is None


def test_spoofed_device_id_is_rejected() -> None:
    verdict = classify("pb/th-1/hello", hello("th-2"), False, known)
    assert isinstance(verdict, Rejected) and verdict.reason == "spoofed"


def test_telemetry_before_hello_is_rejected() -> None:
    tel = json.dumps(
        {"v": 1, "dev": "ghost", "seq": 1, "ts": 1, "sensors": {}, "actuators": {}, "features": {}}
    ).encode()
    verdict = classify("pb/ghost/telemetry", tel, False, known)
    assert isinstance(verdict, Rejected) and verdict.reason == "unknown_device"


def test_state_before_hello_is_accepted_for_later() -> None:
    verdict = classify("pb/ghost/state", b'{"v":1,"dev":"ghost","state":"online"}', True, known)
    assert isinstance(verdict, Accepted)


@given(topic=st.text(max_size=80), payload=st.binary(max_size=300), retain=st.booleans())
def test_arbitrary_input_never_raises(topic: str, payload: bytes, retain: bool) -> None:
    verdict = classify(topic, payload, retain, known)
    assert verdict is None or isinstance(verdict, Accepted | Rejected)
    if isinstance(verdict, Rejected):
        assert verdict.reason and verdict.detail


@given(
    kind=st.sampled_from(["hello", "state", "telemetry", "reply", "event", "cmd", "ota/x", "zzz"]),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    ),
)
def test_arbitrary_json_never_raises(kind: str, value: object) -> None:
    payload = json.dumps(value).encode()
    verdict = classify(f"pb/th-1/{kind}", payload, False, known)
    assert verdict is None or isinstance(verdict, Accepted | Rejected)


def _reference(kind: str, payload: bytes) -> tuple[object, object]:
    """What decode() must give: proto.decode() and unstorable(), both walks run."""
    try:
        msg = proto.decode(kind, payload)
    except ProtocolError as exc:
        return "error", (exc.code, exc.message)
    return msg, unstorable(msg)


def _decoded(kind: str, payload: bytes) -> tuple[object, object]:
    try:
        return decode(kind, payload)
    except ProtocolError as exc:
        return "error", (exc.code, exc.message)


_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["\ud800", "x\udfff", "{[{[", "1e400"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)


_WHOLE: dict[str, dict[str, object]] = {
    "hello": messages.hello("th-1"),
    "state": {"v": 1, "dev": "th-1", "state": "online"},
    "telemetry": {"v": 1, "dev": "th-1", "seq": 1, "ts": 1.5, "sensors": {}, "actuators": {}, "features": {}},
    "reply": {"v": 1, "dev": "th-1", "id": "c1", "ok": True},
    "event": {"v": 1, "dev": "th-1", "kind": "boot"},
}


@given(
    kind=st.sampled_from(sorted(_WHOLE)),
    value=_JSONISH,
    depth=st.integers(0, 20),
    extra=st.sampled_from(
        [
            "",
            "1e400",
            "-1E+999",
            "1" * 250,
            "1" * 250 + "e60",
            "1" * 199 + ".5e99",
            "1e99",
            "NaN",
            '"\\ud800"',
        ]
    ),
)
def test_the_fast_decode_judges_every_message_as_the_full_walks_do(
    kind: str, value: object, depth: int, extra: str
) -> None:
    """decode() leaves out the walks over a message whose bytes show they would
    find nothing: deep nesting, a lone surrogate, NaN or an infinity, in any
    place, are found all the same, with the same words."""
    msg: dict[str, object] = {**_WHOLE[kind], "x": value}
    for _ in range(depth):
        msg = {**_WHOLE[kind], "x": [msg]}
    text = json.dumps(msg, ensure_ascii=False, allow_nan=True)
    if extra:
        text = text[:-1] + ', "extra": ' + extra + "}"
    for payload in (text.encode("utf-8", "surrogatepass"), text.encode("ascii", "backslashreplace")):
        assert _decoded(kind, payload) == _reference(kind, payload)


@given(
    kind=st.sampled_from(["hello", "state", "telemetry", "reply", "event"]), payload=st.binary(max_size=200)
)
def test_the_fast_decode_judges_any_bytes_as_the_full_walks_do(kind: str, payload: bytes) -> None:
    assert _decoded(kind, payload) == _reference(kind, payload)
