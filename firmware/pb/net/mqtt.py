# MQTT 3.1.1 packet codec, sans-I/O: bytes in, tuples out, and back. This
# is the client's half (what a device sends and receives); the broker's half
# (CONNECT, SUBSCRIBE... parsed; CONNACK, SUBACK... built) is in pb/peer/mqtt_broker.py,
# which tests and tools load and a device never does.
#
# Packets are small tuples whose first item is the packet type:
#   (CONNECT, client_id, clean, keepalive, will, user, password)
#       will is None or (topic, payload, qos, retain)
#   (CONNACK, session_present, return_code)
#   (PUBLISH, topic, payload, qos, retain, dup, pid)     pid is 0 at QoS 0
#   (PUBACK, pid)  (UNSUBACK, pid)
#   (SUBSCRIBE, pid, [(filter, qos), ...])  (SUBACK, pid, [code, ...])
#   (UNSUBSCRIBE, pid, [filter, ...])
#   (PINGREQ,)  (PINGRESP,)  (DISCONNECT,)
#   (SKIPPED, remaining_length, topic, qos, pid)   a PUBLISH larger than the
#       decoder's limit, consumed without being buffered; topic is None (and
#       qos, pid 0) if its header could not be read
# QoS 2 is not spoken: subscriptions ask for at most QoS 1, so a broker never
# sends QoS 2, and a QoS 2 PUBLISH is reported as a protocol error.
import struct

from ..compat import const
from ..errors import ProtocolError

CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
SUBSCRIBE = const(8)
SUBACK = const(9)
UNSUBSCRIBE = const(10)
UNSUBACK = const(11)
PINGREQ = const(12)
PINGRESP = const(13)
DISCONNECT = const(14)
SKIPPED = const(100)

MAX_REMAINING = const(268435455)
MAX_PID = const(65535)

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

# Fixed-header flag bits each type must carry (MQTT 3.1.1, 2.2.2); PUBLISH varies.
_FLAGS = {
    CONNECT: 0,
    CONNACK: 0,
    PUBACK: 0,
    SUBSCRIBE: 2,
    SUBACK: 0,
    UNSUBSCRIBE: 2,
    UNSUBACK: 0,
    PINGREQ: 0,
    PINGRESP: 0,
    DISCONNECT: 0,
}


def malformed_error(message):
    return ProtocolError("malformed", message)


# ---- encoding -------------------------------------------------------------


def encode_length(n):
    """The variable-length 'remaining length' field for n."""
    if n < 0 or n > MAX_REMAINING:
        raise ProtocolError("too_large", "remaining length %d out of range" % n)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_str(s):
    if isinstance(s, str):
        s = s.encode("utf-8")
    if len(s) > 65535:
        raise ProtocolError("too_large", "string of %d bytes" % len(s))
    return struct.pack("!H", len(s)) + s


def valid_utf8(buf):
    """True if buf is well-formed UTF-8 (RFC 3629, as MQTT-1.5.3-1 asks):
    no overlong forms, no surrogates, nothing past U+10FFFF."""
    i = 0
    n = len(buf)
    while i < n:
        c = buf[i]
        if c < 0x80:
            i += 1
            continue
        # bytes after the lead byte, and the range of the first of them
        if 0xC2 <= c <= 0xDF:
            k, lo, hi = 1, 0x80, 0xBF
        elif c == 0xE0:
            k, lo, hi = 2, 0xA0, 0xBF
        elif c == 0xED:
            k, lo, hi = 2, 0x80, 0x9F
        elif 0xE1 <= c <= 0xEF:
            k, lo, hi = 2, 0x80, 0xBF
        elif c == 0xF0:
            k, lo, hi = 3, 0x90, 0xBF
        elif c == 0xF4:
            k, lo, hi = 3, 0x80, 0x8F
        elif 0xF1 <= c <= 0xF3:
            k, lo, hi = 3, 0x80, 0xBF
        else:
            return False
        if i + k >= n or not lo <= buf[i + 1] <= hi:
            return False
        for j in range(i + 2, i + k + 1):
            if not 0x80 <= buf[j] <= 0xBF:
                return False
        i += k + 1
    return True


def decode_utf8(buf):
    """buf decoded as strict UTF-8. MicroPython's bytes.decode() checks only
    the byte structure: it takes overlong forms (b"\\xc0\\xaf" for "/"),
    surrogates and code points past U+10FFFF. Raises UnicodeError."""
    s = bytes(buf).decode("utf-8")
    # decode() checked the structure on both interpreters, so a buf with any
    # byte over 0x7F has decoded to fewer characters than it has bytes
    if len(s) != len(buf) and not valid_utf8(buf):
        raise UnicodeError("ill-formed UTF-8")
    return s


def check_topic(topic, wildcards):
    if not topic:
        raise ProtocolError("bad_topic", "empty topic")
    if "\x00" in topic:
        raise ProtocolError("bad_topic", "NUL in topic")
    if not wildcards and ("+" in topic or "#" in topic):
        raise ProtocolError("bad_topic", "wildcard in topic name %r" % topic)


def check_pid(pid):
    if not 1 <= pid <= MAX_PID:
        raise ProtocolError("malformed", "packet id %d out of range" % pid)


def check_qos(qos, top):
    if qos < 0 or qos > top:
        raise ProtocolError("unsupported_qos", "QoS %d not supported" % qos)


def connect(client_id, keepalive, clean=True, user=None, password=None, will=None):
    flags = 0x02 if clean else 0
    tail = encode_str(client_id)
    if will is not None:
        wtopic, wpayload, wqos, wretain = will
        check_topic(wtopic, False)
        check_qos(wqos, 1)
        flags |= 0x04 | (wqos << 3) | (0x20 if wretain else 0)
        tail += encode_str(wtopic) + encode_str(wpayload)
    if user is not None:
        flags |= 0x80
        tail += encode_str(user)
        if password is not None:
            flags |= 0x40
            tail += encode_str(password)
    elif password is not None:
        raise ProtocolError("malformed", "password without user name")
    if not 0 <= keepalive <= 65535:
        raise ProtocolError("malformed", "keepalive %d out of range" % keepalive)
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", keepalive) + tail
    return b"\x10" + encode_length(len(body)) + body


def publish_header(topic, length, qos=0, retain=False, dup=False, pid=0):
    """Fixed and variable header of a PUBLISH whose payload (length bytes)
    the caller writes next; large payloads are never copied into one buffer."""
    check_topic(topic, False)
    check_qos(qos, 1)
    t = encode_str(topic)
    if qos:
        check_pid(pid)
        t += struct.pack("!H", pid)
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup and qos else 0)
    return bytes((first,)) + encode_length(len(t) + length) + t


def puback(pid):
    check_pid(pid)
    return b"\x40\x02" + struct.pack("!H", pid)


def subscribe(pid, filters):
    check_pid(pid)
    if not filters:
        raise ProtocolError("malformed", "SUBSCRIBE without filters")
    body = struct.pack("!H", pid)
    for f, qos in filters:
        check_topic(f, True)
        check_qos(qos, 1)
        body += encode_str(f) + bytes((qos,))
    return b"\x82" + encode_length(len(body)) + body


def pingreq():
    return b"\xc0\x00"


def disconnect():
    return b"\xe0\x00"


# ---- decoding -------------------------------------------------------------


def decode_length(buf, start=1):
    """(remaining_length, bytes_used) from buf[start:], or None if incomplete."""
    n = 0
    mul = 1
    for i in range(4):
        if start + i >= len(buf):
            return None
        b = buf[start + i]
        n += (b & 0x7F) * mul
        if b < 0x80:
            return n, i + 1
        mul <<= 7
    raise malformed_error("remaining length longer than 4 bytes")


def _u16(b, i):
    if i + 2 > len(b):
        raise malformed_error("packet too short")
    return (b[i] << 8) | b[i + 1]


def _pid_at(b, i):
    pid = _u16(b, i)
    if pid == 0:
        raise malformed_error("packet id 0")
    return pid


def _exact(b, n):
    if len(b) != n:
        raise malformed_error(
            "packet too short" if len(b) < n else "%d unexpected trailing bytes" % (len(b) - n)
        )


def parse(first, body):
    """One packet a broker sends a client, from its first header byte and
    its body. Raises ProtocolError: malformed, unsupported_qos, bad_topic."""
    t = first >> 4
    flags = first & 0x0F
    if t == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise malformed_error("PUBLISH with QoS 3")
        if qos == 2:
            raise ProtocolError("unsupported_qos", "QoS 2 PUBLISH")
        dup = bool(flags & 0x08)
        if dup and not qos:
            raise malformed_error("DUP set on a QoS 0 PUBLISH")
        end = 2 + _u16(body, 0)
        if end > len(body):
            raise malformed_error("field runs past the end of the packet")
        topic = text(body[2:end])
        check_topic(topic, False)
        pid = _pid_at(body, end) if qos else 0
        payload = body[end + 2 if qos else end :]
        # a view when the body is one (the decoder's reused buffer), else bytes
        if not isinstance(payload, memoryview):
            payload = bytes(payload)
        return (PUBLISH, topic, payload, qos, bool(flags & 1), dup, pid)
    check_flags(t, flags)
    if t == CONNACK:
        _exact(body, 2)
        if body[0] & 0xFE:
            raise malformed_error("reserved CONNACK flags set")
        if body[1] > 5:
            raise malformed_error("CONNACK return code %d" % body[1])
        return (CONNACK, bool(body[0] & 1), body[1])
    if t == PUBACK or t == UNSUBACK:
        pid = _pid_at(body, 0)
        _exact(body, 2)
        return (t, pid)
    if t == SUBACK:
        pid = _pid_at(body, 0)
        codes = list(body[2:])
        if not codes:
            raise malformed_error("SUBACK without return codes")
        for c in codes:
            if c not in (0, 1, 2, 0x80):
                raise malformed_error("SUBACK return code 0x%x" % c)
        return (SUBACK, pid, codes)
    if t == PINGRESP:
        _exact(body, 0)
        return (t,)
    raise malformed_error("packet type %d is not sent to clients" % t)


def text(raw):
    """A protocol string: strict UTF-8, no NUL. Raises ProtocolError."""
    try:
        s = decode_utf8(raw)
    except UnicodeError:
        raise malformed_error("string is not UTF-8") from None
    if "\x00" in s:
        raise malformed_error("NUL in string")
    return s


def check_flags(t, flags):
    if t not in _FLAGS:
        raise malformed_error("unknown packet type %d" % t)
    if flags != _FLAGS[t]:
        raise malformed_error("bad flags 0x%x for packet type %d" % (flags, t))


class Decoder:
    """Incremental decoder: feed() bytes as they arrive, get whole packets.

    Holds at most one packet of up to `max_size` bytes. A larger PUBLISH is
    consumed without buffering and reported as (SKIPPED, size, topic, qos,
    pid) as soon as its header is read, so a QoS 1 one can still be
    acknowledged; any other oversized packet is a protocol error, since
    nothing legitimate is that big. parse: the function that builds packets.
    """

    def __init__(self, max_size=8192, parse=parse, reuse=False):
        self.max_size = max_size
        self.parse = parse
        # reuse: every body goes into one buffer taken now, while the heap is
        # whole, and a PUBLISH's payload is a view of it, valid only until the
        # next feed(): a board's heap is too small and too fragmented to take
        # kilobytes for every packet
        self._pool = memoryview(bytearray(max_size)) if reuse else None
        self._buf = bytearray()
        self._first = 0
        self._need = -1  # size of the body being read; -1 while reading a header
        self._body = None
        self._got = 0
        self._skip = 0  # bytes of an oversized PUBLISH still to pass over
        self._head = None  # its variable header, while it is being read
        self._unreported = False
        self._size = 0

    def restart(self):
        """Forget a partial packet (a new connection starts afresh)."""
        self._buf = bytearray()
        self._need = -1
        self._body = None
        self._got = 0
        self._skip = 0
        self._head = None
        self._unreported = False

    def feed(self, data):
        """Packets completed by data, in order. Raises ProtocolError; after
        an error the stream cannot be resynchronised and must be closed."""
        return list(self.packets(data))

    def packets(self, data):
        """feed(), one packet at a time: with a reused buffer each packet must
        be handled before the next is read into it."""
        i = 0
        n = len(data)
        mv = memoryview(data)
        while i < n:
            if self._skip:
                k = min(self._skip, n - i)
                if self._head is not None:
                    got = self._capture(mv[i : i + k])
                    if got is not None:
                        yield got
                self._skip -= k
                i += k
                if not self._skip and self._unreported:
                    self._head = None
                    self._unreported = False
                    yield (SKIPPED, self._size, None, 0, 0)
                continue
            if self._need < 0:
                self._buf.append(data[i])
                i += 1
                if len(self._buf) < 2:
                    continue
                got = decode_length(self._buf, 1)
                if got is None:
                    continue
                self._first = self._buf[0]
                self._buf = bytearray()
                rl = got[0]
                if rl > self.max_size:
                    if self._first >> 4 != PUBLISH:
                        raise ProtocolError("too_large", "packet of %d bytes" % rl)
                    self._skip = self._size = rl
                    self._head = bytearray()
                    self._unreported = True
                    continue
                # the body's whole size is known: one buffer, filled in place
                self._body = self._pool[:rl] if self._pool is not None else bytearray(rl)
                self._need = rl
                self._got = 0
            else:
                k = min(self._need - self._got, n - i)
                self._body[self._got : self._got + k] = mv[i : i + k]
                self._got += k
                i += k
            if self._got == self._need:
                body = self._body
                self._body = None
                self._need = -1
                yield self.parse(self._first, body)

    def _capture(self, chunk):
        # keep the first bytes of an oversized PUBLISH: topic and packet id
        h = self._head
        qos = (self._first >> 1) & 3
        for b in chunk:
            h.append(b)
            if len(h) < 2:
                continue
            tlen = (h[0] << 8) | h[1]
            want = 2 + tlen + (2 if qos else 0)
            if tlen > 255 or qos > 1:
                self._head = None  # not worth holding: reported without its header
                return
            if len(h) == want:
                self._head = None
                self._unreported = False
                try:
                    topic = decode_utf8(h[2 : 2 + tlen])
                except UnicodeError:
                    topic = None
                pid = (h[want - 2] << 8) | h[want - 1] if qos and topic is not None else 0
                return (SKIPPED, self._size, topic, qos if topic is not None else 0, pid)
