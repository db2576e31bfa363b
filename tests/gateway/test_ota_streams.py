"""Version 2 of the update transfer at the gateway (docs/ota.md 3.2, 3.3): a
request for a stream of objects checked (check_request), planned
(plan_stream) and served under its window by the Updater, on a real
SQLite store with a real signed release. Every chunk queued is decoded as
the device decodes it and its bytes checked against the release's blobs.
As an attacker holding one device's credentials: nothing it asks for is
another device's, past an object's end, or of an update that has ended, and
asking again and again does not crowd another device's chunks out."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from firmware.pb.errors import ProtocolError
from firmware.pb.peer import ota_transfer as otaproto
from firmware.pb.peer.ota_transfer import FLAG_ERROR, FLAG_LAST, Stream, decode_chunk
from gateway.releases import ObjectInfo, StoredRelease
from gateway.store import Store
from gateway.updater import OUTBOX_PER_DEVICE, Updater
from gateway.updates import RefuseStream, Update, new_update, plan_stream
from ota.keys import Keys
from ota.release import Release

from ..support import messages
from .conftest import MakeRelease

UID = "a1b2c3d4e5f6"
T0 = 1_800_000_000.0
MANIFEST = b'{"signed":"{}","signatures":[]}' * 20
MANIFEST_ID = hashlib.sha256(MANIFEST).hexdigest()
BLOB = bytes(range(256)) * 10
BLOB_ID = hashlib.sha256(BLOB).hexdigest()
SMALL = b"a small blob"
SMALL_ID = hashlib.sha256(SMALL).hexdigest()
OTHER_ID = hashlib.sha256(b"another release's blob").hexdigest()
OBJECTS = {
    "manifest": ObjectInfo(len(MANIFEST), bytes.fromhex(MANIFEST_ID)[:8]),
    BLOB_ID: ObjectInfo(len(BLOB), bytes.fromhex(BLOB_ID)[:8]),
    SMALL_ID: ObjectInfo(len(SMALL), bytes.fromhex(SMALL_ID)[:8]),
}
CONTENT = {"manifest": MANIFEST, BLOB_ID: BLOB, SMALL_ID: SMALL}

Msg = dict[str, Any]


def update(**over: Any) -> Update:
    u = new_update(UID, "th-1", MANIFEST_ID, "thermostat", 2, "2026.11.1", 1, T0, 900)
    return replace(u, **over)


def stream_req(
    objs: list[list[Any]], win: int = 8, chunk: int = 1024, s: int = 40961, uid: str = UID, dev: str = "th-1"
) -> Msg:
    msg = {"v": 2, "dev": dev, "id": uid, "s": s, "objs": objs, "win": win, "chunk": chunk}
    return dict(otaproto.check_request(msg))


def ack_req(s: int, pos: int, win: int = 8, uid: str | None = UID, dev: str | None = "th-1") -> Msg:
    """An acknowledgement; without uid or dev, as today's devices send it (the topic says the device)."""
    named = {"id": uid} if uid is not None else {}
    named |= {"dev": dev} if dev is not None else {}
    return dict(otaproto.check_request({"v": 2, **named, "s": s, "ack": pos, "win": win}))


def refusal(plan: Stream | RefuseStream) -> tuple[int, bytes, str]:
    """(stream, tag, reason) of the error chunk a refusal sends, decoded as the device does."""
    assert isinstance(plan, RefuseStream), plan
    flags, idx, s, pos, off, tag, data = decode_chunk(plan.chunk())
    assert (flags, idx, pos, off) == (FLAG_ERROR, 0, 0, 0)
    return s, bytes(tag), bytes(data).decode("utf-8")


def tag_of(hex64: str) -> bytes:
    return bytes.fromhex(hex64)[:8]


# ---- planning a stream (sans-I/O) --------------------------------------------------


def test_a_stream_serves_the_objects_asked_for_in_order_in_chunks_of_the_size_asked() -> None:
    objs = [[BLOB_ID[:16], 100, 2000], ["manifest", 0, len(MANIFEST)], [SMALL_ID[:16], 2, 5]]
    plan = plan_stream(stream_req(objs, win=64, chunk=512), update(), OBJECTS)
    assert isinstance(plan, Stream) and (plan.s, plan.chunk, plan.win) == (40961, 512, 64)
    pieces = plan.chunks()
    assert plan.done()
    got: dict[int, bytes] = {0: b"", 1: b"", 2: b""}
    pos = 0
    for idx, key, tag, off, n, at, last in pieces:
        assert at == pos and n <= 512 and tag == OBJECTS[key].tag
        want = objs[idx]
        assert key == ("manifest" if want[0] == "manifest" else next(k for k in OBJECTS if k[:16] == want[0]))
        assert off == want[1] + len(got[idx])
        got[idx] += CONTENT[key][off : off + n]
        pos += n
        assert last == (idx == 2 and off + n == 7)
    assert [i for i, *_ in pieces] == sorted(i for i, *_ in pieces)  # object after object
    assert got == {0: BLOB[100:2100], 1: MANIFEST, 2: SMALL[2:7]}
    # every chunk but an object's last carries exactly `chunk` bytes
    sizes = [n for _, _, _, _, n, _, _ in pieces]
    assert sizes == [512, 512, 512, 464, 512, len(MANIFEST) - 512, 5]


def test_a_stream_sends_its_window_and_an_acknowledgement_moves_it() -> None:
    plan = plan_stream(stream_req([[BLOB_ID[:16], 0, len(BLOB)]], win=3, chunk=256), update(), OBJECTS)
    assert isinstance(plan, Stream)
    first = plan.chunks()
    assert [(off, n) for _, _, _, off, n, _, _ in first] == [(0, 256), (256, 256), (512, 256)]
    assert plan.chunks() == []  # nothing more until an acknowledgement
    assert not plan.ack(1024, 3)  # of bytes not sent yet: nothing
    assert plan.ack(512, 2)
    assert [off for _, _, _, off, _, _, _ in plan.chunks()] == [768]
    assert not plan.ack(256, 64)  # of an earlier point: nothing
    assert plan.chunks() == []


def test_an_update_the_device_does_not_have_is_refused_with_a_tag_of_zeros_for_the_manifest() -> None:
    # the caller passes None for an id that names no update of this device (another device's too)
    for objs in ([["manifest", 0, 10]], [["manifest", 0, 10], [BLOB_ID[:16], 0, 10]]):
        s, tag, reason = refusal(plan_stream(stream_req(objs, uid="ffffffffffff"), None, None))
        assert (s, tag, reason) == (40961, bytes(8), "no update ffffffffffff for this device")
    # a blob first: the tag its name gives, whatever the gateway knows
    _, tag, _ = refusal(plan_stream(stream_req([[OTHER_ID[:16], 0, 10]], uid="ffffffffffff"), None, None))
    assert tag == tag_of(OTHER_ID)


def test_an_update_whose_release_is_gone_is_refused() -> None:
    _, tag, reason = refusal(plan_stream(stream_req([["manifest", 0, 10]]), update(), None))
    assert (tag, reason) == (bytes(8), f"no update {UID} for this device")


def test_an_update_that_has_ended_is_refused_with_its_state() -> None:
    for state in ("committed", "failed", "rolled_back"):
        s, tag, reason = refusal(
            plan_stream(stream_req([["manifest", 0, 10]], s=7), update(state=state), OBJECTS)
        )
        assert (s, tag, reason) == (7, tag_of(MANIFEST_ID), f"update {UID} has ended: {state}")


def test_an_object_not_in_the_release_is_refused_even_after_objects_that_are() -> None:
    objs = [["manifest", 0, 10], [OTHER_ID[:16], 0, 10]]
    _, tag, reason = refusal(plan_stream(stream_req(objs), update(), OBJECTS))
    assert (tag, reason) == (tag_of(MANIFEST_ID), f"{OTHER_ID[:16]} is not part of update {UID}")
    objs = [[BLOB_ID[:16], 0, 10], [OTHER_ID[:16], 0, 10]]
    _, tag, _ = refusal(plan_stream(stream_req(objs), update(), OBJECTS))
    assert tag == tag_of(BLOB_ID)  # the first object's, not the one refused
    # a blob's name is the first 16 digits of its zsha256, not any other 16 of them
    _, _, reason = refusal(plan_stream(stream_req([[BLOB_ID[16:32], 0, 10]]), update(), OBJECTS))
    assert reason == f"{BLOB_ID[16:32]} is not part of update {UID}"


def test_bytes_past_an_object_s_end_are_refused() -> None:
    for name, size in (("manifest", len(MANIFEST)), (BLOB_ID[:16], len(BLOB))):
        ok = plan_stream(stream_req([[name, size - 1, 1]]), update(), OBJECTS)
        assert isinstance(ok, Stream)
        for off, n in ((size - 1, 2), (size, 1), (0, size + 1), (2**32 - 2, 1)):
            _, _, reason = refusal(plan_stream(stream_req([[name, off, n]]), update(), OBJECTS))
            assert reason == f"{name}: bytes {off}-{off + n} are past the end ({size} bytes)"
    # the second object too, and nothing of the first is served
    objs = [["manifest", 0, 10], [SMALL_ID[:16], 0, len(SMALL) + 1]]
    assert isinstance(plan_stream(stream_req(objs), update(), OBJECTS), RefuseStream)


def test_a_name_two_blobs_of_one_release_share_is_refused() -> None:
    twin_a, twin_b = "0123456789abcdef" + "a" * 48, "0123456789abcdef" + "b" * 48
    objects = OBJECTS | {twin_a: ObjectInfo(100, tag_of(twin_a)), twin_b: ObjectInfo(200, tag_of(twin_b))}
    _, tag, reason = refusal(plan_stream(stream_req([["0123456789abcdef", 0, 50]]), update(), objects))
    assert (tag, reason) == (tag_of(twin_a), f"0123456789abcdef is not part of update {UID}")
    # the other blobs of that release are served as before
    assert isinstance(plan_stream(stream_req([[BLOB_ID[:16], 0, 50]]), update(), objects), Stream)


SIZES = {"manifest": len(MANIFEST), BLOB_ID[:16]: len(BLOB), SMALL_ID[:16]: len(SMALL)}


@st.composite
def stream_objects(draw: st.DrawFn) -> list[Any]:
    """[name, off, len]: mostly bytes an object of the release has, else anything valid."""
    if draw(st.integers(0, 9)) < 8:
        name = draw(st.sampled_from(sorted(SIZES)))
        off = draw(st.integers(0, SIZES[name] - 1))
        return [name, off, draw(st.integers(1, SIZES[name] - off + 1))]  # (one past the end, at times)
    name = draw(st.one_of(st.sampled_from([OTHER_ID[:16], BLOB_ID[-16:]]), st.sampled_from(sorted(SIZES)),
                          st.text("0123456789abcdef", min_size=16, max_size=16)))  # fmt: skip
    off = draw(st.integers(0, 2**32 - 2))
    return [name, off, draw(st.integers(1, 2**32 - 1 - off))]


@settings(max_examples=500, deadline=None)
@given(
    objs=st.lists(stream_objects(), min_size=1, max_size=16),
    win=st.integers(1, 64),
    chunk=st.integers(64, 4096),
    acks=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 64)), max_size=20),
    state=st.sampled_from(["offered", "downloading", "trial", "failed"]),
)
def test_a_stream_serves_only_bytes_of_the_release_and_only_those_asked_for(
    objs: list[list[Any]], win: int, chunk: int, acks: list[tuple[int, int]], state: str
) -> None:
    asked = objs
    plan = plan_stream(stream_req(asked, win=win, chunk=chunk), update(state=state), OBJECTS)
    event("served" if isinstance(plan, Stream) else "refused")
    if isinstance(plan, RefuseStream):
        assert plan.s == 40961 and len(plan.chunk()) <= otaproto.CHUNK_HEADER + 120
        return
    assert state != "failed"
    held = [b""] * len(asked)

    def take(sent: list[tuple[int, str, bytes, int, int, int, bool]]) -> None:
        for idx, key, tag, off, n, at, last in sent:
            name, start, length = asked[idx]
            # an object of the release, the one its name gives, within what was asked
            assert key in OBJECTS and key[:16] == name[:16] and tag == OBJECTS[key].tag
            assert 0 < n <= chunk and at == sum(map(len, held))
            assert off == start + len(held[idx]) and off + n <= start + length <= OBJECTS[key].size
            held[idx] += CONTENT[key][off : off + n]
            assert last == (idx == len(asked) - 1 and off + n == start + length)

    take(plan.chunks())
    for at, w in acks:  # (most of them of bytes not sent: they move nothing)
        moved = plan.ack(at, w)
        assert moved == (plan.acked == at <= plan.pos)
        sent = plan.chunks()
        assert moved or sent == []
        take(sent)
    while not plan.done():  # acknowledged to the end: everything asked for, once
        assert plan.ack(plan.pos, 64)
        take(plan.chunks())
    assert held == [
        CONTENT[next(k for k in OBJECTS if k[:16] == name[:16])][off : off + n] for name, off, n in asked
    ]


def test_an_error_reason_is_at_most_120_bytes() -> None:
    plan = RefuseStream(1, bytes(8), "x" * 500)
    *_, data = decode_chunk(plan.chunk())
    assert len(data) == 120


# ---- checking a request (version 2) -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
# values near the limits, of the right type or not
edgy = st.one_of(
    st.sampled_from([0, 1, 63, 64, 65, 4096, 4097, 2**32 - 1, 2**32, -1, True, False, 2.0, "1", None]),
    json_values,
)
names = st.one_of(
    st.just("manifest"),
    st.text("0123456789abcdef", min_size=16, max_size=16),
    st.text("0123456789abcdefABCDEFx", min_size=15, max_size=17),
    json_values,
)
objects_lists = st.one_of(
    st.lists(st.one_of(st.tuples(names, edgy, edgy).map(list), json_values), max_size=18), json_values
)
near_requests = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.sampled_from([2, 2.0, 1, True, "2"]), json_values),
        "dev": st.one_of(st.just("th-1"), json_values),
        "id": st.one_of(st.just(UID), st.text("0123456789abcdef", min_size=11, max_size=13), json_values),
        "s": edgy,
        "objs": objects_lists,
        "ack": edgy,
        "win": edgy,
        "chunk": edgy,
        "obj": st.one_of(st.just("manifest"), json_values),
        "off": edgy,
        "len": edgy,
        "seq": edgy,
    },
)


@settings(max_examples=600, deadline=None)
@given(st.one_of(near_requests, json_values))
def test_any_json_value_is_a_request_or_a_protocol_error(msg: Any) -> None:
    wire = json.loads(json.dumps(msg))
    try:
        checked = otaproto.check_request(wire)
    except ProtocolError as exc:
        assert exc.code in ("unsupported_version", "bad_type", "bad_value", "missing_field"), exc.code
        return
    # what passes is what the gateway can serve without a second look
    assert checked is wire and checked["v"] in (1, 2)
    assert otaproto.is_update_id(checked["id"]) and isinstance(checked["dev"], str)
    if checked["v"] == 2:
        assert 0 <= checked["s"] < 2**32 and 1 <= checked["win"] <= otaproto.MAX_WINDOW
        assert ("ack" in checked) != ("objs" in checked)
        if "objs" in checked:
            assert 64 <= checked["chunk"] <= otaproto.MAX_CHUNK
            assert 1 <= len(checked["objs"]) <= otaproto.MAX_OBJECTS
            for name, off, n in checked["objs"]:
                assert otaproto.is_object_name(name) and n >= 1 and off + n < 2**32


u32 = st.integers(0, 2**32 - 1)
valid_objs = st.lists(
    st.tuples(
        st.one_of(st.just("manifest"), st.text("0123456789abcdef", min_size=16, max_size=16)),
        st.integers(0, 2**31),
        st.integers(1, 2**31 - 1),
    ).map(list),
    min_size=1,
    max_size=16,
)
valid_requests = st.fixed_dictionaries(
    {
        "v": st.just(2),
        "dev": st.text(min_size=1, max_size=20),
        "id": st.text("0123456789abcdef", min_size=12, max_size=12),
        "s": u32,
        "objs": valid_objs,
        "win": st.integers(1, 64),
        "chunk": st.integers(64, 4096),
    }
)
valid_acks = st.fixed_dictionaries(
    {
        "v": st.just(2),
        "dev": st.text(min_size=1, max_size=20),
        "id": st.text("0123456789abcdef", min_size=12, max_size=12),
        "s": u32,
        "ack": u32,
        "win": st.integers(1, 64),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(valid_requests, valid_acks))
def test_a_valid_request_goes_over_the_wire_and_back_unchanged(msg: Msg) -> None:
    wire = json.loads(json.dumps(msg).encode("utf-8"))
    assert otaproto.check_request(wire) == msg


def test_a_request_the_device_s_receiver_builds_is_valid() -> None:
    rx = otaproto.Receiver("th-1", UID, 4096, 8)
    req = rx.request([["manifest", tag_of(MANIFEST_ID), 0, len(MANIFEST)]])
    assert otaproto.check_request(json.loads(json.dumps(req))) == req


GOOD: Msg = {"v": 2, "dev": "th-1", "id": UID, "s": 5, "objs": [["manifest", 0, 10]], "win": 8, "chunk": 4096}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"win": 0}, "bad_value"),
        ({"win": 1}, None),
        ({"win": 64}, None),
        ({"win": 65}, "bad_value"),
        ({"win": True}, "bad_value"),
        ({"win": 8.0}, "bad_value"),
        ({"chunk": 63}, "bad_value"),
        ({"chunk": 64}, None),
        ({"chunk": 4096}, None),
        ({"chunk": 4097}, "bad_value"),
        ({"objs": []}, "bad_value"),
        ({"objs": [["manifest", 0, 10]] * 16}, None),
        ({"objs": [["manifest", 0, 10]] * 17}, "bad_value"),
        ({"objs": [["manifest", 0, 0]]}, "bad_value"),
        ({"objs": [["manifest", 0, 2**32 - 1]]}, None),
        ({"objs": [["manifest", 1, 2**32 - 1]]}, "bad_value"),
        ({"objs": [["manifest", 2**32 - 2, 1]]}, None),
        ({"objs": [["manifest", 2**32 - 1, 1]]}, "bad_value"),
        ({"objs": [["manifest", 2**32, 1]]}, "bad_value"),
        ({"objs": [["manifest", -1, 1]]}, "bad_value"),
        ({"objs": [["manifest", 0, True]]}, "bad_value"),
        ({"objs": [["manifest", 0]]}, "bad_type"),
        ({"objs": [["manifest", 0, 10, 0]]}, "bad_type"),
        ({"objs": [{"name": "manifest"}]}, "bad_type"),
        ({"objs": [["MANIFEST", 0, 10]]}, "bad_value"),
        ({"objs": [["0123456789ABCDEF", 0, 10]]}, "bad_value"),
        ({"objs": [["0123456789abcde", 0, 10]]}, "bad_value"),
        ({"objs": [[BLOB_ID, 0, 10]]}, "bad_value"),  # (the whole hash is version 1's name)
        ({"objs": [["0123456789abcdef", 0, 10]]}, None),
        ({"objs": {"manifest": [0, 10]}}, "bad_value"),
        ({"s": 2**32 - 1}, None),
        ({"s": 2**32}, "bad_value"),
        ({"s": -1}, "bad_type"),
        ({"s": False}, "bad_type"),
        ({"ack": 0}, "bad_value"),  # objs and ack
        ({"id": "A1B2C3D4E5F6"}, "bad_value"),
        ({"id": UID + "0"}, "bad_value"),
        ({"dev": 7}, "missing_field"),
        ({"v": 3}, "unsupported_version"),
    ],
)
def test_the_limits_of_a_request(change: Msg, code: str | None) -> None:
    msg = GOOD | change
    if code is None:
        assert otaproto.check_request(msg) == msg
        return
    with pytest.raises(ProtocolError) as caught:
        otaproto.check_request(msg)
    assert caught.value.code == code


def test_the_limits_of_an_acknowledgement() -> None:
    ack = {"v": 2, "dev": "th-1", "id": UID, "s": 5, "ack": 0, "win": 1}
    assert otaproto.check_request(ack) == ack
    assert otaproto.check_request(ack | {"ack": 2**32 - 1, "win": 64}) == ack | {"ack": 2**32 - 1, "win": 64}
    for change in ({"ack": 2**32}, {"ack": -1}, {"ack": None}, {"win": 0}, {"win": 65}, {"s": "5"}):
        with pytest.raises(ProtocolError):
            otaproto.check_request(ack | change)


# ---- the Updater: streams queued, windows moved, on a real store and release --------


@dataclass
class Served:
    """An Updater on a real store with one release published and one device
    th-a updating to it (th-b has an update of its own to another release)."""

    ota: Updater
    store: Store
    release: Release
    stored: StoredRelease
    uid: str  # th-a's update
    other: str  # th-b's update
    other_release: Release
    sent: list[tuple[str, bytes, int, bool]]  # what the Updater published

    async def queued(self) -> list[tuple[str, tuple[int, int, int, int, int, bytes, bytes]]]:
        """Every chunk queued since the last call, as the gateway's sender
        published it: (topic, decoded)."""
        # (the sender takes what waits, a batch at a time, each batch's publishes at once)
        for _ in range(10_000):
            await asyncio.sleep(0)
            if self.ota._outbox.empty():
                for _ in range(5):  # (the last batch's publishes)
                    await asyncio.sleep(0)
                if self.ota._outbox.empty():
                    break
        assert self.ota._outbox.empty()
        out = []
        for topic, payload, qos, retain in self.sent:
            if topic.endswith("/ota/chunk"):
                assert (qos, retain) == (0, False)
                flags, idx, s, pos, off, tag, data = decode_chunk(payload)
                out.append((topic, (flags, idx, s, pos, off, bytes(tag), bytes(data))))
        self.sent.clear()
        return out

    def blob(self, r: Release | None = None) -> tuple[str, bytes]:
        """The largest blob of a release: (zsha256, its bytes)."""
        f = max((r or self.release).files, key=lambda f: f.zsize)
        return f.zsha256, (r or self.release).blob_path(f).read_bytes()


MakeServed = Callable[..., Any]


@pytest.fixture
async def served(tmp_path: Path, keys: Keys, make_release: MakeRelease) -> AsyncIterator[MakeServed]:
    opened: list[tuple[Served, asyncio.Task[None]]] = []

    async def make(outbox: int = 1024) -> Served:
        store = Store(tmp_path / f"gw-{len(opened)}.db")
        for dev in ("th-a", "th-b"):
            store.upsert_hello(dev, messages.hello(dev), T0)
        ota = Updater(store, keys=keys, devices=store.device, online=lambda dev: True, outbox=outbox)
        sent: list[tuple[str, bytes, int, bool]] = []

        async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            sent.append((topic, payload, qos, retain))

        ota.publish = publish
        # a blob that takes many chunks: notes that do not compress much
        mine = make_release(2, extra=secrets.token_hex(6000))
        theirs = make_release(3, extra=secrets.token_hex(6001))
        stored, _ = ota.releases.add(mine.path, T0)
        ota.releases.add(theirs.path, T0)
        u = await ota.start("th-a", "thermostat@2")
        other = await ota.start("th-b", "thermostat@3")
        sent.clear()  # (the offers)
        s = Served(ota, store, mine, stored, u.id, other.id, theirs, sent)
        opened.append((s, asyncio.create_task(ota.send_loop())))
        return s

    yield make
    for s, sender in opened:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        s.ota.close()
        s.store.close()


def v2(uid: str, objs: list[list[Any]], win: int, chunk: int, s: int = 100, dev: str = "th-a") -> Msg:
    return stream_req(objs, win=win, chunk=chunk, s=s, uid=uid, dev=dev)


async def test_a_stream_queues_its_window_and_each_acknowledgement_the_next_chunks(
    served: MakeServed,
) -> None:
    w = await served()
    zsha, blob = w.blob()
    assert len(blob) > 20 * 256
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 0, len(blob)]], win=4, chunk=256))
    got = await w.queued()
    assert [t for t, _ in got] == ["pb/th-a/ota/chunk"] * 4
    assert [(c[2], c[3], c[4], c[5], c[6]) for _, c in got] == [
        (100, i * 256, i * 256, tag_of(zsha), blob[i * 256 : (i + 1) * 256]) for i in range(4)
    ]
    assert all(c[0] == 0 and c[1] == 0 for _, c in got)
    # half the window acknowledged, a larger window asked for: up to ack + 5 chunks
    w.ota.on_request("th-a", ack_req(100, 512, win=5, uid=w.uid, dev="th-a"))
    assert [c[3] for _, c in await w.queued()] == [1024, 1280, 1536]
    # the rest, acknowledged as it comes, to the end: the whole blob, once, the last chunk flagged
    # (the acknowledgements as a device sends them: the stream alone, the topic says the device)
    held = blob[:1792]
    while len(held) < len(blob):
        w.ota.on_request("th-a", ack_req(100, len(held), win=64, uid=None, dev=None))
        for _, (flags, _, _, pos, off, _, data) in await w.queued():
            assert pos == off == len(held)
            held += data
            assert bool(flags & FLAG_LAST) == (len(held) == len(blob))
    assert held == blob and "th-a" not in w.ota._streams  # (done: forgotten)
    u = w.ota.active("th-a")
    assert u is not None and (u.served, u.requests, u.errors) == (len(blob), 1, 0)
    assert w.ota.stats["served"] == len(blob) and w.ota.stats["dropped"] == 0


async def test_a_stream_of_several_objects_brings_each_in_order(served: MakeServed) -> None:
    w = await served()
    files = sorted(w.release.files, key=lambda f: f.zsize)[:3]
    objs = [["manifest", 0, len(w.release.manifest)]] + [[f.zsha256[:16], 0, f.zsize] for f in files]
    w.ota.on_request("th-a", v2(w.uid, objs, win=64, chunk=4096))
    want = [w.release.manifest] + [w.release.blob_path(f).read_bytes() for f in files]
    got = [b""] * len(want)
    pos = 0
    tags = [tag_of(w.stored.id)] + [tag_of(f.zsha256) for f in files]
    chunks = [c for _, c in await w.queued()]
    for _, idx, s, at, off, tag, data in chunks:
        assert (s, at, off, tag) == (100, pos, len(got[idx]), tags[idx])
        got[idx] += data
        pos += len(data)
    assert got == want and [c[0] for c in chunks] == [0] * (len(chunks) - 1) + [FLAG_LAST]


async def test_an_acknowledgement_of_another_stream_update_or_an_earlier_point_queues_nothing(
    served: MakeServed,
) -> None:
    w = await served()
    zsha, blob = w.blob()
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 0, len(blob)]], win=4, chunk=256, s=100))
    assert len(await w.queued()) == 4
    w.ota.on_request("th-a", ack_req(100, 512, win=4, uid=w.uid, dev="th-a"))
    assert len(await w.queued()) == 2
    for ack in (
        ack_req(101, 768, win=64, uid=w.uid, dev="th-a"),  # another stream
        ack_req(99, 768, win=64, uid=w.uid, dev="th-a"),
        ack_req(100, 768, win=64, uid=w.other, dev="th-a"),  # another update (th-b's)
        ack_req(100, 768, win=64, uid="0123456789ab", dev="th-a"),  # no update at all
        ack_req(100, 256, win=64, uid=w.uid, dev="th-a"),  # an earlier point
        ack_req(100, 1536 + 1, win=64, uid=w.uid, dev="th-a"),  # bytes not sent yet
        ack_req(100, 2**32 - 1, win=64, uid=w.uid, dev="th-a"),
        ack_req(100, 768, win=64, uid=w.uid, dev="th-b"),  # th-b, naming th-a's stream
    ):
        w.ota.on_request(ack["dev"], ack)
        assert await w.queued() == [], ack
    # the stream is still there: its own acknowledgement moves it
    w.ota.on_request("th-a", ack_req(100, 1536, win=1, uid=w.uid, dev="th-a"))
    assert [c[3] for _, c in await w.queued()] == [1536]


async def test_a_new_request_replaces_the_stream(served: MakeServed) -> None:
    w = await served()
    zsha, blob = w.blob()
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 0, len(blob)]], win=2, chunk=256, s=100))
    await w.queued()
    # asked again from byte 300 (a loss): a new stream, from there
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 300, len(blob) - 300]], win=2, chunk=128, s=101))
    got = await w.queued()
    assert [(c[2], c[3], c[4], c[6]) for _, c in got] == [
        (101, 0, 300, blob[300:428]),
        (101, 128, 428, blob[428:556]),
    ]
    # the first stream's acknowledgements move nothing now
    w.ota.on_request("th-a", ack_req(100, 512, win=8, uid=w.uid, dev="th-a"))
    assert await w.queued() == []
    w.ota.on_request("th-a", ack_req(101, 256, win=1, uid=w.uid, dev="th-a"))
    assert [(c[2], c[4]) for _, c in await w.queued()] == [(101, 556)]
    # a request refused ends the stream too
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], len(blob), 1]], win=2, chunk=128, s=102))
    ((_, refused),) = await w.queued()
    assert refused[0] == FLAG_ERROR and refused[2] == 102
    w.ota.on_request("th-a", ack_req(101, 384, win=8, uid=w.uid, dev="th-a"))
    assert await w.queued() == [] and "th-a" not in w.ota._streams


async def test_another_device_s_update_gets_an_error_chunk_and_never_its_bytes(served: MakeServed) -> None:
    w = await served()
    zsha, blob = w.blob(w.other_release)
    theirs = w.other_release.manifest
    asks: tuple[list[list[Any]], ...] = (
        [["manifest", 0, len(theirs)]],
        [[zsha[:16], 0, len(blob)]],
        [[f.zsha256[:16], 0, f.zsize] for f in w.other_release.files[:16]],
    )
    for objs in asks:
        w.ota.on_request("th-a", v2(w.other, objs, win=64, chunk=64, s=9))
        ((topic, (flags, idx, s, pos, off, tag, data)),) = await w.queued()
        assert topic == "pb/th-a/ota/chunk" and (flags, idx, s, pos, off) == (FLAG_ERROR, 0, 9, 0, 0)
        assert data == f"no update {w.other} for this device".encode()
        # not even the tag of their manifest: 8 zero bytes, or the name asked for
        first = str(objs[0][0])
        assert tag == (bytes(8) if first == "manifest" else bytes.fromhex(first))
    assert "th-a" not in w.ota._streams
    other = w.ota.active("th-b")
    assert other is not None and (other.served, other.requests, other.errors) == (0, 0, 0)
    assert w.ota.stats["served"] == 0 and w.ota.stats["error_chunks"] == 3
    # a stream th-b holds is not moved by th-a's acknowledgement of it, nor replaced by th-a's request
    w.ota.on_request("th-b", v2(w.other, [[zsha[:16], 0, len(blob)]], win=1, chunk=64, s=9, dev="th-b"))
    assert [t for t, _ in await w.queued()] == ["pb/th-b/ota/chunk"]
    w.ota.on_request("th-a", ack_req(9, 64, win=64, uid=w.other, dev="th-a"))
    w.ota.on_request("th-a", v2(w.uid, [["manifest", 0, 10]], win=1, chunk=64, s=9))
    assert [t for t, _ in await w.queued()] == ["pb/th-a/ota/chunk"]
    w.ota.on_request("th-b", ack_req(9, 64, win=1, uid=w.other, dev="th-b"))
    ((topic, (_, _, _, pos, off, _, data)),) = await w.queued()
    assert (topic, pos, off, data) == ("pb/th-b/ota/chunk", 64, 64, blob[64:128])


async def test_a_release_blob_of_another_release_under_my_update_is_refused(served: MakeServed) -> None:
    w = await served()
    mine = {f.zsha256 for f in w.release.files}
    only_theirs = next(f for f in w.other_release.files if f.zsha256 not in mine)
    w.ota.on_request("th-a", v2(w.uid, [[only_theirs.zsha256[:16], 0, only_theirs.zsize]], win=8, chunk=64))
    ((_, (flags, _, _, _, _, _, data)),) = await w.queued()
    assert (
        flags == FLAG_ERROR and data == f"{only_theirs.zsha256[:16]} is not part of update {w.uid}".encode()
    )
    u = w.ota.active("th-a")
    assert u is not None and (u.served, u.requests, u.errors) == (0, 1, 1)


async def test_the_stream_of_an_update_that_ends_stops(served: MakeServed) -> None:
    w = await served()
    zsha, blob = w.blob()
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 0, len(blob)]], win=2, chunk=256, s=100))
    assert len(await w.queued()) == 2
    status = {"v": 1, "dev": "th-a", "id": w.uid, "state": "failed", "reason": "no_space: full"}
    ended = w.ota.on_status("th-a", dict(otaproto.check_status(status)), T0 + 1)
    assert ended is not None and ended.ended
    w.ota.on_request("th-a", ack_req(100, 512, win=8, uid=w.uid, dev="th-a"))
    assert await w.queued() == []
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 512, 256]], win=2, chunk=256, s=101))
    ((_, (flags, _, s, _, _, _, data)),) = await w.queued()
    assert (flags, s, data) == (FLAG_ERROR, 101, f"update {w.uid} has ended: failed".encode())


async def test_the_stream_of_an_update_replaced_by_a_new_one_stops(served: MakeServed) -> None:
    w = await served()
    zsha, blob = w.blob()
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 0, len(blob)]], win=2, chunk=256, s=5))
    assert len(await w.queued()) == 2
    await w.ota.start("th-a", "thermostat@2")
    w.ota.on_request("th-a", ack_req(5, 512, win=8, uid=w.uid, dev="th-a"))
    assert await w.queued() == [] and "th-a" not in w.ota._streams


async def test_the_outbox_is_bounded_and_a_window_it_has_no_room_for_waits_for_room(
    served: MakeServed,
) -> None:
    w = await served(outbox=8)
    zsha, blob = w.blob()
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 0, len(blob)]], win=64, chunk=64))
    assert w.ota._outbox.qsize() == 8  # (no more at once than it holds)
    # the rest of the window goes as the outbox drains, in order: nothing is dropped (the
    # device would find it lost, ask again and halve its window)
    got = await w.queued()
    assert len(got) == 64 and w.ota.stats["dropped"] == 0
    assert b"".join(c[6] for _, c in got) == blob[:4096]
    # what is no stream's (a refusal) and finds it full is dropped and counted, nothing raised
    w.ota.on_request("th-b", v2(w.other, [[w.blob(w.other_release)[0][:16], 0, 4096]], win=64, chunk=64))
    assert w.ota._outbox.qsize() == 8
    for _ in range(10):
        w.ota.on_request("th-a", v2("0123456789ab", [["manifest", 0, 1]], win=1, chunk=64))
    assert w.ota.stats["dropped"] == 10
    assert len(await w.queued()) == 64


async def test_a_stream_that_cannot_be_served_as_the_outbox_drains_stops_nothing_else(
    served: MakeServed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rest of a window is served by the sender as the outbox drains: an
    error there (a database that fails a moment) is logged, and the sender
    goes on sending the others' chunks."""
    w = await served(outbox=8)
    zsha, blob = w.blob()
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 0, len(blob)]], win=64, chunk=64))
    assert w.ota._outbox.qsize() == 8

    def failing(*_: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(w.ota.releases, "get", failing)
    assert len(await w.queued()) == 8  # (the rest could not be served: the device asks again)
    monkeypatch.undo()
    theirs, their_blob = w.blob(w.other_release)
    w.ota.on_request("th-b", v2(w.other, [[theirs[:16], 0, len(their_blob)]], win=4, chunk=64))
    assert len(await w.queued()) == 4


async def test_one_device_asking_again_and_again_does_not_crowd_out_another_s_chunks(
    served: MakeServed,
) -> None:
    w = await served()
    zsha, blob = w.blob()
    theirs, their_blob = w.blob(w.other_release)
    # asked again at once (a loss): the old stream's window and the new one's both fit
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 0, len(blob)]], win=64, chunk=64, s=1))
    w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 64, len(blob) - 64]], win=64, chunk=64, s=2))
    assert w.ota.stats["dropped"] == 0 and len(await w.queued()) == 128 == OUTBOX_PER_DEVICE
    # asked again and again, faster than the chunks go out: 128 of them wait, the latest
    # stream's window goes on as they go out, and nothing is dropped
    for s in range(3, 23):
        w.ota.on_request("th-a", v2(w.uid, [[zsha[:16], 0, len(blob)]] * 16, win=64, chunk=64, s=s))
    assert w.ota._outbox.qsize() == OUTBOX_PER_DEVICE and w.ota.stats["dropped"] == 0
    # another device's chunks are not behind th-a's backlog: they are queued at once
    w.ota.on_request("th-b", v2(w.other, [[theirs[:16], 0, len(their_blob)]], win=8, chunk=64, s=1))
    assert w.ota._outbox.qsize() == OUTBOX_PER_DEVICE + 8
    got = await w.queued()
    topics = [t for t, _ in got]
    assert topics[:136] == ["pb/th-a/ota/chunk"] * 128 + ["pb/th-b/ota/chunk"] * 8
    assert b"".join(c[6] for _, c in got[128:136]) == their_blob[:512]
    # then the rest of th-a's latest stream's window (stream 22), and nothing else
    assert topics[136:] == ["pb/th-a/ota/chunk"] * (len(got) - 136) and {c[2] for _, c in got[136:]} == {22}
    assert w.ota.stats["dropped"] == 0
