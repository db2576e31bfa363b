"""Properties of the Bluetooth LE carrier's values (firmware/pb/net/ble_frag.py,
docs/protocol.md 16), run on CPython: frames cut at any value size join
again exactly; lost, repeated and corrupted values never make a message
that was not sent, and the frames after them still come. The last test runs
the same cases on the real MicroPython unix port and gets the same bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from firmware.pb.net import ble_frag, frames

from ..support import micropython
from .strategies import collect

CHUNK = 4096 + 28  # the largest update chunk (docs/ota.md 3)
MAX_FRAME = 4410  # frames._FRAME
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
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

Message = tuple[str, bytes]

_big = st.tuples(st.integers(1000, CHUNK), st.binary(min_size=1, max_size=8)).map(
    lambda t: (t[1] * (t[0] // len(t[1]) + 1))[: t[0]]
)
payloads = st.binary(max_size=300) | _big
messages = st.tuples(st.sampled_from(KINDS), payloads)
sizes = st.integers(20, 512)  # ATT_MTU 23 to 515


def values_of(msgs: list[Message], size: int, sender: Any = None) -> list[list[bytes]]:
    """The values of each message's frame, frame by frame."""
    sender = sender or ble_frag.Sender(size)
    return [[bytes(v) for v in sender.values(frames.encode(*m))] for m in msgs]


def join(values: list[bytes], joiner: Any = None) -> list[Message]:
    joiner = joiner or ble_frag.Joiner()
    out: list[Message] = []
    for v in values:
        out += joiner.feed(v)
        assert len(joiner.decoder._buf) <= MAX_FRAME
    return out


def _within(part: list[Message], whole: list[Message]) -> bool:
    rest = iter(whole)
    return all(any(m == n for n in rest) for m in part)


def in_order(got: list[Message], sent: list[Message], must: set[int]) -> None:
    """got is sent, in order, with some messages left out: none of those in must."""
    assert _within(got, sent), "a message that was not sent, or out of order"
    assert _within([sent[k] for k in sorted(must)], got), "a message of a frame left whole is lost"


# ---- round trips ------------------------------------------------------------


@settings(deadline=None)
@given(st.lists(messages, min_size=1, max_size=6), sizes)
def test_messages_cut_at_any_size_join_exactly(msgs: list[Message], size: int) -> None:
    sender = ble_frag.Sender(size)
    per_frame = values_of(msgs, size, sender)
    values = [v for vs in per_frame for v in vs]
    joiner = ble_frag.Joiner()
    assert join(values, joiner) == msgs
    assert all(2 <= len(v) <= size for v in values)
    # every value but a frame's last is full: no more values than needed
    assert all(len(v) == size for vs in per_frame for v in vs[:-1])
    assert [v[0] for v in values] == [i & 0xFF for i in range(len(values))]
    assert sender.seq == len(values) & 0xFF
    assert (joiner.gaps, joiner.dups, joiner.bad, joiner.decoder.skipped, joiner.decoder.dropped) == (0,) * 5


@given(st.lists(st.tuples(messages, sizes), min_size=2, max_size=6))
def test_a_new_size_between_frames(plan: list[tuple[Message, int]]) -> None:
    # the MTU exchanged while values already flow: the next frame takes it
    sender = ble_frag.Sender()
    values: list[bytes] = []
    for msg, size in plan:
        sender.size = size
        vs = values_of([msg], size, sender)[0]
        assert all(len(v) <= size for v in vs)
        values += vs
    assert join(values) == [m for m, _ in plan]


@pytest.mark.parametrize(("size", "taken"), [(0, 20), (19, 20), (20, 20), (244, 244), (512, 512), (514, 512)])
def test_the_size_is_taken_as_20_to_512(size: int, taken: int) -> None:
    values = values_of([("ota/chunk", bytes(CHUNK))], size)[0]
    assert max(len(v) for v in values) == taken
    assert join(values) == [("ota/chunk", bytes(CHUNK))]


def test_the_values_are_as_documented() -> None:
    values = values_of([("hello", b'{"v": 1}')], 20)[0]
    assert "\n".join(v.hex(" ") for v in values) in DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize(("size", "data", "count"), [(20, 4096, 219), (514, 4096, 9), (514, 4040, 8)])
def test_update_chunks_in_values_as_documented(size: int, data: int, count: int) -> None:
    # docs/protocol.md 16, Updates: a chunk's frame is its bytes and 48 more
    msg = ("ota/chunk", bytes(28 + data))
    frame = frames.encode(*msg)
    values = values_of([msg], size)[0]
    assert len(frame) == data + 48
    assert len(values) == count
    assert b"".join(v[1:] for v in values) == frame
    if data == 4040:
        assert {len(v) for v in values} == {512}


@given(st.lists(messages, min_size=1, max_size=3), sizes)
def test_the_sequence_wraps_past_255(msgs: list[Message], size: int) -> None:
    sender = ble_frag.Sender(size)
    sender.seq = 250
    joiner = ble_frag.Joiner()
    joiner._last = 249  # a connection that has already carried 250 values
    values = [v for vs in values_of(msgs * 3, size, sender) for v in vs]
    assert join(values, joiner) == msgs * 3
    assert joiner.gaps == 0


def test_the_sequence_wraps_over_a_long_connection() -> None:
    msgs = [("ota/chunk", bytes([i]) * CHUNK) for i in range(4)]
    values = [v for vs in values_of(msgs, 20) for v in vs]
    assert len(values) > 512
    assert join(values) == msgs


# ---- damage -----------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn, how: tuple[str, ...]) -> tuple[list[Message], int, list[Any]]:
    """Messages, a size, and damage to their values: each op an index into
    the values and what happens to that value."""
    msgs = draw(st.lists(messages, min_size=1, max_size=5))
    size = draw(sizes)
    count = sum(len(vs) for vs in values_of(msgs, size))
    ops = draw(
        st.lists(
            st.tuples(
                st.integers(0, count - 1),
                st.sampled_from(how),
                st.integers(0, 511),
                st.integers(1, 255),
            ),
            max_size=6,
            unique_by=lambda op: op[0],
        )
    )
    return msgs, size, [list(op) for op in ops]


def _apply(msgs: list[Message], size: int, ops: list[Any]) -> tuple[list[bytes], set[int]]:
    """The values as the receiver gets them, and the frames left whole."""
    per_frame = values_of(msgs, size)
    owner = [k for k, vs in enumerate(per_frame) for _ in vs]
    values = [v for vs in per_frame for v in vs]
    hurt = {owner[op[0]] for op in ops if op[1] in ("drop", "flip")}
    # a sequence number flipped may make the next value look like a repeat
    hurt |= {
        owner[op[0] + 1]
        for op in ops
        if op[1] == "flip" and op[2] % len(values[op[0]]) == 0 and op[0] + 1 < len(values)
    }
    return DAMAGE(values, ops), set(range(len(msgs))) - hurt


@settings(deadline=None)
@given(damaged(("drop", "dup", "short")))
@example(([("cmd", b"{}"), ("event", b"{}")], 20, [[0, "drop", 0, 1]]))
def test_lost_and_repeated_values_never_make_a_message_and_the_next_frame_comes_at_once(
    case: tuple[list[Message], int, list[Any]],
) -> None:
    msgs, size, ops = case
    values, whole = _apply(msgs, size, ops)
    joiner = ble_frag.Joiner()
    got = join(values, joiner)
    # no frame waits for the link to go quiet: what was lost never reached it
    in_order(got, msgs, whole)
    assert got == [msgs[k] for k in sorted(whole)]
    assert joiner.dups == sum(op[1] == "dup" for op in ops)
    assert joiner.bad == sum(op[1] == "short" for op in ops)
    assert joiner.idle() == []


@settings(deadline=None)
@given(damaged(("drop", "dup", "flip", "short")))
def test_corrupted_values_never_make_a_message_that_was_not_sent(
    case: tuple[list[Message], int, list[Any]],
) -> None:
    msgs, size, ops = case
    values, whole = _apply(msgs, size, ops)
    joiner = ble_frag.Joiner()
    got = join(values, joiner)
    got += joiner.idle()
    in_order(got, msgs, whole)


def test_a_lost_value_drops_its_frame_at_once() -> None:
    values = values_of([("ota/chunk", bytes(CHUNK)), ("reply", b'{"ok": true}')], 100)
    joiner = ble_frag.Joiner()
    assert join(values[0][:5], joiner) == []
    assert len(joiner.decoder._buf) == 5 * 99
    # the 6th lost: the frame goes, and its values after the gap are passed over
    assert join(values[0][6:], joiner) == []
    assert (joiner.gaps, len(joiner.decoder._buf)) == (1, 0)
    assert joiner.decoder.skipped == sum(len(v) - 1 for v in values[0][:5] + values[0][6:])
    assert join(values[1], joiner) == [("reply", b'{"ok": true}')]


def test_a_repeated_value_is_dropped() -> None:
    values = values_of([("event", bytes(300))], 20)[0]
    joiner = ble_frag.Joiner()
    assert join([v for v in values for _ in (0, 1)], joiner) == [("event", bytes(300))]
    assert (joiner.dups, joiner.gaps) == (len(values), 0)


@pytest.mark.parametrize("value", [b"", b"\x00"])
def test_an_empty_value_is_ignored(value: bytes) -> None:
    values = values_of([("state", b'{"on": 1}')], 20)[0]
    joiner = ble_frag.Joiner()
    assert join([value, values[0], value, *values[1:]], joiner) == [("state", b'{"on": 1}')]
    assert (joiner.bad, joiner.gaps, joiner.dups) == (2, 0, 0)


def test_a_connection_starts_at_0() -> None:
    # the first values of a connection lost: counted as a gap, the next frame taken
    values = values_of([("event", bytes(100)), ("cmd", b"{}")], 20)
    joiner = ble_frag.Joiner()
    assert join(values[0][1:] + values[1], joiner) == [("cmd", b"{}")]
    assert joiner.gaps == 1


def test_256_values_lost_are_caught_by_the_crc() -> None:
    # a gap of exactly 256 values keeps the sequence: the frame's check drops
    # it, and the search goes on from its start marker
    data = bytes(range(256)) * 16 + bytes(28)
    msgs = [("ota/chunk", data), ("ota/chunk", data[::-1]), ("ota/chunk", bytes(CHUNK)), ("cmd", b"{}")]
    values = [v for vs in values_of(msgs, 20) for v in vs]
    joiner = ble_frag.Joiner()
    got = join(values[:10] + values[266:], joiner)
    assert joiner.gaps == 0
    assert got == msgs[2:]
    assert joiner.decoder.dropped == 1


def test_an_old_value_seen_again_joins_into_no_frame() -> None:
    # a frame's first value replayed in the middle of the next frame: that
    # frame is broken, the replayed one comes to nothing, the next comes
    msgs = [("ota/chunk", bytes(CHUNK)), ("ota/chunk", bytes([1]) * CHUNK), ("cmd", b"{}")]
    a, b, c = values_of(msgs, 50)
    joiner = ble_frag.Joiner()
    assert join(a + b[:3] + a[:1] + b[3:] + c, joiner) == [msgs[0], msgs[2]]
    assert joiner.gaps == 2


# ---- the same on MicroPython ------------------------------------------------

# One runner for both interpreters: a case in (messages, sizes, damage), its
# values and what a Joiner makes of them out (JSON).
RUNNER = """
from binascii import hexlify, unhexlify


def hx(b):
    return hexlify(b).decode()


def damage(values, ops):
    # op: [index, how, where, xor]; drop, dup (sent twice), flip a byte,
    # short (an empty or a one-byte value before it)
    by = {}
    for op in ops:
        by[op[0]] = op
    out = []
    for i in range(len(values)):
        v = values[i]
        op = by.get(i)
        if op is None:
            out.append(v)
        elif op[1] == "dup":
            out += [v, v]
        elif op[1] == "flip":
            b = bytearray(v)
            b[op[2] % len(b)] ^= op[3]
            out.append(bytes(b))
        elif op[1] == "short":
            out += [v[: op[2] % 2], v]
    return out


def run_case(ble_frag, frames, case):
    msgs, sizes, ops, seq = case
    s = ble_frag.Sender(sizes[0])
    s.seq = seq
    values = []
    for i in range(len(msgs)):
        s.size = sizes[i % len(sizes)]
        values += [bytes(v) for v in s.values(frames.encode(msgs[i][0], unhexlify(msgs[i][1])))]
    j = ble_frag.Joiner()
    j._last = (seq - 1) & 0xFF
    got = []
    for v in damage(values, ops):
        got += [[k, hx(p)] for k, p in j.feed(v)]
    quiet = [[k, hx(p)] for k, p in j.idle()]
    d = j.decoder
    return [[hx(v) for v in values], s.seq, got, quiet, j.gaps, j.dups, j.bad, d.skipped, d.dropped]


def micropython_main(path):
    import json
    from pb.net import ble_frag, frames

    with open(path) as f:
        for line in f:
            print(json.dumps(run_case(ble_frag, frames, json.loads(line))))
"""

_HERE: dict[str, Any] = {}
exec(RUNNER, _HERE)  # (the runner is this file's)
DAMAGE = _HERE["damage"]


def _run_here(cases: list[Any]) -> list[Any]:
    return [json.loads(json.dumps(_HERE["run_case"](ble_frag, frames, c))) for c in cases]


@st.composite
def parity_cases(draw: st.DrawFn) -> list[Any]:
    msgs, size, ops = draw(damaged(("drop", "dup", "flip", "short")))
    more = draw(st.lists(sizes, max_size=3))
    return [[[k, p.hex()] for k, p in msgs], [size, *more], ops, draw(st.integers(0, 255))]


@pytest.mark.micropython
def test_micropython_cuts_and_joins_the_same() -> None:
    chunk = [["ota/chunk", (bytes(range(256)) * 16 + bytes(28)).hex()], ["cmd", b"{}".hex()]]
    cases: list[Any] = [
        [chunk, [20], [], 0],
        [chunk, [512], [], 255],
        [chunk * 3, [20, 244, 512, 19, 600], [], 7],
        [chunk, [20], [[3, "drop", 0, 1], [10, "dup", 0, 1], [300, "short", 1, 1]], 0],
    ]
    cases += collect(parity_cases(), 120)
    expected = _run_here(cases)
    code = RUNNER + "\nimport sys\nmicropython_main(sys.argv[1])\n"
    got = micropython.run_json_lines(code, cases)
    assert len(got) == len(cases)
    diffs = [(c, e, g) for c, e, g in zip(cases, expected, got, strict=True) if e != g]
    assert not diffs, "\n".join(repr(d)[:600] for d in diffs[:5])
    assert sum(e[4] for e in expected) > 0  # gaps were met
