# The gateway's half of the update transfer (docs/ota.md, section 3): chunks
# built, the device's requests and statuses checked. With the device's half
# (pb/ota/transfer.py, whose names it carries too) both ends agree by
# construction. Never provisioned to a board.
import struct

from ..errors import ProtocolError
from ..ota.transfer import (
    CHUNK_FORMAT,
    CHUNK_HEADER,
    FLAG_ERROR,
    FLAG_LAST,
    MAX_CHUNK,
    UPDATE_ID_LEN,
    check_offer,
    decode_chunk,
    is_hex64,
    is_int,
    is_update_id,
)
from .protocol import MAX_INT

__all__ = [
    "CHUNK_HEADER",
    "FLAG_ERROR",
    "FLAG_LAST",
    "MAX_CHUNK",
    "UPDATE_ID_LEN",
    "check_offer",
    "decode_chunk",
    "is_hex64",
    "is_update_id",
]

STATES = (
    "offered",
    "downloading",
    "deferred",
    "staged",
    "verified",
    "activating",
    "trial",
    "committed",
    "rolled_back",
    "failed",
    "safe_mode",
)
TERMINAL = ("committed", "rolled_back", "failed")


def encode_chunk(seq, offset, data, tag, last=False, error=False):
    flags = (FLAG_LAST if last else 0) | (FLAG_ERROR if error else 0)
    return struct.pack(CHUNK_FORMAT, 1, flags, 0, seq, offset, len(data), tag[:8]) + bytes(data)


def check_request(msg):
    """A device's request for bytes, validated. Raises ProtocolError."""
    if not isinstance(msg, dict) or msg.get("v") != 1:
        raise ProtocolError("unsupported_version", "request is not a version 1 object")
    for k in ("off", "len", "seq"):
        if not is_int(msg.get(k)) or msg[k] < 0:
            raise ProtocolError("bad_type", "request.%s must be a non-negative integer" % k)
        if msg[k] > 0xFFFFFFFF:  # the chunk header's fields are 32 bits
            raise ProtocolError("bad_value", "request.%s must be below 2**32" % k)
    if not 0 < msg["len"] <= MAX_CHUNK:
        raise ProtocolError("bad_value", "request.len must be 1-%d" % MAX_CHUNK)
    obj = msg.get("obj")
    if obj != "manifest" and not is_hex64(obj):
        raise ProtocolError("bad_value", "request.obj must be 'manifest' or a blob hash")
    if not isinstance(msg.get("id"), str) or not isinstance(msg.get("dev"), str):
        raise ProtocolError("missing_field", "request needs id and dev")
    if not is_update_id(msg["id"]):
        raise ProtocolError("bad_value", "request.id must be %d lowercase hex digits" % UPDATE_ID_LEN)
    return msg


def check_status(msg):
    """A device's update status, validated. Raises ProtocolError."""
    if not isinstance(msg, dict) or msg.get("v") != 1:
        raise ProtocolError("unsupported_version", "status is not a version 1 object")
    if msg.get("state") not in STATES:
        raise ProtocolError("bad_value", "status.state must be one of " + ", ".join(STATES))
    if not isinstance(msg.get("dev"), str) or not isinstance(msg.get("id"), str):
        raise ProtocolError("missing_field", "status needs dev and id")
    if msg["id"] != "-" and not is_update_id(msg["id"]):
        raise ProtocolError("bad_value", "status.id must be %d lowercase hex digits or -" % UPDATE_ID_LEN)
    for k in ("bytes", "total", "counter"):
        if k in msg and (not is_int(msg[k]) or msg[k] < 0):
            raise ProtocolError("bad_type", "status.%s must be a non-negative integer" % k)
        if k in msg and msg[k] > MAX_INT:
            raise ProtocolError("bad_value", "status.%s must be at most 2**53 - 1" % k)
    ts = msg.get("ts")
    if ts is not None and not ((is_int(ts) or isinstance(ts, float)) and 0 <= ts <= MAX_INT):
        raise ProtocolError("bad_value", "status.ts must be a number within 0..2**53 - 1")
    if "reason" in msg and not isinstance(msg["reason"], str):
        raise ProtocolError("bad_type", "status.reason must be a string")
    return msg
