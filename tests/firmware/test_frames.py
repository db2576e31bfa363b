"""Properties of the serial carrier's frames (firmware/pb/net/frames.py,
docs/protocol.md 15), run on CPython; the last test runs the same cases on
the real MicroPython unix port and gets the same frames, counts and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from firmware.pb.errors import ProtocolError
from firmware.pb.net import frames

from ..support import micropython
from .strategies import collect, split

MAX_BODY = 4400  # frames._MAX_BODY
MAX_FRAME = MAX_BODY + 10  # frames._FRAME
CHUNK = 4096 + 28  # the largest update chunk (docs/ota.md 3)
KINDS = (
    "hello",
    "state",
    "telemetry",
    "event",
    "reply",
    "cmd",
    "ota/offer",
    "ota/req",
    "ota/chunk",
    "ota/status",
    "ota/time",
    "ota/root",
)
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

Message = tuple[str, bytes]

_VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
kinds = st.sampled_from(KINDS) | st.text(_VISIBLE, min_size=1, max_size=32)
_big = st.tuples(st.integers(3000, MAX_BODY - 33), st.binary(min_size=1, max_size=8)).map(
    lambda t: (t[1] * (t[0] // len(t[1]) + 1))[: t[0]]
)
payloads = st.binary(max_size=300) | _big
messages = st.tuples(kinds, payloads)


def frame(msg: Message) -> bytes:
    return bytes(frames.encode(*msg))


def decode(chunks: list[bytes], quiet: bool = True) -> tuple[list[Message], Any]:
    """The messages of chunks fed in turn (then the line gone quiet), and
    the decoder; its buffer never holds more than one largest frame."""
    decoder = frames.Decoder()
    out: list[Message] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        assert len(decoder._buf) <= MAX_FRAME
    if quiet:
        out += decoder.idle()
        assert len(decoder._buf) == 0
    return out, decoder


# ---- garbage ----------------------------------------------------------------

# pieces that look like the start of a frame: markers, lone FA, a header that
# checks (a body of 5 bytes, and of the largest size)
_LOOKALIKES = (
    b"\xfa",
    b"\xce",
    b"\xfa\xce",
    b"\x00",
    b"\xff",
    b"\xfa\xce\x00\x05\xff\xfa",
    b"\xfa\xce\x11\x30\xee\xcf",
)


@st.composite
def broken(draw: st.DrawFn, msg: Message) -> bytes:
    """The frame of msg with a byte past its start marker flipped, inserted
    or deleted, or cut short: never a frame any more."""
    data = bytearray(frame(msg))
    i = draw(st.integers(2, len(data) - 1))
    how = draw(st.sampled_from(("flip", "insert", "delete", "truncate")))
    if how == "flip":
        data[i] ^= draw(st.integers(1, 255))
    elif how == "insert":
        data.insert(i, draw(st.integers(0, 255)))
    elif how == "delete":
        del data[i]
    else:
        del data[i:]
    return bytes(data)


text = st.text(max_size=40).map(lambda s: s.encode("utf-8"))
garbage = st.one_of(
    st.binary(max_size=64),
    text,
    st.lists(st.sampled_from(_LOOKALIKES), max_size=8).map(b"".join),
    messages.flatmap(broken),
)


@st.composite
def streams(draw: st.DrawFn, junk: st.SearchStrategy[bytes] = garbage) -> tuple[bytes, list[Message]]:
    """Frames with garbage before, between and after them: the bytes, and
    the messages of the intact frames."""
    msgs = draw(st.lists(messages, max_size=5))
    parts = [draw(junk)]
    for msg in msgs:
        parts += [frame(msg), draw(junk)]
    return b"".join(parts), msgs


# ---- round trips ------------------------------------------------------------


@given(st.lists(messages, min_size=1, max_size=6), st.data())
def test_messages_split_anywhere_decode_in_order(msgs: list[Message], data: st.DataObject) -> None:
    stream = b"".join(frame(m) for m in msgs)
    got, decoder = decode(data.draw(split(stream)), quiet=False)
    assert got == msgs
    assert (decoder.skipped, decoder.dropped) == (0, 0)
    assert all(type(k) is str and type(p) is bytes for k, p in got)


@given(messages)
def test_a_message_fed_one_byte_at_a_time_decodes(msg: Message) -> None:
    data = frame(msg)
    assert decode([data[i : i + 1] for i in range(len(data))], quiet=False)[0] == [msg]


def test_the_frame_is_as_documented() -> None:
    data = frame(("hello", b'{"v": 1}'))
    assert data.hex() == "face000efff10568656c6c6f7b2276223a20317d2386c828"
    assert data.hex(" ") in DOC.read_text(encoding="utf-8")
    assert frames.encode("reply", '{"v": 1}') == frame(("reply", b'{"v": 1}'))


@pytest.mark.parametrize("kind", ["ota/chunk", "x" * 32])
def test_an_update_chunk_fits_and_the_body_stops_at_4400_bytes(kind: str) -> None:
    assert decode([frame(("ota/chunk", bytes(CHUNK)))])[0] == [("ota/chunk", bytes(CHUNK))]
    largest = (kind, (bytes(range(256)) * 18)[: MAX_BODY - 1 - len(kind)])
    assert len(frame(largest)) == MAX_FRAME
    assert decode([frame(largest)])[0] == [largest]
    with pytest.raises(ProtocolError) as info:
        frames.encode(kind, bytes(MAX_BODY - len(kind)))
    assert info.value.code == "too_large"


@pytest.mark.parametrize("kind", ["", "x" * 33, "a b", "é", "\x7f", "tab\t", "\x00"])
def test_a_kind_is_1_to_32_visible_ascii_characters(kind: str) -> None:
    with pytest.raises(ProtocolError) as info:
        frames.encode(kind, b"")
    assert info.value.code == "bad_topic"


# ---- garbage ----------------------------------------------------------------


@settings(deadline=None)
@given(streams(), st.data())
@example((b"\xfa\xce\x00\x05\xff\xfa" + frame(("cmd", b"{}")), [("cmd", b"{}")]), None)
def test_garbage_never_yields_a_frame_and_every_intact_frame_is_decoded(
    stream: tuple[bytes, list[Message]], data: st.DataObject | None
) -> None:
    raw, msgs = stream
    chunks = data.draw(split(raw)) if data is not None else [raw]
    got, decoder = decode(chunks)
    assert got == msgs
    # every byte is in a frame decoded or counted as skipped
    assert decoder.skipped == len(raw) - sum(len(frame(m)) for m in msgs)


@given(streams(text), st.data())
def test_console_text_holds_back_no_frame(stream: tuple[bytes, list[Message]], data: st.DataObject) -> None:
    # UTF-8 never holds an FA: nothing waits for the line to go quiet
    raw, msgs = stream
    got, decoder = decode(data.draw(split(raw)), quiet=False)
    assert got == msgs
    assert (decoder.skipped, decoder.dropped) == (len(raw) - sum(len(frame(m)) for m in msgs), 0)


@settings(deadline=None)
@given(messages, st.data(), st.lists(messages, max_size=3))
def test_a_corrupted_frame_is_dropped(msg: Message, data: st.DataObject, after: list[Message]) -> None:
    bad = bytearray(frame(msg))
    i = data.draw(st.integers(0, len(bad) - 1))
    bad[i] ^= data.draw(st.integers(1, 255))
    got, decoder = decode([bytes(bad), *(frame(m) for m in after)])
    assert got == after
    assert decoder.dropped >= (i >= 2)  # a start marker broken starts no frame


@settings(deadline=None)
@given(streams())
def test_one_byte_at_a_time_is_all_at_once(stream: tuple[bytes, list[Message]]) -> None:
    raw = stream[0]
    for quiet in (False, True):
        whole, a = decode([raw], quiet)
        single, b = decode([raw[i : i + 1] for i in range(len(raw))], quiet)
        assert single == whole
        assert (a.skipped, a.dropped, bytes(a._buf)) == (b.skipped, b.dropped, bytes(b._buf))


@given(st.binary(min_size=1, max_size=2000), st.data())
def test_false_headers_hold_at_most_one_frame(noise: bytes, data: st.DataObject) -> None:
    header = b"\xfa\xce\x11\x30\xee\xcf"  # the largest body, for a CRC that will not check
    raw = header + (header + noise) * 3
    got, decoder = decode(data.draw(split(raw)))
    assert got == []
    assert decoder.skipped == len(raw)
    assert decoder.dropped >= 4


def test_a_frame_inside_a_payload_is_found_only_when_the_outer_one_breaks() -> None:
    inner = frame(("event", b'{"v": 1}'))
    outer = frame(("cmd", inner))
    assert decode([outer])[0] == [("cmd", inner)]
    # the outer header broken: the search goes on right after its marker
    assert decode([outer[:2] + bytes([outer[2] ^ 1]) + outer[3:]])[0] == [("event", b'{"v": 1}')]
    # its CRC broken: the same, once the whole frame is in
    assert decode([outer[:-1] + bytes([outer[-1] ^ 1])], quiet=False)[0] == [("event", b'{"v": 1}')]
    # cut short: found when the line goes quiet
    got, decoder = decode([outer[:-3]], quiet=False)
    assert got == []
    assert decoder.idle() == [("event", b'{"v": 1}')]
    assert (decoder.dropped, decoder.skipped) == (1, len(outer) - 3 - len(inner))


def test_a_frame_whose_kind_does_not_check_is_passed_over_whole() -> None:
    from binascii import crc32

    inner = frame(("event", b"{}"))
    for kind in (b"", b"a b", b"\xff"):
        body = bytes([len(kind)]) + kind + inner
        n = len(body)
        data = b"\xfa\xce" + bytes([n >> 8, n & 255, ~n >> 8 & 255, ~n & 255]) + body
        data += crc32(body).to_bytes(4, "big")
        got, decoder = decode([data, frame(("cmd", b"{}"))])
        assert got == [("cmd", b"{}")]
        assert (decoder.dropped, decoder.skipped) == (1, len(data))
    # a kind longer than the body
    body = b"\x09abc"
    data = b"\xfa\xce\x00\x04\xff\xfb" + body + crc32(body).to_bytes(4, "big")
    assert decode([data])[0] == []


# ---- the same on MicroPython ------------------------------------------------

# One runner for both interpreters: a case in, its outcome out (JSON).
RUNNER = """
from binascii import hexlify, unhexlify


def hx(b):
    return hexlify(b).decode()


def run_case(frames, case):
    if case[0] == "encode":
        try:
            return ["ok", hx(frames.encode(case[1], unhexlify(case[2])))]
        except Exception as e:
            return ["err", getattr(e, "code", repr(e))]
    d = frames.Decoder()
    fed = []
    for c in case[1]:
        fed += [[k, hx(p)] for k, p in d.feed(unhexlify(c))]
    held = len(d._buf)
    quiet = [[k, hx(p)] for k, p in d.idle()]
    return [fed, held, quiet, d.skipped, d.dropped]


def micropython_main(path):
    import json
    from pb.net import frames

    with open(path) as f:
        for line in f:
            print(json.dumps(run_case(frames, json.loads(line))))
"""


def _run_here(cases: list[Any]) -> list[Any]:
    scope: dict[str, Any] = {}
    exec(RUNNER, scope)  # (the runner is this file's)
    return [json.loads(json.dumps(scope["run_case"](frames, c))) for c in cases]


@st.composite
def decode_cases(draw: st.DrawFn) -> list[Any]:
    raw = draw(streams())[0]
    chunks = [raw[i : i + 1] for i in range(len(raw))] if draw(st.booleans()) else draw(split(raw))
    return ["decode", [c.hex() for c in chunks]]


encode_cases = st.tuples(
    st.just("encode"),
    kinds | st.text(max_size=34),
    payloads.map(bytes.hex) | st.integers(MAX_BODY - 40, MAX_BODY).map(lambda n: bytes(n).hex()),
).map(list)


@pytest.mark.long  # (slow: make long)
@pytest.mark.micropython
def test_micropython_encodes_and_decodes_the_same() -> None:
    chunk = frame(("ota/chunk", bytes(range(256)) * 16 + bytes(28)))
    cases: list[Any] = [
        ["decode", [chunk.hex()]],
        ["decode", [chunk[i : i + 1].hex() for i in range(len(chunk))]],
        ["decode", [(b"\xfa\xce\x11\x30\xee\xcf" * 3 + chunk + chunk[:-5] + chunk).hex()]],
        ["encode", "ota/chunk", bytes(MAX_BODY - 10).hex()],
        ["encode", "ota/chunk", bytes(MAX_BODY - 9).hex()],
    ]
    cases += collect(decode_cases(), 150)
    cases += collect(encode_cases, 150)
    expected = _run_here(cases)
    code = RUNNER + "\nimport sys\nmicropython_main(sys.argv[1])\n"
    got = micropython.run_json_lines(code, cases)
    assert len(got) == len(cases)
    diffs = [(c, e, g) for c, e, g in zip(cases, expected, got, strict=True) if e != g]
    assert not diffs, "\n".join(repr(d)[:600] for d in diffs[:5])
    assert {o[0] for c, o in zip(cases, expected, strict=True) if c[0] == "encode"} == {"ok", "err"}
