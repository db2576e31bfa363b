"""The gateway's update logic, sans-I/O: what a request for bytes is answered
with, how statuses move an update (and which are ignored), the deadline,
the messages to the device. One test per rule or attack."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.pb.peer import ota_transfer as otaproto
from firmware.pb.peer.ota_transfer import FLAG_ERROR, FLAG_LAST
from firmware.pb.peer.ota_transfer import decode_chunk_v1 as decode_chunk
from gateway.errors import UpdateRefusedError
from gateway.releases import ObjectInfo, StoredRelease
from gateway.updates import (
    ACTIVE,
    Refuse,
    Serve,
    Update,
    apply_status,
    cancel_message,
    check_target,
    expire,
    fail,
    from_hello,
    new_update,
    next_freshness_version,
    offer_message,
    plan_chunk,
    step_rank,
)

MANIFEST = b'{"signed":"{}","signatures":[]}' * 20
MANIFEST_ID = hashlib.sha256(MANIFEST).hexdigest()
BLOB = bytes(range(256)) * 10
BLOB_ID = hashlib.sha256(BLOB).hexdigest()
OTHER_ID = hashlib.sha256(b"another release's blob").hexdigest()
OBJECTS = {
    "manifest": ObjectInfo(len(MANIFEST), bytes.fromhex(MANIFEST_ID)[:8]),
    BLOB_ID: ObjectInfo(len(BLOB), bytes.fromhex(BLOB_ID)[:8]),
}
T0 = 1_800_000_000.0


def update(**over: Any) -> Update:
    u = new_update("a1b2c3d4e5f6", "th-1", MANIFEST_ID, "thermostat", 2, "2026.11.1", 1, T0, 900)
    return replace(u, **over)


Msg = dict[str, Any]


def req(obj: str = "manifest", off: int = 0, n: int = 512, seq: int = 7, uid: str = "a1b2c3d4e5f6") -> Msg:
    msg = {"v": 1, "dev": "th-1", "id": uid, "obj": obj, "off": off, "len": n, "seq": seq}
    return dict(otaproto.check_request(msg))


def status(state: str, uid: str = "a1b2c3d4e5f6", **extra: Any) -> Msg:
    return dict(otaproto.check_status({"v": 1, "dev": "th-1", "id": uid, "state": state, **extra}))


def content(obj: str) -> bytes:
    return MANIFEST if obj == "manifest" else BLOB


def answer(
    r: Msg, u: Update | None = None, objects: dict[str, ObjectInfo] | None = OBJECTS
) -> tuple[int, int, int, bytes, bytes]:
    """The chunk the gateway sends for request r, decoded as a device would."""
    plan = plan_chunk(r, update() if u is None else u, objects)
    if isinstance(plan, Serve):
        payload = plan.chunk(content(plan.obj)[plan.offset : plan.offset + plan.length])
    else:
        payload = plan.chunk()
    flags, seq, off, tag, data = decode_chunk(payload)
    return flags, seq, off, bytes(tag), bytes(data)


# ---- serving ---------------------------------------------------------------------


def test_the_manifest_is_served_in_chunks_tagged_with_its_sha256() -> None:
    got, off = b"", 0
    while True:
        flags, seq, o, tag, data = answer(req("manifest", off, 100, seq=off))
        assert (seq, o, tag) == (off, off, bytes.fromhex(MANIFEST_ID)[:8])
        assert not flags & FLAG_ERROR
        got += data
        off += len(data)
        if flags & FLAG_LAST:
            break
        assert len(data) == 100
    assert got == MANIFEST


def test_a_blob_is_served_tagged_with_its_zsha256() -> None:
    flags, _, _, tag, data = answer(req(BLOB_ID, 0, 4096))
    assert data == BLOB[:2560] and flags == FLAG_LAST and tag == bytes.fromhex(BLOB_ID)[:8]


def test_the_last_request_is_clamped_to_the_object() -> None:
    flags, _, off, _, data = answer(req(BLOB_ID, 2500, 4096))
    assert (flags, off, data) == (FLAG_LAST, 2500, BLOB[2500:])


def test_a_request_at_the_very_end_gets_an_empty_last_chunk() -> None:
    flags, _, _, _, data = answer(req(BLOB_ID, len(BLOB), 100))
    assert (flags, data) == (FLAG_LAST, b"")


def test_an_offset_past_the_end_gets_an_error_chunk() -> None:
    flags, seq, off, tag, data = answer(req(BLOB_ID, len(BLOB) + 1, 100, seq=9))
    assert flags == FLAG_ERROR and (seq, off) == (9, len(BLOB) + 1)
    assert tag == bytes.fromhex(BLOB_ID)[:8] and b"past the end" in data


def test_an_object_of_another_release_gets_an_error_chunk() -> None:
    flags, _, _, tag, data = answer(req(OTHER_ID))
    assert flags == FLAG_ERROR and tag == bytes.fromhex(OTHER_ID)[:8]
    assert b"not part of update" in data


def test_an_update_id_that_is_not_the_devices_gets_an_error_chunk() -> None:
    # the caller passes None when the id names no update of this device
    plan = plan_chunk(req("manifest", uid="ffffffffffff"), None, None)
    assert isinstance(plan, Refuse) and "no update ffffffffffff" in plan.reason
    assert plan.tag == bytes(8)  # the manifest of an unknown update has no known hash
    flags, *_ = decode_chunk(plan.chunk())
    assert flags == FLAG_ERROR


def test_an_ended_update_is_not_served() -> None:
    for state in ("committed", "failed", "rolled_back"):
        flags, _, _, tag, data = answer(req(), update(state=state))
        assert flags == FLAG_ERROR and state.encode() in data
        assert tag == bytes.fromhex(MANIFEST_ID)[:8]  # the device can match it to its request


def test_an_error_reason_is_short() -> None:
    plan = Refuse(1, 0, bytes(8), "x" * 1000)
    assert len(decode_chunk(plan.chunk())[4]) == 120


# ---- statuses --------------------------------------------------------------------


def test_statuses_move_an_update_through_to_committed() -> None:
    u = update()
    u = apply_status(u, status("offered", counter=2), T0 + 1) or u
    u2 = apply_status(u, status("downloading", bytes=0, total=3000), T0 + 2)
    assert u2 is not None and (u2.state, u2.bytes, u2.total) == ("downloading", 0, 3000)
    u3 = apply_status(u2, status("downloading", bytes=1500, total=3000), T0 + 3)
    assert u3 is not None and u3.bytes == 1500 and not u3.ended
    u = u3
    for state in ("staged", "verified", "activating", "trial"):
        nxt = apply_status(u, status(state), T0 + 4)
        assert nxt is not None and nxt.state == state and not nxt.success and nxt.finished is None
        u = nxt
    assert u.bytes == 3000  # everything arrived
    done = apply_status(u, status("committed"), T0 + 5)
    assert done is not None and done.success and done.ended and done.finished == T0 + 5


def test_a_device_cannot_say_its_failure_was_one_the_gateway_ended() -> None:
    """A reason in the gateway's own words for an update it ended ("cancelled:
    ...", which neither the rollout judge nor rollout status counts as the
    release's failure) is the device's own failure when a device says it."""
    for reason in ("cancelled: rollout halted", "cancelled: declined by the owner"):
        u = apply_status(update(state="trial"), status("failed", reason=reason), T0)
        assert u is not None and u.reason == "device: " + reason


def test_success_only_at_committed() -> None:
    for state in ACTIVE:
        u = apply_status(update(), status(state), T0)
        assert u is None or not u.success
    for state, reason in (("failed", "mismatch: x"), ("rolled_back", "self-test failed")):
        u = apply_status(update(state="trial"), status(state, reason=reason), T0)
        assert u is not None and u.ended and not u.success and u.reason == reason


def test_a_failure_without_reason_still_has_one() -> None:
    u = apply_status(update(), status("failed"), T0)
    assert u is not None and u.reason == "no reason given"


def test_a_status_for_another_update_is_ignored() -> None:
    assert apply_status(update(), status("committed", uid="0123456789ab"), T0) is None


def test_a_stale_status_does_not_move_an_update_back() -> None:
    u = update(state="trial")
    for state in ("offered", "downloading", "staged", "verified", "activating"):
        assert apply_status(u, status(state), T0) is None


def test_a_repeated_status_changes_nothing() -> None:
    u = update(state="staged")
    assert apply_status(u, status("staged"), T0) is None
    d = update(state="downloading", bytes=10, total=20)
    assert apply_status(d, status("downloading", bytes=10, total=20), T0) is None
    # the gateway's "offered" is not the device's: its first one notes that it took the offer
    o = apply_status(update(), status("offered"), T0)
    assert o is not None and (o.state, o.device_state) == ("offered", "offered")
    assert apply_status(o, status("offered"), T0) is None


def test_a_hello_from_update_mode_for_the_update_says_its_offer_was_taken() -> None:
    """Update mode's hello (`updating`, `update` its id) comes before the
    device's own `offered`, and its `online` would have the offer sent again."""
    ota = {"counter": 0, "manifest": None, "state": "updating", "root": 1, "update": "a1b2c3d4e5f6"}
    msg = from_hello(update(), ota)
    assert msg == {"v": 1, "id": "a1b2c3d4e5f6", "state": "offered"}
    taken = apply_status(update(), msg, T0)
    assert taken is not None and (taken.state, taken.device_state) == ("offered", "offered")
    assert from_hello(taken, ota) is None  # (taken already: nothing new)
    assert from_hello(update(state="downloading", device_state="downloading"), ota) is None
    assert from_hello(update(), {**ota, "update": "0123456789ab"}) is None  # another update's
    assert from_hello(update(), {**ota, "update": None}) is None
    assert from_hello(update(), {**ota, "state": "committed"}) is None  # (not u's release)
    assert from_hello(update(state="failed", finished=T0), ota) is None


def test_an_ended_update_stays_ended() -> None:
    for state in ("committed", "failed", "rolled_back"):
        u = update(state=state, finished=T0)
        for s in (*ACTIVE, "committed", "failed", "rolled_back"):
            assert apply_status(u, status(s), T0 + 1) is None


def test_safe_mode_is_noted_without_changing_the_state() -> None:
    u = apply_status(update(state="trial"), status("safe_mode"), T0)
    assert u is not None and u.state == "trial" and u.device_state == "safe_mode"


@given(st.lists(st.sampled_from([*otaproto.STATES]), max_size=30))
def test_any_sequence_of_statuses_never_goes_back(states: list[str]) -> None:
    u = update()
    first_end = next((s for s in states if s in ("committed", "failed", "rolled_back")), None)
    for s in states:
        before = u
        u = apply_status(u, status(s, bytes=1, total=2), T0) or u
        assert step_rank(u.state) >= step_rank(before.state)
        if before.ended:
            assert u == before
        # held back only before staging; never held back once it has ended
        assert u.state != "deferred" or before.state in ("offered", "downloading", "deferred")
        assert (u.deferred_since is not None) == (u.state == "deferred")
    assert u.success == (first_end == "committed")


@given(
    st.lists(
        st.tuples(st.sampled_from([*otaproto.STATES]), st.floats(min_value=0, max_value=5000)),
        max_size=20,
    )
)
def test_the_deadline_moves_by_exactly_the_time_an_update_was_deferred(
    steps: list[tuple[str, float]],
) -> None:
    u, now, held = update(), T0, 0.0
    for s, dt in steps:
        before = u
        now += dt
        if before.state == "deferred":
            held += dt
        u = apply_status(u, status(s, reason="battery: 18% is below 30%"), now) or u
        assert expire(u, now + 10**9) is None or u.state != "deferred"
    if u.state != "deferred" and not u.ended:
        assert u.deadline == pytest.approx(T0 + 900 + held)


def test_a_deferred_update_is_neither_failed_nor_ended_and_keeps_its_reason() -> None:
    u = apply_status(
        update(state="downloading", bytes=100, total=300),
        status("deferred", reason="battery: 18% is below 30%"),
        T0 + 10,
    )
    assert u is not None and (u.state, u.reason, u.ended, u.success) == (
        "deferred",
        "battery: 18% is below 30%",
        False,
        False,
    )
    assert (u.bytes, u.total, u.deferred_since) == (100, 300, T0 + 10)
    assert apply_status(u, status("deferred", reason="battery: 18% is below 30%"), T0 + 20) is None
    # a new reason is noted; the wait started when it was first deferred
    again = apply_status(u, status("deferred", reason="battery: 12% is below 30%"), T0 + 30)
    assert again is not None and (again.reason, again.deferred_since) == (
        "battery: 12% is below 30%",
        T0 + 10,
    )
    # a late offered does not move it back
    assert apply_status(u, status("offered"), T0 + 40) is None


def test_a_deferred_update_goes_on_with_its_deadline_moved_by_the_wait() -> None:
    u = apply_status(update(), status("deferred", reason="battery: 18% is below 30%"), T0 + 100)
    assert u is not None
    on = apply_status(u, status("downloading", bytes=0, total=300), T0 + 3700)
    assert on is not None and (on.state, on.reason, on.deferred_since) == ("downloading", None, None)
    assert on.deadline == T0 + 900 + 3600


def test_a_device_does_not_defer_an_update_it_has_staged() -> None:
    for state in ("staged", "activating", "trial"):
        assert (
            apply_status(update(state=state), status("deferred", reason="battery: 1% is below 30%"), T0)
            is None
        )


def test_a_deferred_update_does_not_time_out() -> None:
    u = update(state="deferred", reason="battery: 18% is below 30%", deferred_since=T0 + 1)
    assert expire(u, u.deadline + 10**6) is None
    # but a gateway's own decision (a new update replacing it) still ends it
    assert fail(u, "cancelled: replaced by update 0123456789ab", T0 + 2).state == "failed"


# ---- the deadline ----------------------------------------------------------------


def test_an_update_that_does_not_commit_by_its_deadline_fails_with_timeout() -> None:
    u = update(state="trial")
    assert expire(u, u.deadline - 1) is None
    timed_out = expire(u, u.deadline)
    assert timed_out is not None and (timed_out.state, timed_out.reason) == ("failed", "timeout")
    assert not timed_out.success and timed_out.finished == u.deadline


def test_the_deadline_leaves_an_ended_update_alone() -> None:
    assert expire(update(state="committed"), T0 + 10_000) is None
    assert fail(update(state="committed"), "cancelled", T0).state == "committed"


def test_a_committed_status_after_the_timeout_does_not_make_it_a_success() -> None:
    timed_out = expire(update(state="trial"), T0 + 901)
    assert timed_out is not None
    assert apply_status(timed_out, status("committed"), T0 + 902) is None


# ---- messages and checks ---------------------------------------------------------


def test_freshness_versions_always_grow() -> None:
    v1 = next_freshness_version(0, T0)
    assert v1 == int(T0 * 1000)
    v2 = next_freshness_version(v1, T0)  # the same ms
    v3 = next_freshness_version(v2, T0 - 3600)  # the clock stepped back
    assert v1 < v2 < v3


def test_the_offer_is_what_a_device_accepts() -> None:
    fresh = json.dumps({"signed": '{"v":1}', "signatures": []}).encode()
    msg = otaproto.check_offer(json.loads(offer_message("a1b2c3d4e5f6", MANIFEST_ID, len(MANIFEST), fresh)))
    assert msg["freshness"] == json.loads(fresh) and msg["size"] == len(MANIFEST)
    assert msg["manifest"] == MANIFEST_ID
    cancel = otaproto.check_offer(json.loads(cancel_message("a1b2c3d4e5f6")))
    assert cancel == {"v": 1, "id": "a1b2c3d4e5f6", "op": "cancel"}


def release(model: str = "thermostat", counter: int = 2) -> StoredRelease:
    return StoredRelease(MANIFEST_ID, model, counter, "2026.11.1", MANIFEST, {}, 0, 0, 0, T0)


def test_a_release_for_another_model_is_refused() -> None:
    with pytest.raises(UpdateRefusedError, match="is for thermostat") as exc:
        check_target("sh-1", "shirt", None, release())
    assert exc.value.code == "wrong_model"


def test_a_release_not_newer_than_the_running_one_is_refused() -> None:
    with pytest.raises(UpdateRefusedError, match="runs release counter 2") as exc:
        check_target("th-1", "thermostat", {"counter": 2, "state": "committed"}, release(counter=2))
    assert exc.value.code == "rollback"
    check_target("th-1", "thermostat", {"counter": 1, "state": "committed"}, release(counter=2))
    check_target("th-1", "thermostat", None, release())  # a device that does not say
