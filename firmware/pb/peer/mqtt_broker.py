# The broker's half of the MQTT 3.1.1 codec: parsing what clients send
# (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT) and building what
# brokers send. Tests and tools use it; a device never loads it.
import struct

from ..errors import ProtocolError
from ..net.mqtt import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    Decoder,
    check_flags,
    check_pid,
    check_qos,
    check_topic,
    connect,
    decode_length,
    decode_utf8,
    disconnect,
    encode_length,
    encode_str,
    malformed_error,
    pingreq,
    puback,
    publish_header,
    subscribe,
    text,
)
from ..net.mqtt import parse as parse_client


def publish(topic, payload, qos=0, retain=False, dup=False, pid=0):
    return publish_header(topic, len(payload), qos, retain, dup, pid) + bytes(payload)


def unsubscribe(pid, filters):
    check_pid(pid)
    if not filters:
        raise ProtocolError("malformed", "UNSUBSCRIBE without filters")
    body = struct.pack("!H", pid)
    for f in filters:
        check_topic(f, True)
        body += encode_str(f)
    return b"\xa2" + encode_length(len(body)) + body


class _Reader:
    # Walks a packet body, raising ProtocolError instead of IndexError.
    def __init__(self, body):
        self.b = body
        self.i = 0

    def left(self):
        return len(self.b) - self.i

    def u8(self):
        if self.i >= len(self.b):
            raise malformed_error("packet too short")
        v = self.b[self.i]
        self.i += 1
        return v

    def u16(self):
        if self.i + 2 > len(self.b):
            raise malformed_error("packet too short")
        v = (self.b[self.i] << 8) | self.b[self.i + 1]
        self.i += 2
        return v

    def raw(self, n):
        if self.i + n > len(self.b):
            raise malformed_error("field runs past the end of the packet")
        v = bytes(self.b[self.i : self.i + n])
        self.i += n
        return v

    def bin(self):
        return self.raw(self.u16())

    def text(self):
        return text(self.bin())

    def rest(self):
        # a view when the body is one (the decoder's reused buffer), else bytes
        v = self.b[self.i :]
        self.i = len(self.b)
        return v if isinstance(v, memoryview) else bytes(v)

    def done(self):
        if self.i != len(self.b):
            raise malformed_error("%d unexpected trailing bytes" % (len(self.b) - self.i))


def _pid(r):
    pid = r.u16()
    if pid == 0:
        raise malformed_error("packet id 0")
    return pid


def connack(session_present, code):
    return bytes((0x20, 2, 1 if session_present else 0, code))


def suback(pid, codes):
    check_pid(pid)
    body = struct.pack("!H", pid) + bytes(codes)
    return b"\x90" + encode_length(len(body)) + body


def unsuback(pid):
    check_pid(pid)
    return b"\xb0\x02" + struct.pack("!H", pid)


def pingresp():
    return b"\xd0\x00"


def encode(packet):
    """Bytes of any packet tuple parse() returns (its inverse)."""
    t = packet[0]
    if t == CONNECT:
        return connect(packet[1], packet[3], packet[2], packet[5], packet[6], packet[4])
    if t == CONNACK:
        return connack(packet[1], packet[2])
    if t == PUBLISH:
        return publish(packet[1], packet[2], packet[3], packet[4], packet[5], packet[6])
    if t == PUBACK:
        return puback(packet[1])
    if t == SUBSCRIBE:
        return subscribe(packet[1], packet[2])
    if t == SUBACK:
        return suback(packet[1], packet[2])
    if t == UNSUBSCRIBE:
        return unsubscribe(packet[1], packet[2])
    if t == UNSUBACK:
        return unsuback(packet[1])
    if t == PINGREQ:
        return pingreq()
    if t == PINGRESP:
        return pingresp()
    if t == DISCONNECT:
        return disconnect()
    raise ProtocolError("malformed", "cannot encode packet type %r" % (t,))


def parse(first, body):
    """Any MQTT 3.1.1 packet (either direction) from its first byte and body.
    Raises ProtocolError: malformed, unsupported_qos, unsupported_version, bad_topic."""
    t = first >> 4
    if t in (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT):
        check_flags(t, first & 0x0F)
        r = _Reader(body)
        if t == CONNECT:
            return _parse_connect(r)
        if t == SUBSCRIBE:
            pid = _pid(r)
            filters = []
            while r.left():
                f = r.text()
                check_topic(f, True)
                qos = r.u8()
                if qos > 2:
                    raise malformed_error("requested QoS %d" % qos)
                check_qos(qos, 1)
                filters.append((f, qos))
            if not filters:
                raise malformed_error("SUBSCRIBE without filters")
            return (SUBSCRIBE, pid, filters)
        if t == UNSUBSCRIBE:
            pid = _pid(r)
            filters = []
            while r.left():
                f = r.text()
                check_topic(f, True)
                filters.append(f)
            if not filters:
                raise malformed_error("UNSUBSCRIBE without filters")
            return (UNSUBSCRIBE, pid, filters)
        r.done()
        return (t,)
    return parse_client(first, body)


__all__ = ["decode_length", "decode_utf8", "encode_length"]  # re-exported for tools


def decoder(max_size=8192):
    """A Decoder for both directions."""
    return Decoder(max_size, parse)


def _parse_connect(r):
    if r.bin() != b"MQTT":
        raise malformed_error("protocol name is not MQTT")
    if r.u8() != 4:
        raise ProtocolError("unsupported_version", "protocol level is not 4 (3.1.1)")
    flags = r.u8()
    if flags & 1:
        raise malformed_error("reserved CONNECT flag set")
    keepalive = r.u16()
    client_id = r.text()
    will = None
    wqos = (flags >> 3) & 3
    if flags & 0x04:
        if wqos == 3:
            raise malformed_error("will QoS 3")
        check_qos(wqos, 1)
        wtopic = r.text()
        check_topic(wtopic, False)
        will = (wtopic, r.bin(), wqos, bool(flags & 0x20))
    elif wqos or flags & 0x20:
        raise malformed_error("will QoS or retain without a will")
    user = r.text() if flags & 0x80 else None
    if flags & 0x40:
        if user is None:
            raise malformed_error("password flag without user flag")
        password = r.bin()
    else:
        password = None
    r.done()
    return (CONNECT, client_id, bool(flags & 0x02), keepalive, will, user, password)
