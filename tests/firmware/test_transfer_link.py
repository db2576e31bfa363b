"""The update transfer over a link that loses, repeats, delays, corrupts and
cuts short the messages hypothesis picks, in either direction: the device's
Receiver (firmware/pb/ota/transfer.py) against the gateway's Stream
(firmware/pb/peer/ota_transfer.py) on a simulated clock, and the agent's
fetch (firmware/pb/ota/download.py) writing real files against a gateway in
the same process. What the device keeps is always the objects' bytes, in
order, from where it stood; a transfer always ends; over a clean link one
request brings every chunk."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.pb.errors import ProtocolError
from firmware.pb.hal import Hal
from firmware.pb.ota import download as pb_ota
from firmware.pb.ota.transfer import Receiver
from firmware.pb.peer.ota_transfer import Stream, check_request, encode_chunk

DEV = "th-1"
UID = "5f2a9c01b7e4"
TIMEOUT_MS = 100  # the simulated link's ota_timeout_ms
TRIES = 8  # ota_tries
STEPS = 1_000_000  # a run that takes more has not ended


@dataclass(repr=False)
class Obj:
    """An object of an update as both ends know it: the gateway serves any
    bytes of data; the device holds data[:start] and wants it up to end."""

    name: str  # "manifest", or the first 16 hex digits of a blob's hash
    data: bytes
    start: int
    end: int
    origin: int = 0  # where the device's file of it begins (the agent's)

    def __repr__(self) -> str:
        where = f"origin={self.origin}, start={self.start}, end={self.end}"
        return f"Obj({self.name!r}, <{len(self.data)} bytes {self.digest[:8]}>, {where})"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def tag(self) -> bytes:
        return bytes.fromhex(self.digest[:16])


def _bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@st.composite
def objects(draw: st.DrawFn, chunk: int, most: int = 6, longest: int = 12) -> list[Obj]:
    """1 to most objects of up to longest chunks each (the manifest first,
    if there is one), each held in part, in whole or not at all, and wanted
    up to its end or short of it."""
    out = []
    n = draw(st.integers(1, most))
    manifest = draw(st.booleans())
    for k in range(n):
        size = draw(st.integers(1, longest * chunk))
        data = _bytes(draw(st.integers(0, 2**32)) * 17 + k, size)
        end = draw(st.one_of(st.just(size), st.integers(0, size)))
        start = draw(st.one_of(st.just(0), st.integers(0, end)))
        name = "manifest" if manifest and k == 0 else hashlib.sha256(data).hexdigest()[:16]
        out.append(Obj(name, data, start, end))
    return out


# ---- the link --------------------------------------------------------------------------

# What befalls one message: None (it arrives), or a fault and a number that
# says how (when a late one or a repeat arrives, the bit flipped, the bytes kept)
Fault = tuple[str, int] | None
FAULTS = ("lose", "repeat", "delay", "flip", "cut")
fault = st.one_of(st.none(), st.tuples(st.sampled_from(FAULTS), st.integers(0, 2**16)))
faults = st.lists(fault, max_size=24)


def befall(fault: Fault, payload: bytes, late_ms: int) -> list[tuple[int, bytes]]:
    """What arrives of payload: [(ms later than it would, bytes)]."""
    if fault is None:
        return [(0, payload)]
    kind, n = fault
    if kind == "lose":
        return []
    if kind == "repeat":
        return [(0, payload), (n % late_ms, payload)]
    if kind == "delay":
        return [(1 + n % late_ms, payload)]
    if kind == "flip":
        bit = n % (8 * len(payload))
        flipped = bytearray(payload)
        flipped[bit // 8] ^= 1 << (bit % 8)
        return [(0, bytes(flipped))]
    return [(0, payload[: n % len(payload)])]  # cut


class Gateway:
    """The gateway's side of one device, as gateway/updater.py serves it: a
    request, validated, starts a stream and replaces the one before, or is
    answered with an error chunk when it names bytes the gateway does not
    have; an acknowledgement of the stream under way moves its window; any
    other message is rejected."""

    def __init__(self, objs: list[Obj]) -> None:
        self.by_name = {o.name: o for o in objs}
        self.stream: Any = None
        self.chunks = 0
        self.refused: list[bytes] = []

    def receive(self, raw: bytes) -> list[bytes]:
        """The chunks raw, a message from the device, is answered with."""
        try:
            msg = check_request(json.loads(raw))
        except (ValueError, ProtocolError):
            return []
        if msg["v"] != 2 or msg.get("dev", DEV) != DEV:  # (an acknowledgement's device is its link's)
            return []
        if "ack" in msg:
            s = self.stream
            ours = s is not None and msg.get("id", UID) == UID and s.s == msg["s"]
            if ours and s.ack(msg["ack"], msg["win"]):
                return self.serve()
            return []
        self.stream = None
        objs = []
        for name, off, n in msg["objs"]:
            o = self.by_name.get(name) if msg["id"] == UID else None
            if o is None or off + n > len(o.data):
                self.refused.append(raw)
                return [encode_chunk(msg["s"], 0, 0, 0, b"not part of the update", bytes(8), error=True)]
            objs.append([name, o.tag, off, off + n])
        self.stream = Stream(msg["s"], objs, msg["chunk"], msg["win"])
        return self.serve()

    def serve(self) -> list[bytes]:
        s = self.stream
        out = []
        for idx, name, tag, off, n, pos, last in s.chunks():
            out.append(
                encode_chunk(s.s, idx, pos, off, self.by_name[name].data[off : off + n], tag, last=last)
            )
        self.chunks += len(out)
        if s.done():
            self.stream = None  # (an acknowledgement of it moves nothing now)
        return out


# ---- the device's side on a simulated clock --------------------------------------------


@dataclass
class Run:
    outcome: str = ""  # complete, stalled (tries past the limit) or refused (an error chunk)
    requests: int = 0  # requests for a stream, the first one included
    acks: int = 0
    kept: int = 0
    sent: int = 0  # chunks the gateway sent
    left: int = 0  # messages still in flight at the end
    losses: int = 0
    dropped: int = 0
    timeouts: int = 0
    steps: int = 0  # messages delivered and silences waited out
    faults: int = 0  # messages a fault befell
    error: str = ""
    altered_refused: bool = False  # only requests the device did not build were refused
    held: list[bytearray] = field(default_factory=list)


class Link:
    """The messages in flight, each arriving at its time (at the same time,
    in the order sent); the faults befall the messages one by one, down
    (chunks) and up (requests and acknowledgements) apart; once they run
    out, every message arrives."""

    def __init__(self, down: list[Fault], up: list[Fault], run: Run) -> None:
        self.faults = {"down": iter(down), "up": iter(up)}
        self.run = run
        self.flight: list[tuple[int, int, str, bytes]] = []
        self.order = itertools.count()

    def send(self, now: int, way: str, payload: bytes) -> None:
        fault = next(self.faults[way], None)
        self.run.faults += fault is not None
        for late, p in befall(fault, payload, 3 * TIMEOUT_MS):
            heapq.heappush(self.flight, (now + 1 + late, next(self.order), way, p))

    def next_time(self) -> int | None:
        return self.flight[0][0] if self.flight else None

    def pop(self) -> tuple[int, str, bytes]:
        t, _, way, p = heapq.heappop(self.flight)
        return t, way, p


def transfer(
    objs: list[Obj], chunk: int, win: int, seq: int, down: list[Fault], up: list[Fault], tries: int | None
) -> Run:
    """The transfer of objs between a Receiver and the Gateway, driven as
    the agent drives it: it asks again at a loss, and after a silence of
    TIMEOUT_MS doubled with each try; it gives up past tries (None: never).
    Every byte kept is checked as it is kept: at the next offset of its
    object, before the object's end, and the object's."""
    run = Run(held=[bytearray(o.data[: o.start]) for o in objs])
    link = Link(down, up, run)
    gateway = Gateway(objs)
    built: set[bytes] = set()
    rx = Receiver(DEV, UID, chunk, win)
    rx.seq = seq
    want = [[o.name, o.tag, o.start, o.end] for o in objs]
    now = 0

    def send(msg: dict[str, Any]) -> None:
        raw = json.dumps(msg).encode()
        built.add(raw)
        link.send(now, "up", raw)

    if any(o.start < o.end for o in objs):
        send(rx.request(want))
        run.requests += 1
    rx.ts = now
    while rx.cur < len(rx.objs):
        assert run.steps < STEPS, "the transfer does not end"
        if tries is not None and rx.tries > tries:
            run.outcome = "stalled"
            break
        run.steps += 1
        due = rx.ts + min(TIMEOUT_MS << rx.tries, 20000)
        t = link.next_time()
        if t is None or t > due:
            now = rx.ts = due
            run.timeouts += 1
            run.requests += 1
            send(rx.request())
            continue
        now, way, payload = link.pop()
        if way == "up":
            for c in gateway.receive(payload):
                link.send(now, "down", c)
            continue
        got = rx.feed(payload)
        if got is None:
            run.dropped += 1
        elif got is True:
            run.losses += 1
            run.requests += 1
            rx.ts = now
            send(rx.request())
        elif isinstance(got, str):
            run.outcome, run.error = "refused", got
            break
        else:
            j, off, data = got
            o, held = objs[j], run.held[j]
            # no gap, no overlap, nothing past the end: exactly the object's next bytes
            assert off == len(held) and off + len(data) <= o.end, (j, off, len(data), len(held), o.end)
            assert bytes(data) == o.data[off : off + len(data)]
            held += data
            assert want[j][2] == len(held)
            run.kept += 1
            rx.ts = now
            ack = rx.ack()
            if ack is not None:
                run.acks += 1
                send(ack)
    if not run.outcome:
        run.outcome = "complete"
    run.altered_refused = all(raw not in built for raw in gateway.refused)
    run.sent, run.left = gateway.chunks, len(link.flight)
    return run


def chunks_of(objs: list[Obj], chunk: int) -> int:
    return sum(-(-(o.end - o.start) // chunk) for o in objs)


@st.composite
def streams(draw: st.DrawFn, most: int = 6) -> tuple[list[Obj], int, int, int]:
    """(objects, chunk size, window, first stream number)."""
    chunk = draw(st.one_of(st.sampled_from((64, 4096)), st.integers(64, 4096)))
    win = draw(st.integers(1, 32))
    seq = draw(st.one_of(st.just(0xFFFFFFFF), st.integers(0, 0xFFFFFFFF)))
    return draw(objects(chunk, most)), chunk, win, seq


def _check_held(run: Run, objs: list[Obj]) -> None:
    """What the device holds of each object is its first bytes, none past
    its end; all of them when the transfer completed."""
    for o, held in zip(objs, run.held, strict=True):
        assert len(held) <= o.end and held == o.data[: len(held)]
        if run.outcome == "complete":
            assert held == o.data[: o.end]


@settings(max_examples=400, deadline=None)
@given(stream=streams(), down=faults, up=faults)
def test_what_the_device_keeps_over_a_faulty_link_is_the_objects_bytes_and_the_transfer_ends(
    stream: tuple[list[Obj], int, int, int], down: list[Fault], up: list[Fault]
) -> None:
    """Whatever befalls the messages, the device keeps each object's bytes
    in order from where it stood, none past its end; the transfer ends,
    complete or given up after ota_tries requests without a byte, or
    refused by the gateway only for a request the link altered; and a few
    faults never make it give up: each costs at most two requests."""
    objs, chunk, win, seq = stream
    run = transfer(objs, chunk, win, seq, down, up, TRIES)
    _check_held(run, objs)
    assert run.outcome in ("complete", "stalled", "refused"), run
    if run.outcome == "refused":
        assert run.altered_refused and run.error == "not part of the update", run
    assert run.requests <= 1 + 2 * run.faults, run
    if 2 * run.faults <= TRIES:
        assert run.outcome in ("complete", "refused"), run


@settings(max_examples=300, deadline=None)
@given(stream=streams(), down=faults, up=faults)
def test_a_transfer_whose_faults_run_out_always_completes(
    stream: tuple[list[Obj], int, int, int], down: list[Fault], up: list[Fault]
) -> None:
    """With no limit on its tries, the device gets every byte once the
    faults have run out, unless the gateway refused a request the link
    altered."""
    objs, chunk, win, seq = stream
    run = transfer(objs, chunk, win, seq, down, up, None)
    _check_held(run, objs)
    assert run.outcome == "complete" or (run.outcome == "refused" and run.altered_refused), run


@settings(max_examples=300, deadline=None)
@given(stream=streams(most=16))
def test_over_a_clean_link_one_request_brings_every_chunk_once(
    stream: tuple[list[Obj], int, int, int],
) -> None:
    """Up to 16 objects, resumed or not, any chunk size and window: one
    request, each chunk sent once and kept, nothing dropped, no silence
    waited out, at most one acknowledgement per chunk."""
    objs, chunk, win, seq = stream
    run = transfer(objs, chunk, win, seq, [], [], TRIES)
    n = chunks_of(objs, chunk)
    assert run.outcome == "complete"
    _check_held(run, objs)
    assert run.requests == (1 if n else 0)
    assert run.kept == n and run.dropped == run.losses == run.timeouts == 0
    assert run.steps == run.requests + n + run.acks - run.left  # (the last acknowledgements need no answer)
    assert run.sent == n and run.acks <= n


# ---- the agent, writing files -----------------------------------------------------------

AGENT_TIMEOUT_MS = 20
AGENT_DEADLINE_S = 2


@st.composite
def fetches(draw: st.DrawFn) -> tuple[list[Obj], int, int]:
    """(objects, ota_chunk, ota_window) of one fetch: the manifest, or 1 to 4
    blobs, each from an origin in the object (as the image's frames are)
    and with a file holding its first bytes already, or none."""
    chunk = draw(st.one_of(st.sampled_from((64, 4096)), st.integers(64, 4096)))
    win = draw(st.integers(1, 32))
    out = []
    manifest = draw(st.booleans())
    for k in range(1 if manifest else draw(st.integers(1, 4))):
        size = draw(st.integers(1, 8 * chunk))
        data = _bytes(draw(st.integers(0, 2**32)) * 17 + k, size)
        origin = draw(st.one_of(st.just(0), st.integers(0, size - 1)))
        end = draw(st.one_of(st.just(size), st.integers(origin + 1, size)))
        start = draw(st.one_of(st.just(origin), st.integers(origin, end)))
        name = "manifest" if manifest else hashlib.sha256(data).hexdigest()[:16]
        out.append(Obj(name, data, start, end, origin))
    return out, chunk, win


@dataclass
class Fetched:
    reason: str  # Failed's, or "" when fetch returned
    seconds: float  # from the offer until fetch ended
    sent: list[dict[str, Any]]  # requests and acknowledgements, as the agent built them
    altered_refused: bool
    files: list[bytes | None]


async def fetch(
    base: Path,
    objs: list[Obj],
    config: dict[str, Any],
    down: list[Fault],
    up: list[Fault],
    alter: Callable[[int, int, bytes], bytes] | None = None,
    gateway: Gateway | None = None,
) -> Fetched:
    """agent.fetch of objs into files under base, against the Gateway; each
    message goes through the link (loop.call_soon, or call_later when it
    comes late). alter(request number, chunk number in its answer, chunk)
    changes what the gateway sends, besides the link's faults."""
    loop = asyncio.get_running_loop()
    gateway = gateway or Gateway(objs)
    built: set[bytes] = set()
    sent: list[dict[str, Any]] = []
    answered = itertools.count(1)

    def way(faults: Iterator[Fault], deliver: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def send(payload: bytes) -> None:
            for late, p in befall(next(faults, None), payload, 3 * AGENT_TIMEOUT_MS):
                if late:
                    loop.call_later(late / 1000, deliver, p)
                else:
                    loop.call_soon(deliver, p)

        return send

    to_device = way(iter(down), lambda p: agent.on_chunk(memoryview(p)))

    def to_gateway(raw: bytes) -> None:
        chunks = gateway.receive(raw)
        n = next(answered) if b'"objs"' in raw else 0
        for k, c in enumerate(chunks):
            to_device(alter(n, k, c) if alter is not None else c)

    to_gateway_ = way(iter(up), to_gateway)

    def request(msg: dict[str, Any]) -> None:
        raw = json.dumps(msg).encode()
        built.add(raw)
        sent.append(msg)
        to_gateway_(raw)

    agent = pb_ota.Agent(
        str(base), "thermostat", 1, request, lambda status: None, time.time, lambda: True, lambda name: None
    )
    pb_ota.configure(agent, {"device": DEV, **config}, Hal({}))
    paths = [base / f"object-{k}" for k in range(len(objs))]
    wanted = []
    for o, path in zip(objs, paths, strict=True):
        if o.start > o.origin:
            path.write_bytes(o.data[o.origin : o.start])
        obj = o.name if o.name == "manifest" else o.digest
        wanted.append((obj, o.digest, str(path), o.end - o.origin, o.origin))
    job: dict[str, Any] = {"id": UID, "offered_at": time.time()}
    try:
        await asyncio.wait_for(agent.fetch(UID, job, wanted), AGENT_DEADLINE_S + 10)
        reason = ""
    except pb_ota.Failed as exc:
        reason = str(exc)
    seconds = time.time() - job["offered_at"]
    files = [p.read_bytes() if p.exists() else None for p in paths]
    return Fetched(reason, seconds, sent, all(raw not in built for raw in gateway.refused), files)


def _check_files(got: Fetched, objs: list[Obj]) -> None:
    """Every file holds the object's bytes from its origin, none past its
    end; all of them when fetch returned."""
    for o, held in zip(objs, got.files, strict=True):
        if held is not None:
            assert len(held) <= o.end - o.origin and held == o.data[o.origin : o.origin + len(held)]
        if not got.reason:
            assert held == o.data[o.origin : o.end]


AGENT_CONFIG = {
    "ota_timeout_ms": AGENT_TIMEOUT_MS,
    "ota_tries": TRIES,
    "ota_deadline_s": AGENT_DEADLINE_S,
}
few_faults = st.lists(fault, max_size=6)  # (each a silence may cost a quarter of a second)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(what=fetches(), down=few_faults, up=few_faults)
def test_what_the_agent_writes_over_a_faulty_link_is_never_wrong_and_it_ends_by_the_deadline(
    tmp_path: Path, what: tuple[list[Obj], int, int], down: list[Fault], up: list[Fault]
) -> None:
    """Whatever befalls the messages, every file the agent's fetch leaves
    holds its object's bytes from its origin, whole when fetch returns;
    fetch ends by the deadline, complete or failed as stalled or past the
    deadline (or refused by the gateway only for a request the link
    altered); over a clean link, one request."""
    objs, chunk, win = what
    config = AGENT_CONFIG | {"ota_chunk": chunk, "ota_window": win}
    with tempfile.TemporaryDirectory(dir=tmp_path) as base:
        got = asyncio.run(fetch(Path(base), objs, config, down, up))
    _check_files(got, objs)
    assert got.seconds < AGENT_DEADLINE_S + 1, got
    if got.reason.startswith("gateway: "):
        assert got.altered_refused, got
    else:
        assert got.reason == "" or got.reason.startswith(("stalled: ", "deadline: ")), got
    if not down and not up:
        assert not got.reason and len([m for m in got.sent if "objs" in m]) == int(
            any(o.start < o.end for o in objs)
        )


async def test_a_truncated_or_corrupt_chunk_makes_the_agent_ask_again_from_what_it_holds(
    tmp_path: Path,
) -> None:
    """The second chunk of the first stream cut short, the second of the
    next one with a bit of its bytes flipped (its CRC no longer matches):
    each time the agent asks again, from the byte it holds, with half the
    window, and the file comes whole."""
    data = _bytes(7, 5 * 64)
    o = Obj(hashlib.sha256(data).hexdigest()[:16], data, 0, len(data))

    def alter(n: int, k: int, chunk: bytes) -> bytes:
        if (n, k) == (1, 1):
            return chunk[:40]
        if (n, k) == (2, 1):
            return chunk[:-1] + bytes([chunk[-1] ^ 0x10])
        return chunk

    config = AGENT_CONFIG | {"ota_chunk": 64, "ota_window": 8}
    got = await fetch(tmp_path, [o], config, [], [], alter)
    assert got.reason == "" and got.files == [data]
    asked = [(m["objs"], m["win"]) for m in got.sent if "objs" in m]
    assert asked == [([[o.name, 0, 320]], 8), ([[o.name, 64, 256]], 4), ([[o.name, 128, 192]], 2)]


async def test_bytes_past_an_objects_end_are_never_written(tmp_path: Path) -> None:
    """A gateway that takes the object for longer than the device does and
    sends a full chunk where 36 bytes are left: the agent keeps the chunk
    before it, asks again at each, never writes past the end, and gives
    up after ota_tries."""
    data = _bytes(8, 300)
    o = Obj(hashlib.sha256(data).hexdigest()[:16], data, 0, 100)

    class Longer(Gateway):
        def receive(self, raw: bytes) -> list[bytes]:
            msg = json.loads(raw)
            if "objs" in msg:
                msg["objs"][0][2] = len(data) - msg["objs"][0][1]  # to the end of what it has
            return super().receive(json.dumps(msg).encode())

    config = AGENT_CONFIG | {"ota_chunk": 64, "ota_window": 8, "ota_tries": 3}
    got = await fetch(tmp_path, [o], config, [], [], gateway=Longer([o]))
    assert got.reason == f"stalled: no answer for {o.name} at byte 64 after 3 tries", got
    assert got.files == [data[:64]]
    asked = [(m["objs"], m["win"]) for m in got.sent if "objs" in m]
    assert asked == [([[o.name, 0, 100]], 8)] + [([[o.name, 64, 36]], w) for w in (4, 2, 1, 1)]
