"""Updates as the gateway tracks and serves them (docs/ota.md 3 and 5), sans-I/O:
the update record and how a device's statuses move it, the deadline, the
offer and cancel messages, and the answer to a request for bytes. No
sockets, no files, no clock: `now` is passed in. gateway/updater.py wraps
these with the database, the broker and the blob files.

An update's state follows what its device reports: offered, downloading
(bytes/total), staged, verified, activating, trial, then one of committed,
failed(reason), rolled_back(reason). It counts as a success only at
committed; it never moves backwards (a late or replayed status is ignored);
once it has ended nothing changes it. One that has not ended by its
deadline ends as failed("timeout"). A device may hold an update back
before staging it (deferred(reason): its battery is low): the update is
neither failed nor ended, and its deadline does not run while it waits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from firmware.pb.peer.ota_transfer import (
    MAX_CHUNK,
    TAG_HEX,
    TERMINAL,
    Stream,
    encode_chunk,
    encode_chunk_v1,
    is_hex64,
)

from .errors import UpdateRefusedError
from .releases import ObjectInfo, StoredRelease

ACTIVE = ("offered", "downloading", "deferred", "staged", "verified", "activating", "trial")
ENDED = tuple(TERMINAL)  # committed, rolled_back, failed
# deferred: the device holds the update back, before it stages it, and goes
# on by itself; it ranks with downloading, to and from which it moves
_DEFERRABLE = ("offered", "downloading", "deferred")
DEFAULT_DEADLINE_S = 15 * 60.0
DEFAULT_FRESHNESS_TTL_S = 3600.0
MAX_REASON = 200  # characters of a failure reason kept
GATEWAY_ENDED = "cancelled: "  # how the reason of an update the gateway itself ended begins
_MAX_ERROR = 120  # bytes of the reason an error chunk carries
_NO_TAG = bytes(8)
_RANK: dict[str, int] = (
    {s: i for i, s in enumerate(ACTIVE)}
    | {s: len(ACTIVE) for s in ENDED}
    | {"deferred": ACTIVE.index("downloading")}
)


@dataclass(frozen=True)
class Update:
    """One update of one device to one release, as the gateway knows it."""

    id: str
    device: str
    release: str  # the release id: sha256 of its manifest.json
    model: str
    counter: int
    version: str
    state: str
    started: float
    deadline: float  # Unix time by which it must have committed
    freshness: int  # the version of the freshness statement offered
    updated: float = 0.0
    reason: str | None = None
    bytes: int = 0  # as the device reports (compressed bytes of what it lacked)
    total: int | None = None
    served: int = 0  # bytes the gateway sent in chunks (repeats included)
    requests: int = 0
    errors: int = 0  # requests answered with an error chunk
    finished: float | None = None
    device_state: str | None = None  # the last state the device reported, even if ignored
    deferred_since: float | None = None  # when the device deferred it; the deadline waits meanwhile
    idle: bool = False  # the offer asks the device to install only while its features are idle

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def success(self) -> bool:
        return self.state == "committed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ended": self.ended, "success": self.success}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Update:
        names = cls.__dataclass_fields__
        u = cls(**{k: v for k, v in d.items() if k in names})
        return replace(u, idle=bool(u.idle))  # (stored as an integer)


def new_update(
    uid: str,
    device: str,
    release: str,
    model: str,
    counter: int,
    version: str,
    freshness: int,
    now: float,
    deadline_s: float = DEFAULT_DEADLINE_S,
    idle: bool = False,
) -> Update:
    """A new update, offered at now."""
    return Update(
        id=uid,
        device=device,
        release=release,
        model=model,
        counter=counter,
        version=version,
        state="offered",
        started=now,
        deadline=now + deadline_s,
        freshness=freshness,
        updated=now,
        idle=idle,
    )


def next_freshness_version(last: int, now: float) -> int:
    """The version of the next freshness statement: the time in ms, but
    always above the last one (two in one ms, or a clock stepped back)."""
    return max(last + 1, int(now * 1000))


def check_target(
    device: str, model: str | None, ota: Mapping[str, Any] | None, release: StoredRelease
) -> None:
    """Raise UpdateRefusedError unless the device can take the release: its
    model (wrong_model), and a counter above the one it says it runs in its
    hello (rollback: it would refuse it anyway)."""
    if model != release.model:
        raise UpdateRefusedError(
            f"{device} is a {model or 'device of unknown model'}; "
            f"release {release.ref} is for {release.model}",
            "wrong_model",
        )
    running = ota.get("counter") if ota else None
    if isinstance(running, int) and not isinstance(running, bool) and running >= release.counter:
        raise UpdateRefusedError(
            f"{device} runs release counter {running}; {release.ref} is not newer "
            "(going back is published as a new release with a higher counter)",
            "rollback",
        )


# ---- statuses and the deadline -------------------------------------------------


def apply_status(u: Update, msg: Mapping[str, Any], now: float) -> Update | None:
    """The update after a status the device sent for it (already validated
    by otaproto.check_status, and for u.id), or None if it changes nothing:
    the update has ended, the status is older than what is known (a replayed
    retained one), a repeat, or not an update state (safe_mode)."""
    if u.ended or msg.get("id") != u.id:
        return None
    state = str(msg["state"])
    if state not in _RANK:
        return replace(u, device_state=state, updated=now) if state != u.device_state else None
    if _RANK[state] < _RANK[u.state] or (state == "deferred" and u.state not in _DEFERRABLE):
        return None
    if state == "deferred":
        return _deferred(u, msg, now)
    if state == u.state and state != "downloading":
        # a repeat changes nothing; but the device's own first "offered" is
        # news: the gateway set that state, the device now says it took the offer
        if state == "offered" and u.device_state is None:
            return replace(u, device_state=state, updated=now)
        return None
    changes: dict[str, Any] = {"state": state, "updated": now, "device_state": state}
    if u.deferred_since is not None:
        # the device went on: the time it held the update back is added to the deadline
        changes |= {"deadline": u.deadline + max(0.0, now - u.deferred_since), "deferred_since": None}
        changes["reason"] = None
    if state == "downloading":
        if msg.get("bytes") == u.bytes and msg.get("total") == u.total and u.state == "downloading":
            return None
        if isinstance(msg.get("bytes"), int):
            changes["bytes"] = msg["bytes"]
        if isinstance(msg.get("total"), int):
            changes["total"] = msg["total"]
    elif state in ("staged", "verified", "activating", "trial", "committed") and u.total is not None:
        changes["bytes"] = u.total  # everything arrived
    if state in ENDED:
        changes["finished"] = now
        if state != "committed":
            reason = msg.get("reason")
            reason = reason if isinstance(reason, str) and reason else "no reason given"
            if reason.startswith(GATEWAY_ENDED):
                # (the gateway's own words for an update it ended, which the judge does not count
                # as a failure: a device does not say them of its own failure)
                reason = "device: " + reason
            changes["reason"] = reason[:MAX_REASON]
    return replace(u, **changes)


def _deferred(u: Update, msg: Mapping[str, Any], now: float) -> Update | None:
    """u held back by its device (reason: why); a repeat with the same
    reason changes nothing. The deadline stops while it lasts."""
    reason = msg.get("reason")
    reason = (reason if isinstance(reason, str) and reason else "no reason given")[:MAX_REASON]
    if u.state == "deferred" and u.reason == reason:
        return None
    since = now if u.deferred_since is None else u.deferred_since
    return replace(
        u, state="deferred", reason=reason, updated=now, device_state="deferred", deferred_since=since
    )


def late_step(u: Update, msg: Mapping[str, Any]) -> str | None:
    """The state of a status for u that a later one overtook, or None: a
    step the update went through but that arrived after the state it
    leads to (the device says `activating` at its first connect after the
    reset, and the `trial` it keeps on flash can come first). It is
    recorded among the steps; it does not move the update."""
    state = msg.get("state")
    if msg.get("id") != u.id or state not in ACTIVE or state in ("offered", "deferred"):
        return None
    return state if _RANK[state] < _RANK[u.state] else None


def step_rank(state: str) -> int:
    """Where a state comes in an update's life (ended states last)."""
    rank: int = _RANK.get(state, len(ACTIVE))
    return rank


def from_hello(u: Update, ota: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A status that the device's hello implies for u, or None: a device
    that says it runs u's release (on trial or committed) has got that far,
    even if the statuses that said so were lost with a broker; one in update
    mode for u (`updating`, `update` its id) took u's offer, though it says
    `offered` only after this hello (it is not sent the offer again)."""
    if not isinstance(ota, Mapping) or u.ended:
        return None
    state = ota.get("state")
    if state == "updating" and ota.get("update") == u.id:
        return {"v": 1, "id": u.id, "state": "offered"} if untaken(u) else None
    if ota.get("manifest") != u.release:
        return None
    if state not in ("trial", "committed"):
        return None
    return {"v": 1, "id": u.id, "state": state}


def untaken(u: Update) -> bool:
    """Offered, and the device never said it took the offer."""
    return u.state == "offered" and u.device_state is None


def fail(u: Update, reason: str, now: float) -> Update:
    """The update ended as failed(reason) by the gateway's decision (a
    deadline, a cancel); an update that already ended is left as it is."""
    if u.ended:
        return u
    return replace(u, state="failed", reason=reason[:MAX_REASON], finished=now, updated=now)


def expire(u: Update, now: float) -> Update | None:
    """failed("timeout") if u has not ended by its deadline, else None. A
    deferred update does not expire: its device holds it back and goes on
    by itself (its deadline moves on by the time it waited, when it does)."""
    if u.ended or u.state == "deferred" or now < u.deadline:
        return None
    return fail(u, "timeout", now)


# ---- messages to the device -------------------------------------------------------


def offer_message(
    uid: str, release_id: str, manifest_size: int, freshness: bytes, idle: bool = False
) -> bytes:
    """The offer (docs/ota.md 3): the freshness envelope goes as an object;
    idle: the device installs only while none of its features is busy."""
    # ("idle" right after "v": a device short of RAM looks for it in the
    # offer's first bytes, without parsing the whole, docs/ota.md 3.1)
    msg: dict[str, Any] = {"v": 1, "idle": True} if idle else {"v": 1}
    msg |= {"id": uid, "manifest": release_id, "size": manifest_size, "freshness": json.loads(freshness)}
    return json.dumps(msg, separators=(",", ":")).encode()


def cancel_message(uid: str) -> bytes:
    return json.dumps({"v": 1, "id": uid, "op": "cancel"}, separators=(",", ":")).encode()


# ---- answering requests for bytes ---------------------------------------------------


def _answer_tag(blob: bytes | None, objects: Mapping[str, ObjectInfo] | None) -> bytes:
    """The tag an answer carries: a blob's (its name's), else the manifest
    of the update's release, or 8 zero bytes for an update not known."""
    if blob is not None:
        return blob
    return objects["manifest"].tag if objects is not None and "manifest" in objects else _NO_TAG


def _unserved(uid: str, update: Update | None) -> str | None:
    """Why bytes of update uid are not served to the device asking, or None."""
    if update is None:
        return f"no update {uid[:32]} for this device"
    return f"update {uid} has ended: {update.state}" if update.ended else None


# Version 2 (a stream of objects under a window, acknowledged): plan_stream;
# version 1 (one chunk per request, the runtimes before it): plan_chunk.


@dataclass(frozen=True)
class RefuseStream:
    """Send an error chunk on stream s carrying reason."""

    s: int
    tag: bytes
    reason: str

    def chunk(self) -> bytes:
        data = self.reason.encode("utf-8")[:_MAX_ERROR]
        return bytes(encode_chunk(self.s, 0, 0, 0, data, self.tag, error=True))


def plan_stream(
    req: Mapping[str, Any],
    update: Update | None,
    objects: Mapping[str, ObjectInfo] | None,
) -> Stream | RefuseStream:
    """What to answer to a version 2 request for a stream (validated by
    otaproto.check_request, from the device it names): the stream, or why
    not. Only an update in progress is served, only objects of its release,
    only bytes that exist."""
    s, uid = req["s"], req["id"]
    first = req["objs"][0][0]
    tag = _answer_tag(bytes.fromhex(first)[:8] if first != "manifest" else None, objects)
    why = _unserved(uid, update)
    if why is not None or objects is None:
        return RefuseStream(s, tag, why or f"no update {uid[:32]} for this device")
    by_tag: dict[str, str | None] = {}
    for k in objects:
        if k != "manifest":
            by_tag[k[:TAG_HEX]] = None if k[:TAG_HEX] in by_tag else k
    objs: list[list[Any]] = []
    for name, off, length in req["objs"]:
        key = "manifest" if name == "manifest" else by_tag.get(name)
        info = objects.get(key) if key is not None else None
        if info is None:
            return RefuseStream(s, tag, f"{name} is not part of update {uid}")
        if off + length > info.size:
            return RefuseStream(
                s, tag, f"{name}: bytes {off}-{off + length} are past the end ({info.size} bytes)"
            )
        objs.append([key, info.tag, off, off + length])
    return Stream(s, objs, req["chunk"], req["win"])


@dataclass(frozen=True)
class Serve:
    """Send length bytes of obj at offset (length 0 only at the very end)."""

    seq: int
    obj: str
    offset: int
    length: int
    tag: bytes
    last: bool

    def chunk(self, data: bytes) -> bytes:
        return bytes(encode_chunk_v1(self.seq, self.offset, data, self.tag, last=self.last))


@dataclass(frozen=True)
class Refuse:
    """Send an error chunk carrying reason."""

    seq: int
    offset: int
    tag: bytes
    reason: str

    def chunk(self) -> bytes:
        data = self.reason.encode("utf-8")[:_MAX_ERROR]
        return bytes(encode_chunk_v1(self.seq, self.offset, data, self.tag, error=True))


def plan_chunk(
    req: Mapping[str, Any],
    update: Update | None,
    objects: Mapping[str, ObjectInfo] | None,
) -> Serve | Refuse:
    """What to answer to a request (validated by otaproto.check_request, from
    the device it names). update: the record the request's id names, if it
    is an update of that device; objects: what that update's release offers.
    Only an update in progress is served, only objects of its release, only
    bytes that exist."""
    seq, off, obj, uid = req["seq"], req["off"], req["obj"], req["id"]
    tag = _answer_tag(bytes.fromhex(obj)[:8] if is_hex64(obj) else None, objects)
    why = _unserved(uid, update)
    if why is not None or objects is None:
        return Refuse(seq, off, tag, why or f"no update {uid[:32]} for this device")
    info = objects.get(obj)
    if info is None:
        return Refuse(seq, off, tag, f"{obj[:16]} is not part of update {uid}")
    if off > info.size:
        return Refuse(seq, off, tag, f"offset {off} is past the end ({info.size} bytes)")
    n = min(req["len"], info.size - off, MAX_CHUNK)
    return Serve(seq, obj, off, n, info.tag, off + n == info.size)
