# An SNTP client (RFC 4330): one question to a time server over UDP, with
# MicroPython's own socket module (the unix port and CPython run the same
# code). The answer is checked before it is believed: a server's mode, a
# stratum of 1..15, a synchronised clock, and our own transmit time echoed
# (a random nonce, so an off-path answer cannot be made to fit). SNTP is not
# authenticated: the clock it sets never lowers the gateway's signed floor
# (pb/ota/clock.py), which alone counts for trust.
from ..compat import const, rand_below, sleep_ms, ticks_diff, ticks_ms

PORT = const(123)
_PACKET = const(48)
_ERA = 2208988800  # seconds from 1900 (NTP's epoch) to 1970 (Unix time)
_WRAP = 4294967296  # 2^32: NTP seconds wrap in 2036


def server(value):
    """(host, port) of a config "ntp" value: "host" or "host:port"."""
    i = value.rfind(":")
    if i > 0 and value[i + 1 :].isdigit():
        return value[:i], int(value[i + 1 :])
    return value, PORT


def request():
    """(packet, nonce): a client request (version 4, mode 3) whose transmit
    time is a random nonce the answer must echo."""
    nonce = bytes(rand_below(256) for _ in range(8))
    return b"\x23" + bytes(39) + nonce, nonce


def parse(data, nonce):
    """The Unix time a server's answer states. Raises ValueError."""
    if len(data) < _PACKET:
        raise ValueError("answer of %d bytes" % len(data))
    mode = data[0] & 7
    if data[0] >> 6 == 3 or mode not in (4, 5) or not 1 <= data[1] <= 15:
        raise ValueError("not a synchronised server's answer")
    if bytes(data[24:32]) != nonce:
        raise ValueError("answer to another request")
    secs = int.from_bytes(data[40:44], "big")
    if not secs:
        raise ValueError("answer without a time")
    if secs < _ERA:
        secs += _WRAP  # era 1: after 2036-02-07
    return secs - _ERA + int.from_bytes(data[44:48], "big") / _WRAP


async def query(value, timeout_ms=3000):
    """Ask the server of a config "ntp" value for the time: Unix seconds,
    corrected by half the round trip. A malformed or foreign answer is
    dropped and the wait goes on. Raises OSError (no answer, no network)."""
    import socket

    host, port = server(value)
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        packet, nonce = request()
        t0 = ticks_ms()
        s.sendto(packet, addr)
        why = "no answer"
        while ticks_diff(ticks_ms(), t0) < timeout_ms:
            try:
                data = s.recv(64)
            except OSError:  # (nothing yet: EAGAIN)
                await sleep_ms(20)
                continue
            try:
                return parse(data, nonce) + ticks_diff(ticks_ms(), t0) / 2000
            except ValueError as exc:
                why = str(exc)
        raise OSError("time server %s: %s within %d ms" % (value, why, timeout_ms))
    finally:
        s.close()


async def sync(hal, value):
    """Set hal's clock from the server of a config "ntp" value; one that does
    not answer, or answers nonsense, leaves it as it was. Returns the time
    set, or None."""
    try:
        t = await query(value)
    except OSError as exc:
        print("pb: clock not set: %s" % exc)
        return None
    hal.set_time(t)
    return t


async def set_clock(d):
    """Once a boot, once the network is up and before the broker is asked
    (pb/runtime.py): the clock set from the server config.json names
    ("" for none), then this code let go."""
    from ..compat import forget

    forget(("pb.net.sntp",))  # (this function runs on; the module is not kept)
    server = d.config.get("ntp", "pool.ntp.org")
    if server:
        await sync(d.hal, server)
