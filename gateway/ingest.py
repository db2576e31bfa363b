"""Classifying what arrives from the broker, as pure functions: every message
is accepted as a protocol message of a known device, ignored (our own echo),
or rejected with a reason that the gateway logs and counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware.pb import proto
from firmware.pb.errors import ProtocolError

# Reasons a message is rejected (the codes of firmware.pb.errors.ProtocolError, plus these).
SPOOFED = "spoofed"
UNKNOWN_DEVICE = "unknown_device"
RETAINED_COMMAND = "retained_command"


@dataclass(frozen=True)
class Accepted:
    dev: str
    kind: str
    msg: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


def classify(
    topic: str, payload: bytes, retain: bool, known: Callable[[str], bool]
) -> Accepted | Rejected | None:
    """What to do with one message. None means: expected, nothing to do
    (the broker echoing our own commands, or a retained message being cleared)."""
    try:
        dev, kind = proto.parse_topic(topic)
    except ProtocolError as exc:
        return Rejected(exc.code, exc.message)
    if kind in proto.DOWN:
        if retain and payload:
            return Rejected(RETAINED_COMMAND, f"retained command on {topic}: commands must not be retained")
        return None
    if not payload and retain:
        return None
    try:
        msg = proto.decode(kind, payload)
    except ProtocolError as exc:
        return Rejected(exc.code, exc.message)
    if msg["dev"] != dev:
        return Rejected(SPOOFED, f"message on {topic} claims to come from {msg['dev']!r}")
    if kind not in ("hello", "state") and not known(dev):
        return Rejected(UNKNOWN_DEVICE, f"{kind} from {dev!r}, which has sent no hello")
    return Accepted(dev, kind, msg)
