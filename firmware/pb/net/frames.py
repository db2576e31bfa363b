# The serial carrier's frames (docs/protocol.md 15), sans-I/O: a USB serial
# port or a UART carries the messages MQTT carries, each a kind (its topic's
# tail: "hello", "cmd", "ota/chunk"...) and a payload. encode() makes a
# frame; a Decoder takes the line's bytes as they come and gives back whole
# messages, passing over what is not a frame (console text, line noise, a
# frame cut short by a reset). The device and the gateway share it.
#
# A frame: FA CE, the body's length (2 bytes, big-endian), that length with
# every bit inverted, the body (the kind's length in one byte, the kind, the
# payload), then the body's CRC-32 (4 bytes, big-endian).
from binascii import crc32

from ..compat import MICROPYTHON, const
from ..errors import ProtocolError

_M0 = const(0xFA)  # the start marker: FA never occurs in UTF-8 text
_M1 = const(0xCE)
_HEAD = const(6)  # marker, length, inverted length
_MAX_BODY = const(4400)  # an update chunk (4096 + 28), its kind, and room
_MAX_KIND = const(32)
_FRAME = const(4410)  # _HEAD + _MAX_BODY + CRC: the most a Decoder holds
_SMALL = const(1536)  # the room a runtime's decoder starts with: its messages but chunks


def _kind(b, i, end):
    # b[i:end] is a kind: 1-32 visible ASCII characters
    if not 0 < end - i <= _MAX_KIND:
        return False
    for k in range(i, end):
        if not 0x20 < b[k] < 0x7F:
            return False
    return True


def _find(b, i, end):
    # where the first FA of b[i:end] is, or end
    if isinstance(b, bytes):
        i = b.find(b"\xfa", i, end)
        return end if i < 0 else i
    while i < end and b[i] != _M0:
        i += 1
    return i


def pieces(kind, payload):
    """The frame of one message in three pieces, (head, payload, CRC), the
    payload not copied: a board writes them one after the other, and never
    holds a message twice. Raises ProtocolError: bad_topic for a kind that
    is not 1-32 visible ASCII characters, too_large for a body over 4400
    bytes."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    k = kind.encode("utf-8")
    if not _kind(k, 0, len(k)):
        raise ProtocolError("bad_topic", "frame kind %r" % kind)
    n = 1 + len(k) + len(payload)
    if n > _MAX_BODY:
        raise ProtocolError("too_large", "frame body of %d bytes" % n)
    head = bytearray(7 + len(k))
    head[0] = _M0
    head[1] = _M1
    head[2] = n >> 8
    head[3] = n & 0xFF
    head[4] = head[2] ^ 0xFF
    head[5] = head[3] ^ 0xFF
    head[6] = len(k)
    head[7:] = k
    return head, payload, crc32(payload, crc32(memoryview(head)[6:])).to_bytes(4, "big")


def encode(kind, payload):
    """The frame of one message, in one piece (a bytearray); see pieces()."""
    head, payload, crc = pieces(kind, payload)
    return head + payload + crc


class Decoder:
    """Messages out of a byte stream: feed() the bytes as they come, in
    pieces of any size, and get the frames completed, in order, as (kind,
    payload), payload bytes. It holds at most one frame of the largest size,
    in a buffer taken at the start. Bytes that begin no frame are passed
    over (counted in skipped); a frame whose header, CRC or kind does not
    check is dropped (counted in dropped) and the search goes on right
    after its start marker, so a frame that began inside it is still found.
    A frame whose CRC checks but whose kind does not is passed over whole.

    With handler, each frame goes to handler(kind, payload) as it is
    completed instead (feed and idle return nothing): on MicroPython the
    payload is then a memoryview of the buffer, valid only during the call,
    so that a board never copies a 4 KB update chunk on a fragmented heap.
    Without lean, the buffer starts with room for the messages of a runtime
    (1.5 KB) and grows when a frame needs more (a heap that cannot spare the
    largest frame's room for good); lean takes that room at the start, as
    update mode does."""

    def __init__(self, handler=None, lean=True):
        self.handler = handler
        self.skipped = 0
        self.dropped = 0
        # the bytes held, from a start marker on; a bytearray keeps the room
        # it had when it shrinks (on a board), so this is its only allocation
        self._buf = bytearray(_FRAME if lean else _SMALL)
        self._buf[:] = b""

    def feed(self, data):
        """The frames completed by data (bytes or any buffer), in order."""
        out = []  # type: list
        buf = self._buf
        n = len(data)
        i = 0
        while True:
            need = self._scan(out)
            if i >= n:
                return out
            if need:
                k = min(need, n - i)
                buf.extend(memoryview(data)[i : i + k])
                i += k
            else:
                j = _find(data, i, n)
                self.skipped += j - i
                if j < n:
                    buf.append(_M0)
                    j += 1
                i = j

    def idle(self):
        """The line has gone quiet: the frame being read will not be
        completed. It is dropped, and the frames whole in what it held
        are given, in order; nothing is held after."""
        out = []  # type: list
        while self._scan(out):
            held = len(self._buf)
            self._drop(min(held, 2), held > 1)
        return out

    def _scan(self, items):
        # frames whole in what is held, appended to items; how many more bytes
        # the frame being read needs before it can be judged (0: none held)
        buf = self._buf
        while True:
            held = len(buf)
            if not held:
                return 0
            if held < 2:
                return 1
            if buf[1] != _M1:
                self._drop(1, False)  # an FA, not a start marker
                continue
            if held < _HEAD:
                return _HEAD - held
            n = buf[2] << 8 | buf[3]
            if buf[4] != buf[2] ^ 0xFF or buf[5] != buf[3] ^ 0xFF or not 1 < n <= _MAX_BODY:
                self._drop(2, True)
                continue
            end = n + 10
            if held < end:
                return end - held
            mv = memoryview(buf)
            if crc32(mv[_HEAD : end - 4]) != int.from_bytes(mv[end - 4 : end], "big"):
                del mv  # (CPython resizes no bytearray a view holds)
                self._drop(2, True)
                continue
            k = 7 + buf[6]
            if k <= n + 6 and _kind(buf, 7, k):
                kind = bytes(mv[7:k]).decode()
                if self.handler is None:
                    items.append((kind, bytes(mv[k : end - 4])))
                else:
                    self.handler(kind, mv[k : end - 4] if MICROPYTHON else bytes(mv[k : end - 4]))
            else:
                self.dropped += 1
                self.skipped += end
            del mv
            buf[:end] = b""

    def _drop(self, start, count):
        # pass over the start of what is held, up to the next FA from start
        # on (count: as a frame dropped)
        buf = self._buf
        if count:
            self.dropped += 1
        j = _find(buf, start, len(buf))
        self.skipped += j
        buf[:j] = b""
