# The gateway's half of the update transfer (docs/ota.md, section 3): chunks
# built, the device's requests and statuses checked, and Stream, the
# sending side of one windowed stream (sans-I/O). With the device's half
# (pb/ota/transfer.py, whose names it carries too) both ends agree by
# construction. Version 1 of the requests and chunks (one chunk per
# request), which devices of earlier runtimes speak, is served too.
# Never provisioned to a board.
import struct
from binascii import crc32

from ..errors import ProtocolError
from ..ota.transfer import (
    Receiver,
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
    "MAX_OBJECTS",
    "MAX_WINDOW",
    "UPDATE_ID_LEN",
    "Receiver",
    "check_offer",
    "decode_chunk",
    "is_hex64",
    "is_update_id",
]

# the device's half names these privately (a board's heap holds every public name)
CHUNK_HEADER = 28
MAX_CHUNK = 4096
FLAG_LAST = 1
FLAG_ERROR = 2
UPDATE_ID_LEN = 12
# version, flags, index of the object in the request, stream, stream position,
# offset in the object, tag, CRC-32 of everything before it and the bytes after
CHUNK_FORMAT = ">BBHIII8sI"
MAX_WINDOW = 64  # chunks a stream may have unacknowledged
MAX_OBJECTS = 16  # objects one request may name (as pb/ota/transfer.py's)
V1_HEADER = 24
V1_FORMAT = ">BBHIII8s"  # version 1, flags, 0, seq, offset, length, tag
MIN_CHUNK = 64  # the smallest chunk size a version 2 request may ask for
TAG_HEX = 16  # a blob named in a version 2 request: its zsha256's first 16 hex digits

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


def encode_chunk(stream, idx, pos, offset, data, tag, last=False, error=False):
    """A version 2 chunk (docs/ota.md 3.3): bytes of object idx of a
    stream, at stream position pos and offset in the object."""
    flags = (FLAG_LAST if last else 0) | (FLAG_ERROR if error else 0)
    head = struct.pack(CHUNK_FORMAT[:-1], 2, flags, idx, stream, pos, offset, tag[:8])
    return head + struct.pack(">I", crc32(data, crc32(head))) + bytes(data)


def encode_chunk_v1(seq, offset, data, tag, last=False, error=False):
    """A version 1 chunk: the answer to one version 1 request."""
    flags = (FLAG_LAST if last else 0) | (FLAG_ERROR if error else 0)
    return struct.pack(V1_FORMAT, 1, flags, 0, seq, offset, len(data), tag[:8]) + bytes(data)


def decode_chunk_v1(payload):
    """(flags, seq, offset, tag, data) of a version 1 chunk. Raises ProtocolError."""
    if len(payload) < V1_HEADER:
        raise ProtocolError("malformed", "chunk shorter than its header")
    ver, flags, _, seq, offset, length, tag = struct.unpack(V1_FORMAT, bytes(payload[:V1_HEADER]))
    if ver != 1:
        raise ProtocolError("unsupported_version", "chunk format %d" % ver)
    data = memoryview(payload)[V1_HEADER:]
    if length != len(data) or length > MAX_CHUNK:
        raise ProtocolError("malformed", "chunk length %d does not match its %d bytes" % (length, len(data)))
    return flags, seq, offset, tag, data


def _u32(msg, k):
    if not is_int(msg.get(k)) or msg[k] < 0:
        raise ProtocolError("bad_type", "request.%s must be a non-negative integer" % k)
    if msg[k] > 0xFFFFFFFF:  # the chunk header's fields are 32 bits
        raise ProtocolError("bad_value", "request.%s must be below 2**32" % k)
    return msg[k]


def _window(msg):
    if not is_int(msg.get("win")) or not 1 <= msg["win"] <= MAX_WINDOW:
        raise ProtocolError("bad_value", "request.win must be 1-%d" % MAX_WINDOW)


def is_object_name(s):
    """A version 2 request's name of an object: manifest, or a blob's
    zsha256's first 16 lowercase hex digits."""
    if s == "manifest":
        return True
    if not isinstance(s, str) or len(s) != TAG_HEX:
        return False
    return all(c in "0123456789abcdef" for c in s)


def check_request(msg):
    """A device's request for bytes (version 1), or its request for a
    stream or acknowledgement of one (version 2), validated. Raises
    ProtocolError."""
    if not isinstance(msg, dict) or msg.get("v") not in (1, 2):
        raise ProtocolError("unsupported_version", "request is not a version 1 or 2 object")
    if msg["v"] == 2:
        _check_v2(msg)
    else:
        for k in ("off", "len", "seq"):
            _u32(msg, k)
        if not 0 < msg["len"] <= MAX_CHUNK:
            raise ProtocolError("bad_value", "request.len must be 1-%d" % MAX_CHUNK)
        obj = msg.get("obj")
        if obj != "manifest" and not is_hex64(obj):
            raise ProtocolError("bad_value", "request.obj must be 'manifest' or a blob hash")
    if "ack" in msg and msg["v"] == 2:
        # an acknowledgement names its stream; id and dev, which the stream
        # and the topic say, are optional (earlier runtimes send them)
        if "id" in msg and not is_update_id(msg["id"]):
            raise ProtocolError("bad_value", "request.id must be %d lowercase hex digits" % UPDATE_ID_LEN)
        if "dev" in msg and not isinstance(msg["dev"], str):
            raise ProtocolError("bad_type", "request.dev must be a string")
        return msg
    if not isinstance(msg.get("id"), str) or not isinstance(msg.get("dev"), str):
        raise ProtocolError("missing_field", "request needs id and dev")
    if not is_update_id(msg["id"]):
        raise ProtocolError("bad_value", "request.id must be %d lowercase hex digits" % UPDATE_ID_LEN)
    return msg


def _check_v2(msg):
    _u32(msg, "s")
    _window(msg)
    if "ack" in msg:
        if "objs" in msg:
            raise ProtocolError("bad_value", "a request has objs or ack, not both")
        _u32(msg, "ack")
        return
    if not is_int(msg.get("chunk")) or not MIN_CHUNK <= msg["chunk"] <= MAX_CHUNK:
        raise ProtocolError("bad_value", "request.chunk must be %d-%d" % (MIN_CHUNK, MAX_CHUNK))
    objs = msg.get("objs")
    if not isinstance(objs, list) or not 0 < len(objs) <= MAX_OBJECTS:
        raise ProtocolError("bad_value", "request.objs must be a list of 1-%d objects" % MAX_OBJECTS)
    for o in objs:
        if not isinstance(o, list) or len(o) != 3:
            raise ProtocolError("bad_type", "request.objs holds [name, offset, length] lists")
        if not is_object_name(o[0]):
            raise ProtocolError("bad_value", "an object is 'manifest' or 16 hex digits of a blob hash")
        for x in o[1:]:
            if not is_int(x) or not 0 <= x <= 0xFFFFFFFF:
                raise ProtocolError("bad_value", "an object's offset and length must be within 0..2**32 - 1")
        if o[2] == 0 or o[1] + o[2] > 0xFFFFFFFF:
            raise ProtocolError("bad_value", "an object's length must be 1.. and end below 2**32")


class Stream:
    """The gateway's side of one stream of one device: objs ([key, tag,
    offset, end] each, from the request), the chunk size and window it
    asked for. chunks() says what the window allows now: at most win chunks
    beyond the byte last acknowledged; ack() moves it."""

    def __init__(self, s, objs, chunk, win):
        self.s = s
        self.objs = objs
        self.chunk = chunk
        self.win = win
        self.i = 0  # the object being sent
        self.pos = 0  # stream bytes sent
        self.acked = 0
        self.out = []  # stream positions where the chunks not yet acknowledged end

    def ack(self, pos, win):
        """An acknowledgement: True if it moved the window (one of an
        earlier point, or of bytes not sent, changes nothing)."""
        if not self.acked <= pos <= self.pos:
            return False
        self.acked = pos
        self.win = win
        self.out = [e for e in self.out if e > pos]
        return True

    def done(self):
        return self.i >= len(self.objs)

    def due(self):
        """Whether the window allows a chunk now."""
        return self.i < len(self.objs) and len(self.out) < self.win

    def chunks(self, most=MAX_WINDOW):
        """[(idx, key, tag, offset, n, pos, last)] the window allows now, at
        most `most` (the rest at the next call)."""
        got = []  # type: list[tuple]
        while self.i < len(self.objs) and len(self.out) < self.win and len(got) < most:
            o = self.objs[self.i]
            n = min(self.chunk, o[3] - o[2])
            got.append(
                (self.i, o[0], o[1], o[2], n, self.pos, o[2] + n == o[3] and self.i == len(self.objs) - 1)
            )
            o[2] += n
            self.pos += n
            self.out.append(self.pos)
            if o[2] >= o[3]:
                self.i += 1
        return got


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
    for k in ("bytes", "total", "counter", "check_ms"):
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
