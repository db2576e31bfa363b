# The update transfer's wire format (docs/ota.md, section 3), sans-I/O, as
# the device speaks it: offers checked; requests and acknowledgements built
# (and handed to a carrier: MQTT, BLE or serial); chunks as a 28-byte binary
# header, with a CRC-32, plus bytes; and the Receiver, the device's side of
# one windowed stream of objects. Statuses are pb/ota/report.py's. The
# gateway's half (streams served, requests and statuses checked) is
# pb/peer/ota_transfer.py.
import struct
from binascii import crc32

from ..compat import const, rand_below, ticks_ms
from ..errors import ProtocolError

# (private names: a board's heap holds every public one; pb/peer/ota_transfer.py
# names them for the gateway, and tests/firmware/test_transfer.py checks both agree)
_HEADER = const(28)  # CHUNK_HEADER
_MAX = const(4096)  # MAX_CHUNK
_MAX_OBJECTS = const(16)  # objects one request may name (peer/ota_transfer.py MAX_OBJECTS)
_ERROR = const(2)  # FLAG_ERROR
_ID_LEN = const(12)  # _ID_LEN: lowercase hex digits of an update id (as trust._ID_LEN)


def decode_chunk(payload):
    """(flags, idx, stream, pos, offset, tag, data) of a chunk. Raises
    ProtocolError: "corrupt" when its CRC does not match."""
    if len(payload) < _HEADER:
        raise ProtocolError("malformed", "chunk shorter than its header")
    mv = memoryview(payload)
    # version, flags, index of the object in the request, stream, stream
    # position, offset in the object, tag, CRC-32 of the rest (CHUNK_FORMAT)
    ver, flags, idx, stream, pos, off, tag, crc = struct.unpack(">BBHIII8sI", bytes(mv[:_HEADER]))
    if ver != 2:
        raise ProtocolError("unsupported_version", "chunk format %d" % ver)
    data = mv[_HEADER:]
    if len(data) > _MAX:
        raise ProtocolError("malformed", "chunk longer than 4096 bytes")
    if crc32(data, crc32(mv[: _HEADER - 4])) != crc:
        raise ProtocolError("malformed", "chunk CRC does not match")
    return flags, idx, stream, pos, off, tag, data


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
    return _is_hex(s, _ID_LEN)


def check_offer(msg):
    """An offer or cancel from the gateway, validated. Raises ProtocolError."""
    if not isinstance(msg, dict) or msg.get("v") != 1:
        raise ProtocolError("unsupported_version", "offer is not a version 1 object")
    if not is_update_id(msg.get("id")):
        raise ProtocolError("bad_value", "offer id must be %d lowercase hex digits" % _ID_LEN)
    if msg.get("op") == "cancel":
        return msg
    if not is_hex64(msg.get("manifest")):
        raise ProtocolError("bad_type", "offer.manifest must be 64 lowercase hex")
    if not is_int(msg.get("size")) or not 0 < msg["size"] <= 16384:
        raise ProtocolError("bad_value", "offer.size must be 1-16384")
    if not isinstance(msg.get("freshness"), dict):
        raise ProtocolError("bad_type", "offer.freshness must be an object")
    return msg


class Receiver:
    """The device's side of one stream (docs/ota.md 3.2, 3.3): the objects
    it asks for, in order, each [name, tag, offset, end] (name "manifest"
    or the first 16 hex digits of a blob's zsha256, tag its 8 bytes); what
    it holds of them; the window it asks for (win chunks), grown by one
    chunk at each acknowledgement, up to 32, and halved at a loss.
    Sans-I/O: request() builds a request, ack() an acknowledgement when one
    is due, and feed() says what a chunk is; the caller sends them and
    writes the bytes. Only chunks in order are kept: nothing is buffered.
    (Its names are few and short: each new name costs a board's heap.)"""

    def __init__(self, dev, uid, chunk, win):
        self.dev = dev
        self.uid = uid
        self.chunk = chunk
        self.win = win
        self.seq = rand_below(0x10000) << 12  # the stream's number (a reset's are not its earlier ones')
        self.objs = []
        self.map = []  # indexes in objs of the stream's objects
        self.cur = 0  # index in objs of the object being received
        self.pos = 0  # bytes of the stream held
        self.acked = 0  # chunks kept since the last acknowledgement
        self.tries = 0  # requests since the last byte held
        self.ts = ticks_ms()  # the caller's: when the last byte came

    def request(self, objs=None):
        """A request for objs, or (none given) again from what is held
        after a loss or a silence."""
        if objs is None:
            self.win = max(1, self.win >> 1)
            self.tries += 1
        else:
            self.objs = objs
            self.feed(None)  # (past the objects held whole)
        objs = self.objs
        # the objects of this stream: those not yet held, the first at most
        # 16 (a chunk names its object by its index in this list)
        self.map = []
        want = []  # type: list[list]
        for k in range(self.cur, len(objs)):
            o = objs[k]
            if o[2] < o[3] and len(want) < _MAX_OBJECTS:
                self.map.append(k)
                want.append([o[0], o[2], o[3] - o[2]])
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.pos = self.acked = 0
        return {
            "v": 2,
            "dev": self.dev,
            "id": self.uid,
            "s": self.seq,
            "objs": want,
            "win": self.win,
            "chunk": self.chunk,
        }

    def feed(self, payload):
        """What a chunk is: (index in objs, offset, bytes) to keep; True: one
        is lost or corrupt, ask again; a str: the gateway's error; None:
        nothing (a repeat, another stream's)."""
        got = None
        if payload is not None:
            try:
                flags, i, seq, pos, off, tag, data = decode_chunk(payload)
            except ProtocolError:
                # corrupt: a loss once this stream has brought bytes (before,
                # it may be an earlier stream's, still under way when asked)
                return self.pos > 0 or None
            if seq != self.seq:
                return None
            if flags & _ERROR:
                try:
                    return bytes(data).decode("utf-8")[:120]
                except ValueError:  # (UnicodeError) the gateway's words, not readable
                    return "an error the gateway could not put in UTF-8"
            if pos < self.pos or i >= len(self.map) or self.map[i] < self.cur:
                return None  # a repeat
            j = self.map[i]
            o = self.objs[j]
            if (
                pos > self.pos
                or j != self.cur
                or tag != o[1]
                or off != o[2]
                or len(data) != min(self.chunk, o[3] - off)
            ):
                return True  # one before it went missing, or not what was asked for
            o[2] += len(data)
            self.pos += len(data)
            self.acked += 1
            self.tries = 0
            got = j, off, data
        while self.cur < len(self.objs) and self.objs[self.cur][2] >= self.objs[self.cur][3]:
            self.cur += 1
        return got

    def ack(self):
        """The acknowledgement due now (every half window of chunks kept), or
        None. Every loss asks again, so one due grows the window."""
        if self.cur >= len(self.objs) or self.acked < max(1, self.win >> 1):
            return None
        self.win = min(self.win + 1, 32)
        self.acked = 0
        # (the stream names the device's update: the topic says the device)
        return {"v": 2, "s": self.seq, "ack": self.pos, "win": self.win}


def send_request(client, dev, msg):
    """Send a request or acknowledgement (a Receiver's) to the gateway."""
    import json

    from ..net.wire import topic

    client.publish(topic(dev, "ota/req"), json.dumps(msg, separators=(",", ":")), 0, False)
