# The update transfer's wire format (docs/ota.md, section 3), sans-I/O, as
# the device speaks it: offers checked, requests built (and handed to a
# client), chunks as a 24-byte binary header plus bytes. Statuses are
# pb/ota/report.py's. The gateway's half (chunks built,
# requests and statuses checked) is pb/peer/ota_transfer.py.
import struct

from ..compat import const
from ..errors import ProtocolError

CHUNK_HEADER = const(24)
MAX_CHUNK = const(4096)
FLAG_LAST = const(1)
FLAG_ERROR = const(2)
UPDATE_ID_LEN = const(12)  # lowercase hex digits of an update id (as trust.UPDATE_ID_LEN)
CHUNK_FORMAT = ">BBHIII8s"  # version, flags, 0, seq, offset, length, tag


def decode_chunk(payload):
    """(flags, seq, offset, tag, data) of a chunk. Raises ProtocolError."""
    if len(payload) < CHUNK_HEADER:
        raise ProtocolError("malformed", "chunk shorter than its header")
    ver, flags, _, seq, offset, length, tag = struct.unpack(CHUNK_FORMAT, bytes(payload[:CHUNK_HEADER]))
    if ver != 1:
        raise ProtocolError("unsupported_version", "chunk format %d" % ver)
    data = memoryview(payload)[CHUNK_HEADER:]
    if length != len(data) or length > MAX_CHUNK:
        raise ProtocolError("malformed", "chunk length %d does not match its %d bytes" % (length, len(data)))
    return flags, seq, offset, tag, data


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _is_hex(s, n):
    if not isinstance(s, str) or len(s) != n:
        return False
    for c in s.encode("utf-8", "replace"):  # (bytes: no character interned, pb/ids.py)
        if not (48 <= c <= 57 or 97 <= c <= 102):  # 0-9 a-f
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
    if not is_int(msg.get("size")) or not 0 < msg["size"] <= 16384:
        raise ProtocolError("bad_value", "offer.size must be 1-16384")
    if not isinstance(msg.get("freshness"), dict):
        raise ProtocolError("bad_type", "offer.freshness must be an object")
    return msg


def request(dev, uid, obj, off, length, seq):
    """A request for length bytes of obj (the manifest or a blob) at off."""
    return {"v": 1, "dev": dev, "id": uid, "obj": obj, "off": off, "len": length, "seq": seq}


def send_request(client, dev, uid, obj, off, length, seq):
    """Ask the gateway for length bytes of obj at off."""
    import json

    from ..net.wire import topic

    client.publish(topic(dev, "ota/req"), json.dumps(request(dev, uid, obj, off, length, seq)), 0, False)
