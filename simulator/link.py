"""The simulated network link between virtual devices and the broker: a TCP
proxy on loopback where link faults are injected, device by device.

Devices are given the proxy's address as their broker. The first packet of
each connection (CONNECT) names the device: its client id is the device id
(firmware/pb/runtime.py and pb/ota/update_mode.py connect as config["device"]).
From then on bytes are pumped both ways under that device's LinkProfile:

- drops: the connection is reset at both ends (the broker then publishes
  the device's last will) and the device's new connections are refused for
  a while, on demand (Link.drop) or at random (drops_per_hour, drop_s);
- latency and jitter per direction, applied to every read forwarded,
  without ever reordering the bytes of a stream;
- faults on update chunks (PUBLISH on pb/<dev>/ota/chunk, broker to
  device): corrupt, duplicate, reorder, drop_chunk, each a probability.

Every random choice comes from generators seeded with the Link's seed and
the device id, so a run with the same events makes the same choices. The
MQTT framing (Framer, Packet, Publish) is pure: bytes in, packets out, and
back; it is the simulator's own, and the device never uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from firmware.pb.errors import ProtocolError
from firmware.pb.net.mqtt import decode_length, encode_length
from gateway.broker import BrokerUrl

log = logging.getLogger("permabeta.sim.link")

CONNECT = 1
PUBLISH = 3

_READ_SIZE = 65536
_MAX_PACKET = 1 << 20  # bigger packets are passed on whole, never parsed
_CONNECT_TIMEOUT_S = 10.0  # for a client's CONNECT and for the broker to accept
_LINGER_S = 5.0  # after one direction ends, how long the other may still run
_MAX_LINE = 4 << 20  # bytes a delay line holds before its reader waits
_REORDER_HOLD_S = 1.0  # a held chunk goes out after the next one, or after this
_DROP_TICK_S = 0.2  # how often random drops are considered


class LinkError(Exception):
    """Root of the link's errors."""


class FramingError(LinkError):
    """A byte stream that is not MQTT 3.1.1."""


# ---- framing (pure) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packet:
    """One MQTT packet as on the wire: raw is the fixed header (type byte and
    remaining length, header_len bytes) and the body."""

    raw: bytes
    header_len: int

    @property
    def type(self) -> int:
        return self.raw[0] >> 4

    @property
    def flags(self) -> int:
        return self.raw[0] & 0x0F

    @property
    def body(self) -> bytes:
        return self.raw[self.header_len :]

    def topic(self) -> bytes | None:
        """A PUBLISH's topic, undecoded (None for other packets or a PUBLISH
        too short to hold one): cheap enough to look at every packet."""
        if self.type != PUBLISH:
            return None
        i = self.header_len
        if i + 2 > len(self.raw):
            return None
        end = i + 2 + ((self.raw[i] << 8) | self.raw[i + 1])
        return self.raw[i + 2 : end] if end <= len(self.raw) else None


def encode(first: int, body: bytes) -> Packet:
    """The packet with this first header byte and body. Raises FramingError
    for a body larger than MQTT allows."""
    try:
        head = bytes((first,)) + encode_length(len(body))
    except ProtocolError as exc:
        raise FramingError(exc.message) from exc
    return Packet(head + body, len(head))


@dataclass(frozen=True, slots=True)
class Publish:
    """A PUBLISH, taken apart. pid is 0 at QoS 0."""

    topic: bytes
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    pid: int = 0

    @classmethod
    def parse(cls, packet: Packet) -> Publish:
        """Raises FramingError for another packet type, QoS 3, or a topic or
        packet id running past the end."""
        if packet.type != PUBLISH:
            raise FramingError(f"packet type {packet.type} is not PUBLISH")
        flags = packet.flags
        qos = (flags >> 1) & 3
        if qos == 3:
            raise FramingError("PUBLISH with QoS 3")
        body = packet.body
        if len(body) < 2:
            raise FramingError("PUBLISH without a topic")
        end = 2 + ((body[0] << 8) | body[1])
        if end + (2 if qos else 0) > len(body):
            raise FramingError("PUBLISH topic or packet id runs past the end")
        pid = (body[end] << 8) | body[end + 1] if qos else 0
        return cls(body[2:end], body[end + 2 if qos else end :], qos, bool(flags & 1), bool(flags & 8), pid)

    def encode(self) -> Packet:
        """Raises FramingError for a topic over 65535 bytes or a bad QoS."""
        if len(self.topic) > 0xFFFF or not 0 <= self.qos <= 2:
            raise FramingError("PUBLISH topic too long or QoS out of range")
        first = 0x30 | (self.qos << 1) | (8 if self.dup else 0) | (1 if self.retain else 0)
        pid = struct.pack("!H", self.pid) if self.qos else b""
        return encode(first, struct.pack("!H", len(self.topic)) + self.topic + pid + self.payload)


def client_id(packet: Packet) -> str:
    """The client id of a CONNECT. Raises FramingError."""
    if packet.type != CONNECT:
        raise FramingError(f"expected CONNECT, got packet type {packet.type}")
    body = packet.body
    if len(body) < 2:
        raise FramingError("CONNECT too short")
    i = 2 + ((body[0] << 8) | body[1]) + 4  # protocol name, level, flags, keepalive
    if i + 2 > len(body):
        raise FramingError("CONNECT too short")
    end = i + 2 + ((body[i] << 8) | body[i + 1])
    if end > len(body):
        raise FramingError("CONNECT client id runs past the end")
    try:
        return body[i + 2 : end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FramingError("CONNECT client id is not UTF-8") from exc


class Framer:
    """Finds the packets in one direction of an MQTT byte stream, fed as it
    arrives, split anywhere.

    feed(data, parse) returns, in order, whole packets (parse=True) and runs
    of bytes (parse=False, a packet begun while not parsing, or one over
    max_size). Packets and runs joined give back exactly the bytes fed, so a
    proxy can switch parsing on and off between any two reads. Not parsing
    costs a few operations per packet: bodies are counted, not copied.
    """

    def __init__(self, max_size: int = _MAX_PACKET) -> None:
        self.max_size = max_size
        self._head = bytearray()  # the current packet's fixed header, so far
        self._left = -1  # its body bytes still to come; -1 while reading the header
        self._keep = False  # its bytes are being collected (not yet handed out)
        self._body = bytearray()

    @property
    def at_boundary(self) -> bool:
        return not self._head

    def feed(self, data: bytes, parse: bool = True) -> list[Packet | bytes]:
        """Raises FramingError for a remaining length longer than 4 bytes;
        the stream cannot be followed after that."""
        out: list[Packet | bytes] = []
        if self._keep and not parse:
            out.append(bytes(self._head) + bytes(self._body))
            self._keep = False
            self._body = bytearray()
        n = len(data)
        mv = memoryview(data)
        i = 0
        run: int | None = None if self._keep else 0  # start of the run of bytes being passed on
        while i < n:
            if self._left < 0:
                if not self._head and parse:
                    if run is not None and i > run:
                        out.append(bytes(mv[run:i]))
                    run = None
                    self._keep = True
                self._head.append(data[i])
                i += 1
                if len(self._head) < 2:
                    continue
                try:
                    got = decode_length(self._head, 1)
                except ProtocolError as exc:
                    raise FramingError(exc.message) from exc
                if got is None:
                    continue
                self._left = got[0]
                if self._keep and self._left > self.max_size:
                    out.append(bytes(self._head))  # too big to hold: passed on as it comes
                    self._keep = False
                    run = i
            else:
                k = min(self._left, n - i)
                if self._keep:
                    self._body += mv[i : i + k]
                i += k
                self._left -= k
            if self._left == 0:
                if self._keep:
                    out.append(Packet(bytes(self._head) + bytes(self._body), len(self._head)))
                    run = i
                self._head = bytearray()
                self._body = bytearray()
                self._left = -1
                self._keep = False
        if run is not None and n > run:
            out.append(data if run == 0 else bytes(mv[run:n]))
        return out


# ---- profiles and counters -------------------------------------------------------

_PROBABILITIES = ("corrupt", "duplicate", "reorder", "drop_chunk")


@dataclass
class LinkProfile:
    """How the link treats a device's connections; may be changed at any
    time, and applies from the next bytes forwarded. Latencies are one way,
    in milliseconds; each forwarded read is delayed by latency plus or minus
    up to jitter. drops_per_hour: random outages (mean length drop_s
    seconds). corrupt, duplicate, reorder, drop_chunk: the probability of
    each fault for every update chunk sent to the device. Setting a negative
    value or a probability over 1 raises ValueError."""

    up_latency_ms: float = 0.0  # device to broker
    up_jitter_ms: float = 0.0
    down_latency_ms: float = 0.0  # broker to device
    down_jitter_ms: float = 0.0
    drops_per_hour: float = 0.0
    drop_s: float = 5.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    drop_chunk: float = 0.0

    def __setattr__(self, name: str, value: object) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        if name in _PROBABILITIES and value > 1:
            raise ValueError(f"{name} is a probability (0 to 1), not {value!r}")
        object.__setattr__(self, name, float(value))

    def set_latency(self, ms: float, jitter_ms: float = 0.0) -> None:
        """The same latency and jitter both ways."""
        self.up_latency_ms = self.down_latency_ms = ms
        self.up_jitter_ms = self.down_jitter_ms = jitter_ms

    @property
    def chunk_faults(self) -> bool:
        return bool(self.corrupt or self.duplicate or self.reorder or self.drop_chunk)


@dataclass
class LinkStats:
    """What the link did to one device's connections."""

    connections: int = 0  # accepted and forwarded to the broker
    refused: int = 0  # closed at once during an outage
    drops: int = 0  # outages begun
    cut: int = 0  # connections the outages reset
    bytes_up: int = 0  # device to broker, as read from the device
    bytes_down: int = 0  # broker to device, as read from the broker
    chunks: int = 0  # update chunks seen on the way to the device
    chunks_corrupted: int = 0
    chunks_duplicated: int = 0
    chunks_reordered: int = 0
    chunks_dropped: int = 0


# ---- the proxy -----------------------------------------------------------------


def _reset(w: asyncio.StreamWriter) -> None:
    """Close abruptly: an RST, as when a link dies, not an orderly FIN."""
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


def _nodelay(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Direction:
    """One direction of a connection: writes what it is given now, or, with
    latency, through a line of (due time, bytes) that a task empties in
    order."""

    def __init__(self, conn: _Conn, up: bool, writer: asyncio.StreamWriter, rng: random.Random) -> None:
        self.conn = conn
        self.up = up
        self.writer = writer
        self.rng = rng
        self._line: deque[tuple[float, bytes]] = deque()
        self._queued = 0
        self._last_due = 0.0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None

    def send(self, data: bytes, profile: LinkProfile) -> None:
        if not data:
            return
        if self.up:
            latency, jitter = profile.up_latency_ms, profile.up_jitter_ms
        else:
            latency, jitter = profile.down_latency_ms, profile.down_jitter_ms
        if not latency and not jitter and not self._line:
            self.writer.write(data)
            return
        delay = max(0.0, latency + (self.rng.uniform(-jitter, jitter) if jitter else 0.0)) / 1000
        # never before what was sent earlier: delays vary, byte order does not
        due = max(asyncio.get_running_loop().time() + delay, self._last_due)
        self._last_due = due
        self._line.append((due, data))
        self._queued += len(data)
        if self._queued > _MAX_LINE:
            self._room.clear()
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name=f"link-{self.conn.dev}-{'up' if self.up else 'down'}-line"
            )
            self.conn.tasks.add(self._task)
        self._wake.set()

    async def drain(self) -> None:
        await self._room.wait()
        await self.writer.drain()

    async def flush(self) -> None:
        """Wait until the line is empty and written out (or cannot be)."""
        while self._line and self._task is not None and not self._task.done():
            await asyncio.sleep(max(0.0, self._line[-1][0] - asyncio.get_running_loop().time()) + 0.001)
        await self.writer.drain()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while not self._line:
                    self._wake.clear()
                    await self._wake.wait()
                due, data = self._line[0]
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._line.popleft()
                self._queued -= len(data)
                self.writer.write(data)
                if self._queued <= _MAX_LINE:
                    self._room.set()
                await self.writer.drain()
        except OSError:
            self.conn.abort()
        finally:
            self._room.set()  # no reader waits for a line that is gone


class _Conn:
    """One device connection through the link."""

    def __init__(
        self,
        link: Link,
        dev: str,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        broker: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.dev = dev
        self.client_r, self.client_w = client
        self.broker_r, self.broker_w = broker
        self.tasks: set[asyncio.Task[None]] = set()
        rngs = link._rngs(dev)
        self.up = _Direction(self, True, self.broker_w, rngs.up)
        self.down = _Direction(self, False, self.client_w, rngs.down)
        self.held: bytes | None = None  # a chunk kept back, to go out after the next one
        self.held_until = 0.0
        self.linger: asyncio.TimerHandle | None = None

    def abort(self) -> None:
        """Reset both sockets and stop the connection's tasks."""
        for w in (self.client_w, self.broker_w):
            _reset(w)
        self.stop()

    def stop(self) -> None:
        if self.linger is not None:
            self.linger.cancel()
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()


@dataclass
class _Rngs:
    up: random.Random  # jitter, each way
    down: random.Random
    chunks: random.Random
    drops: random.Random


class Link:
    """A TCP proxy on 127.0.0.1 in front of the broker at (host, port),
    applying each device's LinkProfile. seed: every random choice derives
    from it. default: the profile of devices without one of their own.
    device_of: the device id for a client id (the client id itself).
    Its methods are called from the event loop it runs in."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        seed: int = 0,
        default: LinkProfile | None = None,
        device_of: Callable[[str], str] | None = None,
    ) -> None:
        self.target = (host, port)
        self.seed = seed
        self.default = default or LinkProfile()
        self.port = 0
        self._device_of = device_of or (lambda cid: cid)
        self._profiles: dict[str, LinkProfile] = {}
        self._stats: dict[str, LinkStats] = {}
        self._random: dict[str, _Rngs] = {}
        self._conns: dict[str, set[_Conn]] = {}
        self._outage: dict[str, float] = {}  # device -> loop time its outage ends
        self._next_drop: dict[str, tuple[float, float]] = {}  # device -> (when, rate it was drawn at)
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._dropper: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    def to(cls, broker: BrokerUrl, *, seed: int = 0, default: LinkProfile | None = None) -> Link:
        """A link in front of this broker."""
        return cls(broker.host, broker.port, seed=seed, default=default)

    @property
    def url(self) -> BrokerUrl:
        """The address devices are given as their broker."""
        return BrokerUrl("127.0.0.1", self.port)

    async def start(self) -> Link:
        """Listen on a free loopback port (self.port)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._dropper = asyncio.create_task(self._drop_at_random(), name="link-drops")
        return self

    async def close(self) -> None:
        """Stop listening and reset every connection."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._dropper is not None:
            self._dropper.cancel()
        for conns in self._conns.values():
            for c in list(conns):
                c.abort()
        for t in list(self._handlers):
            t.cancel()
        await asyncio.gather(*self._handlers, *(t for t in [self._dropper] if t), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Link:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- the fault API ------------------------------------------------------

    def profile(self, dev: str) -> LinkProfile:
        """The device's own profile, made as a copy of the default the first
        time it is asked for."""
        p = self._profiles.get(dev)
        if p is None:
            p = self._profiles[dev] = dataclasses.replace(self.default)
        return p

    def stats(self, dev: str) -> LinkStats:
        """A copy of the device's counters."""
        return dataclasses.replace(self._stats.get(dev) or LinkStats())

    def connected(self, dev: str) -> int:
        """How many connections of the device are open through the link."""
        return len(self._conns.get(dev, ()))

    def drop(self, dev: str, duration_s: float = 0.0) -> int:
        """Cut the device's connections now, as a dead link does (both ends
        reset: the broker publishes its last will), and refuse its new ones
        for duration_s seconds. Returns how many connections were cut."""
        if duration_s < 0:
            raise ValueError(f"duration_s must be >= 0, not {duration_s!r}")
        until = asyncio.get_running_loop().time() + duration_s
        self._outage[dev] = max(self._outage.get(dev, 0.0), until)
        conns = list(self._conns.get(dev, ()))
        s = self._counters(dev)
        s.drops += 1
        s.cut += len(conns)
        for c in conns:
            c.abort()
        log.debug("link: %s dropped for %.1f s (%d connections cut)", dev, duration_s, len(conns))
        return len(conns)

    def heal(self, dev: str) -> None:
        """End the device's outage now."""
        self._outage.pop(dev, None)

    def in_outage(self, dev: str) -> bool:
        return self._outage.get(dev, 0.0) > asyncio.get_running_loop().time()

    # ---- internals ------------------------------------------------------------

    def _profile_of(self, dev: str) -> LinkProfile:
        return self._profiles.get(dev) or self.default

    def _counters(self, dev: str) -> LinkStats:
        s = self._stats.get(dev)
        if s is None:
            s = self._stats[dev] = LinkStats()
        return s

    def _rngs(self, dev: str) -> _Rngs:
        r = self._random.get(dev)
        if r is None:
            # str seeds are hashed (SHA-512): the same on every run and platform
            r = self._random[dev] = _Rngs(
                *(random.Random(f"{self.seed}:{dev}:{use}") for use in ("up", "down", "chunks", "drops"))
            )
        return r

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(r, w)
        except asyncio.CancelledError:
            _reset(w)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _nodelay(w)
        try:
            first, dev = await asyncio.wait_for(self._read_connect(r), _CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, LinkError) as exc:
            log.debug("link: a client sent no usable CONNECT: %r", exc)
            _reset(w)
            return
        if self._closing or self.in_outage(dev):
            self._counters(dev).refused += 1
            _reset(w)
            return
        try:
            broker = await asyncio.wait_for(asyncio.open_connection(*self.target), _CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            log.debug("link: %s: the broker is unreachable: %r", dev, exc)
            _reset(w)
            return
        _nodelay(broker[1])
        conn = _Conn(self, dev, (r, w), broker)
        self._conns.setdefault(dev, set()).add(conn)
        s = self._counters(dev)
        s.connections += 1
        s.bytes_up += len(first)
        conn.up.send(first, self._profile_of(dev))
        down = asyncio.create_task(self._pump_down(conn), name=f"link-{dev}-down")
        conn.tasks.add(down)
        ended = False
        try:
            await self._pump_up(conn)
            await asyncio.wait_for(asyncio.shield(down), _LINGER_S)
            ended = True  # both ways closed in order: nothing to cut
        except (OSError, TimeoutError):
            pass
        finally:
            if ended:
                conn.stop()
            else:
                conn.abort()
            self._conns[dev].discard(conn)
            await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def _read_connect(self, r: asyncio.StreamReader) -> tuple[bytes, str]:
        """What the client sent up to and including its CONNECT (and anything
        after it in the same read), and the device it names."""
        framer = Framer(max_size=_READ_SIZE)
        while True:
            data = await r.read(_READ_SIZE)
            if not data:
                raise LinkError("connection closed before CONNECT")
            items = framer.feed(data)
            if items:
                first = items[0]
                if not isinstance(first, Packet):
                    raise FramingError("a first packet too large for a CONNECT")
                rest = items[1:] + framer.feed(b"", parse=False)
                raw = first.raw + b"".join(x if isinstance(x, bytes) else x.raw for x in rest)
                return raw, self._device_of(client_id(first))

    async def _pump_up(self, conn: _Conn) -> None:
        s = self._counters(conn.dev)
        while True:
            data = await conn.client_r.read(_READ_SIZE)
            if not data:
                break
            s.bytes_up += len(data)
            conn.up.send(data, self._profile_of(conn.dev))
            await conn.up.drain()
        await conn.up.flush()
        conn.broker_w.close()

    async def _pump_down(self, conn: _Conn) -> None:
        dev = conn.dev
        s = self._counters(dev)
        framer = Framer()
        chunk_topic = f"pb/{dev}/ota/chunk".encode()
        rng = self._rngs(dev).chunks
        loop = asyncio.get_running_loop()
        try:
            while True:
                if conn.held is None:
                    data = await conn.broker_r.read(_READ_SIZE)
                else:
                    try:
                        async with asyncio.timeout_at(conn.held_until):
                            data = await conn.broker_r.read(_READ_SIZE)
                    except TimeoutError:
                        held, conn.held = conn.held, None
                        conn.down.send(held, self._profile_of(dev))
                        continue
                if not data:
                    break
                s.bytes_down += len(data)
                profile = self._profile_of(dev)
                parse = profile.chunk_faults
                items = framer.feed(data, parse)
                if not parse and conn.held is None and len(items) == 1 and isinstance(items[0], bytes):
                    conn.down.send(items[0], profile)  # the read as it came
                else:
                    out = bytearray()
                    if not parse and conn.held is not None:
                        out += conn.held
                        conn.held = None
                    for item in items:
                        if isinstance(item, bytes):
                            out += item
                        elif item.topic() == chunk_topic:
                            self._chunk(conn, item, profile, rng, s, out, loop.time())
                        else:
                            out += item.raw
                    conn.down.send(bytes(out), profile)
                await conn.down.drain()
            if conn.held is not None:
                conn.down.send(conn.held, self._profile_of(dev))
                conn.held = None
            await conn.down.flush()
            conn.client_w.close()
            # the client is to close its side now; if it does not, it is cut
            conn.linger = loop.call_later(_LINGER_S, conn.abort)
        except (OSError, LinkError) as exc:
            log.debug("link: %s: down direction ended: %r", dev, exc)
            conn.abort()

    def _chunk(
        self,
        conn: _Conn,
        packet: Packet,
        p: LinkProfile,
        rng: random.Random,
        s: LinkStats,
        out: bytearray,
        now: float,
    ) -> None:
        """Apply the chunk faults to one chunk; what goes out is added to out."""
        s.chunks += 1
        # four draws for every chunk, whichever faults are on: the choices
        # for a chunk do not depend on the profile of earlier ones
        lose, spoil, twice, late = rng.random(), rng.random(), rng.random(), rng.random()
        if lose < p.drop_chunk:
            s.chunks_dropped += 1
            return
        pub: Publish | None = None
        copies = [packet.raw]
        if spoil < p.corrupt:
            pub = Publish.parse(packet)
            if pub.payload:
                payload = bytearray(pub.payload)
                payload[rng.randrange(len(payload))] ^= rng.randrange(1, 256)
                pub = dataclasses.replace(pub, payload=bytes(payload))
                copies = [pub.encode().raw]
                s.chunks_corrupted += 1
        if twice < p.duplicate:
            if packet.flags & 0x06:  # QoS 1: a repeat says so, as a broker's resend does
                pub = pub or Publish.parse(packet)
                copies.append(dataclasses.replace(pub, dup=True).encode().raw)
            else:
                copies.append(copies[0])
            s.chunks_duplicated += 1
        if conn.held is None and late < p.reorder:
            conn.held = b"".join(copies)
            conn.held_until = now + _REORDER_HOLD_S
            s.chunks_reordered += 1
            return
        for c in copies:
            out += c
        if conn.held is not None:
            out += conn.held
            conn.held = None

    async def _drop_at_random(self) -> None:
        """Start outages at the devices' drops_per_hour (a Poisson process),
        each as long as drop_s on average (exponentially distributed)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_DROP_TICK_S)
            now = loop.time()
            for dev in list(self._stats.keys() | self._profiles.keys()):
                p = self._profile_of(dev)
                if not p.drops_per_hour:
                    self._next_drop.pop(dev, None)
                    continue
                rng = self._rngs(dev).drops
                nxt = self._next_drop.get(dev)
                if nxt is not None and nxt[1] == p.drops_per_hour and now >= nxt[0]:
                    self.drop(dev, rng.expovariate(1 / p.drop_s) if p.drop_s else 0.0)
                    nxt = None
                if nxt is None or nxt[1] != p.drops_per_hour:
                    self._next_drop[dev] = (now + rng.expovariate(p.drops_per_hour / 3600), p.drops_per_hour)
