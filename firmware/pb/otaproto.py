# The update transfer's wire format (docs/ota.md, section 3), sans-I/O:
# offers, requests and status messages as validated dicts, chunks as a
# 24-byte binary header plus bytes. Shared by the device and the gateway.
import struct

from .compat import const
from .errors import ProtocolError

CHUNK_HEADER = const(24)
MAX_CHUNK = const(4096)
FLAG_LAST = const(1)
FLAG_ERROR = const(2)
UPDATE_ID_LEN = const(12)  # lowercase hex digits of an update id (as trust.UPDATE_ID_LEN)
_FMT = ">BBHIII8s"

STATES = (
    "offered",
    "downloading",
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
    return struct.pack(_FMT, 1, flags, 0, seq, offset, len(data), tag[:8]) + bytes(data)


def decode_chunk(payload):
    """(flags, seq, offset, tag, data) of a chunk. Raises ProtocolError."""
    if len(payload) < CHUNK_HEADER:
        raise ProtocolError("malformed", "chunk shorter than its header")
    ver, flags, _, seq, offset, length, tag = struct.unpack(_FMT, bytes(payload[:CHUNK_HEADER]))
    if ver != 1:
        raise ProtocolError("unsupported_version", "chunk format %d" % ver)
    data = memoryview(payload)[CHUNK_HEADER:]
    if length != len(data) or length > MAX_CHUNK:
        raise ProtocolError("malformed", "chunk length %d does not match its %d bytes" % (length, len(data)))
    return flags, seq, offset, tag, data


def _int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _is_hex(s, n):
    if not isinstance(s, str) or len(s) != n:
        return False
    for c in s:
        if c not in "0123456789abcdef":
            return False
    return True


def is_hex64(s):
    return _is_hex(s, 64)


def is_update_id(s):
    """An update id as the gateway makes them: 12 lowercase hex digits."""
    return _is_hex(s, UPDATE_ID_LEN)


def check_offer(msg):
    """An offer or cancel from the gateway, validated. Raises ProtocolError."""
    if not isinstance(msg, dict) or msg.get("v") != 1:
        raise ProtocolError("unsupported_version", "offer is not a version 1 object")
    if not is_update_id(msg.get("id")):
        raise ProtocolError("bad_value", "offer id must be %d lowercase hex digits" % UPDATE_ID_LEN)
    if msg.get("op") == "cancel":
        return msg
    if not is_hex64(msg.get("manifest")):
        raise ProtocolError("bad_type", "offer.manifest must be 64 lowercase hex")
    if not _int(msg.get("size")) or not 0 < msg["size"] <= 16384:
        raise ProtocolError("bad_value", "offer.size must be 1-16384")
    if not isinstance(msg.get("freshness"), dict):
        raise ProtocolError("bad_type", "offer.freshness must be an object")
    return msg


def check_request(msg):
    """A device's request for bytes, validated. Raises ProtocolError."""
    if not isinstance(msg, dict) or msg.get("v") != 1:
        raise ProtocolError("unsupported_version", "request is not a version 1 object")
    for k in ("off", "len", "seq"):
        if not _int(msg.get(k)) or msg[k] < 0:
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
    # 2**53 - 1 is proto.MAX_INT (not imported: the device has no use for proto)
    for k in ("bytes", "total", "counter"):
        if k in msg and (not _int(msg[k]) or msg[k] < 0):
            raise ProtocolError("bad_type", "status.%s must be a non-negative integer" % k)
        if k in msg and msg[k] > 9007199254740991:
            raise ProtocolError("bad_value", "status.%s must be at most 2**53 - 1" % k)
    ts = msg.get("ts")
    if ts is not None and not ((_int(ts) or isinstance(ts, float)) and 0 <= ts <= 9007199254740991):
        raise ProtocolError("bad_value", "status.ts must be a number within 0..2**53 - 1")
    if "reason" in msg and not isinstance(msg["reason"], str):
        raise ProtocolError("bad_type", "status.reason must be a string")
    return msg
