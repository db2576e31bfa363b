"""Classifying what arrives from the broker, as pure functions: every message
is accepted as a protocol message of a known device, ignored (our own echo),
or rejected with a reason that the gateway logs and counts."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware.pb.errors import ProtocolError
from firmware.pb.net.wire import MAX_DEPTH, MAX_MESSAGE
from firmware.pb.peer import ota_transfer as otaproto
from firmware.pb.peer import protocol as proto

# Reasons a message is rejected (the codes of firmware.pb.errors.ProtocolError, plus these).
SPOOFED = "spoofed"
UNKNOWN_DEVICE = "unknown_device"
RETAINED_COMMAND = "retained_command"

# The update transfer (docs/ota.md 3): what the gateway sends, and what it takes.
OTA_DOWN = ("ota/offer", "ota/chunk", "ota/root", "ota/time")
OTA_UP = ("ota/req", "ota/status")


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
        msg, why = decode(kind, payload)
    except ProtocolError as exc:
        return Rejected(exc.code, exc.message)
    if why is not None:
        return Rejected("bad_value", f"{kind} message {why}")
    if msg["dev"] != dev:
        return Rejected(SPOOFED, f"message on {topic} claims to come from {msg['dev']!r}")
    if kind not in ("hello", "state") and not known(dev):
        return Rejected(UNKNOWN_DEVICE, f"{kind} from {dev!r}, which has sent no hello")
    return Accepted(dev, kind, msg)


# What a message must hold for the walks of proto.decode() and unstorable()
# to find anything: nesting past MAX_DEPTH takes more brackets than that; a
# lone surrogate, a \u escape (the bytes themselves are strict UTF-8); an
# infinity, a number literal of 200 digits or more or with an exponent of
# three digits (a float reaches 1.8e308 with no fewer: JSON's integer part
# has no leading zeros). Either may be inside a string too: then the walks run.
_MAYBE_DEEP = MAX_DEPTH
_HUGE = 1e300  # (no float reaches past 1.8e308: a number field's bound, peer/protocol.py)
_MAYBE_HUGE = re.compile(rb"[eE][+]?[0-9]{3}|[0-9]{200}")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(parse_constant=_not_json)  # (json.loads would make one per call)


def decode(kind: str, payload: bytes) -> tuple[Any, str | None]:
    """proto.decode(kind, payload) and unstorable() of what it gives, the two
    walks over the decoded message left out when the bytes show that they
    cannot find anything (as most messages do: telemetry comes every second
    from every device). Raises ProtocolError as proto.decode()."""
    if (
        len(payload) <= MAX_MESSAGE
        and payload.count(b"{") + payload.count(b"[") <= _MAYBE_DEEP
        and b"\\u" not in payload
        and _MAYBE_HUGE.search(payload) is None
    ):
        try:
            msg = _JSON.decode(payload.decode("utf-8"))
        except (ValueError, UnicodeError):
            pass  # (proto.decode below tells what is wrong, in its words)
        else:
            return proto.check(kind, msg), None
    msg = proto.decode(kind, payload)
    return msg, unstorable(msg)


def unstorable(msg: Any) -> str | None:
    """Why a decoded message cannot be stored as it came, or None: a lone
    surrogate (JSON's "\\ud800" escape) has no UTF-8 form, NaN or an
    infinity (1e400) is not JSON, and an integer no float holds (JSON bounds
    none: what reads the stored values, the twin, the judge, the app, reads
    numbers as floats). Keys are text too."""
    stack = [msg]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return "holds a lone surrogate (text must be UTF-8)"
        elif isinstance(v, float) and not math.isfinite(v):
            return "holds NaN or an infinity"
        elif isinstance(v, int) and not -_HUGE < v < _HUGE:
            return "holds an integer beyond 1e300 (no float holds it)"
    return None


def is_ota_topic(topic: str) -> bool:
    """True for pb/<anything>/ota and below: classify_ota judges those."""
    parts = topic.split("/", 3)
    return len(parts) >= 3 and parts[0] == proto.ROOT and parts[2] == "ota"


def classify_ota(
    topic: str, payload: bytes, retain: bool, known: Callable[[str], bool]
) -> Accepted | Rejected | None:
    """classify() for the update topics pb/<device>/ota/{offer,chunk,time,req,status}.
    Offers, chunks and time statements are the gateway's own (echoes: None;
    retained: rejected);
    requests and statuses are validated with firmware.pb.peer.ota_transfer, must name
    the device of their topic, and must come from a known device."""
    parts = topic.split("/")
    if len(parts) != 4 or f"ota/{parts[3]}" not in OTA_DOWN + OTA_UP:
        return Rejected("unknown_topic", f"unknown message kind {'/'.join(parts[2:])[:40]!r}")
    dev, kind = parts[1], f"ota/{parts[3]}"
    if not proto.valid_id(dev):
        return Rejected("bad_device_id", f"bad device id in topic {topic[:80]!r}")
    if kind in OTA_DOWN:
        if retain and payload:
            return Rejected(RETAINED_COMMAND, f"retained {kind} on {topic}: the gateway never retains one")
        return None
    if not payload and retain:
        return None
    if len(payload) > proto.MAX_MESSAGE:
        return Rejected("too_large", f"{len(payload)} bytes exceeds {proto.MAX_MESSAGE}")
    try:
        msg = json.loads(payload.decode("utf-8"), parse_constant=_not_json)
    except (ValueError, UnicodeError) as exc:
        return Rejected("bad_json", f"not JSON: {exc}")
    except RecursionError:
        return Rejected("too_large", "message nested too deeply")
    try:
        msg = otaproto.check_request(msg) if kind == "ota/req" else otaproto.check_status(msg)
    except ProtocolError as exc:
        return Rejected(exc.code, exc.message)
    why = unstorable(msg)
    if why is not None:
        return Rejected("bad_value", f"{kind} message {why}")
    if msg.setdefault("dev", dev) != dev:  # (an acknowledgement may leave it to the topic)
        return Rejected(SPOOFED, f"message on {topic} claims to come from {str(msg['dev'])[:40]!r}")
    if not known(dev):
        return Rejected(UNKNOWN_DEVICE, f"{kind} from {dev!r}, which has sent no hello")
    return Accepted(dev, kind, msg)
