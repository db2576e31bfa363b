"""Classifying the update topics (pure): requests and statuses from known
devices are taken, the gateway's own offers and chunks are echoes, and
everything else is rejected with a reason."""

from __future__ import annotations

import json

import pytest

from gateway.ingest import Accepted, Rejected, classify_ota, is_ota_topic

REQ = {"v": 1, "dev": "th-1", "id": "a1b2c3d4e5f6", "obj": "manifest", "off": 0, "len": 512, "seq": 1}
STREAM = {"v": 2, "dev": "th-1", "id": "a1b2c3d4e5f6", "s": 7, "objs": [["manifest", 0, 512]], "win": 8,
          "chunk": 4096}  # fmt: skip
ACK = {"v": 2, "dev": "th-1", "id": "a1b2c3d4e5f6", "s": 7, "ack": 4096, "win": 9}
STATUS = {"v": 1, "dev": "th-1", "id": "a1b2c3d4e5f6", "state": "downloading", "bytes": 1, "total": 2}


def known(dev: str) -> bool:
    return dev == "th-1"


def judge(topic: str, payload: object, retain: bool = False) -> Accepted | Rejected | None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return classify_ota(topic, data, retain, known)


def test_only_update_topics_are_routed_here() -> None:
    assert is_ota_topic("pb/th-1/ota/req") and is_ota_topic("pb/th-1/ota") and is_ota_topic("pb/x/ota/a/b")
    assert not is_ota_topic("pb/th-1/telemetry") and not is_ota_topic("other/th-1/ota/req")


def test_a_request_and_a_status_are_accepted() -> None:
    assert judge("pb/th-1/ota/req", REQ) == Accepted("th-1", "ota/req", REQ)
    assert judge("pb/th-1/ota/req", STREAM) == Accepted("th-1", "ota/req", STREAM)
    assert judge("pb/th-1/ota/req", ACK) == Accepted("th-1", "ota/req", ACK)
    # an acknowledgement as a device sends it: its stream alone, the device is the topic's
    bare = {"v": 2, "s": 7, "ack": 4096, "win": 9}
    assert judge("pb/th-1/ota/req", bare) == Accepted("th-1", "ota/req", bare | {"dev": "th-1"})
    assert judge("pb/th-1/ota/status", STATUS, retain=True) == Accepted("th-1", "ota/status", STATUS)


def test_our_own_offers_and_chunks_are_echoes() -> None:
    assert judge("pb/th-1/ota/offer", {"v": 1, "id": "x", "op": "cancel"}) is None
    assert judge("pb/th-1/ota/chunk", b"\x01" + bytes(23)) is None


def test_a_cleared_retained_status_is_nothing() -> None:
    assert judge("pb/th-1/ota/status", b"", retain=True) is None


@pytest.mark.parametrize(
    ("topic", "payload", "retain", "reason"),
    [
        ("pb/th-1/ota/offer", {"v": 1}, True, "retained_command"),
        ("pb/th-1/ota/bogus", REQ, False, "unknown_topic"),
        ("pb/th-1/ota", REQ, False, "unknown_topic"),
        ("pb/th-1/ota/req/more", REQ, False, "unknown_topic"),
        ("pb/TH 1/ota/req", REQ, False, "bad_device_id"),
        ("pb/th-1/ota/req", b"{nope", False, "bad_json"),
        ("pb/th-1/ota/req", b'{"v": NaN}', False, "bad_json"),
        ("pb/th-1/ota/req", b"\xff\xfe", False, "bad_json"),
        ("pb/th-1/ota/req", b" " * 5000, False, "too_large"),
        ("pb/th-1/ota/req", REQ | {"len": 5000}, False, "bad_value"),
        ("pb/th-1/ota/req", REQ | {"obj": "../../etc/passwd"}, False, "bad_value"),
        ("pb/th-1/ota/req", REQ | {"off": -1}, False, "bad_type"),
        ("pb/th-1/ota/req", REQ | {"v": 3}, False, "unsupported_version"),
        ("pb/th-1/ota/req", REQ | {"v": 2}, False, "bad_type"),  # (version 1's fields: no stream)
        ("pb/th-1/ota/req", STREAM | {"objs": [["manifest", 0, 512]] * 17}, False, "bad_value"),
        ("pb/th-1/ota/req", STREAM | {"ack": 0}, False, "bad_value"),
        ("pb/th-1/ota/req", ACK | {"win": 0}, False, "bad_value"),
        ("pb/th-1/ota/req", STREAM | {"dev": "th-2"}, False, "spoofed"),
        ("pb/th-1/ota/req", ACK | {"dev": "th-2"}, False, "spoofed"),
        ("pb/th-1/ota/req", ACK | {"id": "A1B2C3D4E5F6"}, False, "bad_value"),
        ("pb/th-1/ota/req", ACK | {"dev": 5}, False, "bad_type"),
        ("pb/th-1/ota/req", {"v": 2, "s": 7, "win": 9}, False, "bad_value"),  # neither objs nor ack
        ("pb/th-9/ota/req", {"v": 2, "s": 7, "ack": 0, "win": 9}, False, "unknown_device"),
        ("pb/th-9/ota/req", STREAM | {"dev": "th-9"}, False, "unknown_device"),
        ("pb/th-1/ota/status", STATUS | {"state": "done"}, False, "bad_value"),
        ("pb/th-1/ota/status", STATUS | {"reason": 5}, False, "bad_type"),
        ("pb/th-1/ota/req", REQ | {"dev": "th-2"}, False, "spoofed"),
        ("pb/th-1/ota/status", STATUS | {"dev": "th-2"}, False, "spoofed"),
        ("pb/th-9/ota/req", REQ | {"dev": "th-9"}, False, "unknown_device"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(
    topic: str, payload: object, retain: bool, reason: str
) -> None:
    verdict = judge(topic, payload, retain)
    assert isinstance(verdict, Rejected) and verdict.reason == reason, verdict
