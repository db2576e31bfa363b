# Resilient asyncio MQTT 3.1.1 client for the board, a thin I/O layer over
# the sans-I/O codec in mqtt.py. Runs unchanged on MicroPython and CPython.
#
# - QoS 0 and 1; unacknowledged QoS 1 publishes are re-sent (DUP) after a
#   reconnect; a PUBACK that does not come in time counts as a dead link.
# - Keepalive pings; silence from the broker ends the connection.
# - Last will, clean-session choice, reconnect with jittered exponential backoff.
# - A bounded outgoing queue that drops (and counts) before it grows.
# - The broker's address is resolved once; payloads are written after their
#   header, never copied into one packet buffer.
import socket

from ..compat import (
    MICROPYTHON,
    TimeoutError,
    asyncio,
    const,
    format_exception,
    ticks_diff,
    ticks_ms,
    wait_for_ms,
)
from ..errors import MqttError, ProtocolError
from . import backoff_ms, enqueue, guard, mqtt

_READ_SIZE = const(256)
_JOIN = const(1024)


def resolve(host, port):
    """The broker's address as an IP string, looked up once (DNS is slow and
    flaky on a board; an IP needs no further lookup when reconnecting)."""
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    if not ai:
        raise MqttError("cannot resolve " + host)
    family, addr = ai[0][0], ai[0][-1]
    if isinstance(addr, tuple):
        return addr[0]
    # MicroPython's unix port gives a raw struct sockaddr
    if family == socket.AF_INET:
        return "%d.%d.%d.%d" % (addr[4], addr[5], addr[6], addr[7])
    return socket.inet_ntop(family, bytes(addr[8:24]))


class MQTTClient:
    """Keeps one MQTT session alive and moves messages through it.

    publish() only queues; run() owns the connection. Callbacks:
    on_message(topic, payload, retain) (payload: bytes, or on MicroPython a
    memoryview valid only during the call), on_up(), on_down(reason), and
    birth() -> [(topic, payload, qos, retain)]: messages sent first on every
    connect, ahead of (and never evicted by) anything queued.
    """

    def __init__(
        self,
        client_id,
        host,
        port=1883,
        user=None,
        password=None,
        keepalive=30,
        clean=True,
        will=None,
        ssl=None,
        queue_size=32,
        max_inflight=8,
        max_packet=8192,
        connect_timeout_ms=10000,
        ack_timeout_ms=15000,
        backoff_min_ms=500,
        backoff_max_ms=30000,
    ):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.clean = clean
        self.will = will
        self.ssl = ssl
        self.queue_size = queue_size
        self.max_inflight = max_inflight
        self.max_packet = max_packet
        self.connect_timeout_ms = connect_timeout_ms
        self.ack_timeout_ms = ack_timeout_ms
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.on_message = None
        self.on_up = None
        self.on_down = None
        self.birth = None
        self.on_skipped = None
        self.up = False
        self.last_error = None
        self.stats = {
            "sent": 0,
            "received": 0,
            "dropped": 0,
            "skipped": 0,
            "connects": 0,
            "retransmits": 0,
        }
        self._addr = None
        self._subs = []
        self._queue = []  # [(topic, payload, retain, qos)], oldest first
        self._inflight = {}  # pid -> [topic, payload, retain, sent_at]
        self._pid = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closed = False
        self._writer = None
        self._lock = asyncio.Lock()
        self._last_rx = self._last_tx = ticks_ms()
        if MICROPYTHON:
            self._rbuf = bytearray(_READ_SIZE)
            self._rmv = memoryview(self._rbuf)
        # on a board: payloads handed to on_message are views into a buffer
        # reused for the next packet: handlers copy what they keep
        self._decoder = mqtt.Decoder(max_packet, reuse=MICROPYTHON)

    # ---- API --------------------------------------------------------------

    def subscribe(self, topic_filter, qos=1):
        """Remember a subscription; it is (re)made on every connect."""
        for i in range(len(self._subs)):
            if self._subs[i][0] == topic_filter:
                self._subs[i] = (topic_filter, qos)
                return
        self._subs.append((topic_filter, qos))

    def publish(self, topic, payload, qos=0, retain=False):
        """Queue a message; False if the queue was full and something was
        dropped to bound memory (QoS 0 before QoS 1, oldest first)."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        # check now, so a bad topic fails at the caller and not in the pump
        mqtt.publish_header(topic, len(payload), qos, retain, False, 1)
        ok = enqueue(self._queue, (topic, payload, retain, qos), qos, self.queue_size, self.stats)
        self._wake.set()
        return ok

    def pending(self):
        """Messages queued or awaiting PUBACK."""
        return len(self._queue) + len(self._inflight)

    async def run(self):
        """Connect and stay connected until close(); never raises for link
        trouble, only backs off and retries."""
        attempt = 0
        while not self._closed:
            started = ticks_ms()
            was_up = False
            try:
                if self._addr is None:
                    self._addr = resolve(self.host, self.port)
                was_up = await self._session()
            except (OSError, EOFError, MqttError, ProtocolError, TimeoutError) as exc:
                self.last_error = format_exception(exc)
            if self.up:
                self.up = False
                if self.on_down:
                    self.on_down(self.last_error or "closed")
            if self._closed:
                break
            if was_up and ticks_diff(ticks_ms(), started) > self.keepalive * 1000:
                attempt = 0
            await self._sleep_or_stop(self._backoff(attempt))
            attempt += 1

    async def close(self):
        """Disconnect cleanly (no last will) and make run() return, even if
        run() has not started yet."""
        self._closed = True
        w = self._writer
        if w is not None and self.up:
            try:
                w.write(mqtt.disconnect())
                await wait_for_ms(w.drain(), 1000)
            except (OSError, TimeoutError):
                pass
        self._stop.set()
        self._wake.set()
        if w is not None:
            _close(w)

    def drop_link(self):
        """Cut the TCP connection without DISCONNECT, as a lost link would
        (the broker then publishes the last will); run() reconnects."""
        if self._writer is not None:
            _close(self._writer)

    def drop(self):
        """Drop the link at once, with no DISCONNECT (the broker sends the
        last will), and make run() return: what a power cut does."""
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._writer is not None:
            _close(self._writer)

    # ---- internals --------------------------------------------------------

    def _backoff(self, attempt):
        return backoff_ms(attempt, self.backoff_min_ms, self.backoff_max_ms)

    async def _sleep_or_stop(self, ms):
        try:
            await wait_for_ms(self._stop.wait(), ms)
        except TimeoutError:
            pass

    def _next_pid(self):
        while True:
            self._pid = self._pid % mqtt.MAX_PID + 1
            if self._pid not in self._inflight:
                return self._pid

    async def _session(self):
        r, w = await wait_for_ms(
            asyncio.open_connection(self._addr, self.port, ssl=self.ssl, server_hostname=self.host)
            if self.ssl
            else asyncio.open_connection(self._addr, self.port),
            self.connect_timeout_ms,
        )  # type: asyncio.StreamReader, asyncio.StreamWriter
        self._writer = w
        try:
            # MicroPython's stream holds its socket as s: no waiting to fill a
            # segment (Nagle's algorithm behind the broker's delayed ACK held a
            # request written after a status 40 ms). (CPython's asyncio sets it.)
            w.s.setsockopt(6, 1, 1)  # type: ignore[attr-defined]  # IPPROTO_TCP, TCP_NODELAY (Linux, lwIP)
        except (AttributeError, OSError):
            pass  # (TLS: the socket is the wrapper's, set before wrapping: pb/net/tls.py)
        dec = self._decoder
        dec.restart()
        tasks = []
        try:
            w.write(
                mqtt.connect(self.client_id, self.keepalive, self.clean, self.user, self.password, self.will)
            )
            await wait_for_ms(w.drain(), self.connect_timeout_ms)
            self._last_tx = self._last_rx = ticks_ms()
            await wait_for_ms(self._connack(r, dec), self.connect_timeout_ms)
            self.stats["connects"] += 1
            self.up = True
            self.last_error = None
            if self._subs:
                w.write(mqtt.subscribe(self._next_pid(), self._subs))
            resend = sorted(self._inflight)
            for topic, payload, qos, retain in self.birth() if self.birth else ():
                self._write_publish(w, topic, payload, qos, retain)
            for pid in resend:
                m = self._inflight[pid]
                m[3] = ticks_ms()
                _write(w, mqtt.publish_header(m[0], len(m[1]), 1, m[2], True, pid), m[1])
                self.stats["retransmits"] += 1
            await self._drain(w)
            if self.on_up:
                self.on_up()
            done = asyncio.Event()
            failure = []  # type: list[BaseException]
            for coro in (self._reader(r, w, dec), self._pump(w)):
                tasks.append(asyncio.create_task(guard(coro, done, failure)))
            await done.wait()
            if failure and not self._closed:
                raise failure[0]
            return True
        finally:
            for t in tasks:
                t.cancel()
            self._writer = None
            _close(w)

    async def _read(self, r):
        # into one buffer, reused: a board's heap is too small to take a new
        # kilobyte for every read
        if MICROPYTHON:
            n = await r.readinto(self._rbuf)
            return self._rmv[:n]
        return await r.read(_READ_SIZE)

    async def _connack(self, r, dec):
        # a broker sends nothing before CONNACK; whatever follows it in the
        # same read is its own fault and is dropped (a reused buffer cannot
        # hold it for later)
        while True:
            data = await self._read(r)
            if not data:
                raise MqttError("connection closed before CONNACK")
            for p in dec.packets(data):
                if p[0] != mqtt.CONNACK:
                    raise MqttError("expected CONNACK, got packet type %d" % p[0])
                if p[2]:
                    raise MqttError("connection refused: " + mqtt.CONNACK_REASONS.get(p[2], str(p[2])))
                self._last_rx = ticks_ms()
                return

    async def _drain(self, w):
        async with self._lock:
            await wait_for_ms(w.drain(), self.connect_timeout_ms)
        self._last_tx = ticks_ms()

    async def _reader(self, r, w, dec):
        while True:
            data = await self._read(r)
            if not data:
                raise MqttError("connection closed by broker")
            self._last_rx = ticks_ms()
            for p in dec.packets(data):
                self._handle(p, w)
            if self._needs_drain:
                self._needs_drain = False
                await self._drain(w)

    _needs_drain = False

    def _handle(self, p, w):
        t = p[0]
        if t == mqtt.PUBLISH:
            self.stats["received"] += 1
            if p[3]:
                # acknowledge after delivery: at least once, the handler dedups
                self._deliver(p)
                w.write(mqtt.puback(p[6]))
                self._needs_drain = True
            else:
                self._deliver(p)
        elif t == mqtt.PUBACK:
            if self._inflight.pop(p[1], None) is not None:
                self._wake.set()
        elif t == mqtt.SUBACK:
            if 0x80 in p[2]:
                self.last_error = "subscription refused by broker"
        elif t == mqtt.SKIPPED:
            self.stats["skipped"] += 1
            if p[3]:  # too big to take, but acknowledged, or the broker resends it
                w.write(mqtt.puback(p[4]))
                self._needs_drain = True
            if self.on_skipped and p[2] is not None:
                self.on_skipped(p[2], p[1])
        elif t in (mqtt.PINGRESP, mqtt.UNSUBACK):
            pass
        else:
            raise MqttError("unexpected packet type %d from broker" % t)

    def _deliver(self, p):
        if self.on_message:
            try:
                self.on_message(p[1], p[2], p[4])
            except MemoryError:
                raise  # not a handler bug: the device is short of RAM and must reset
            except Exception as exc:  # noqa: BLE001 - a handler bug must not cut the link
                self.stats["handler_errors"] = self.stats.get("handler_errors", 0) + 1
                self.last_error = "message handler: " + format_exception(exc)

    async def _pump(self, w):
        # sends what is queued, and between times keeps the link alive: one
        # task for both, as a board has RAM for few
        ka = self.keepalive * 1000
        period = max(ka // 4, 100) if ka else 3600000
        while True:
            while self._queue and len(self._inflight) < self.max_inflight:
                topic, payload, retain, qos = self._queue.pop(0)
                self._write_publish(w, topic, payload, qos, retain)
                await self._drain(w)
            self._wake.clear()
            try:
                await wait_for_ms(self._wake.wait(), period)
            except TimeoutError:
                pass
            if ka:
                await self._keepalive(w, ka)

    def _write_publish(self, w, topic, payload, qos, retain):
        pid = 0
        if qos:
            pid = self._next_pid()
            self._inflight[pid] = [topic, payload, retain, ticks_ms()]
        _write(w, mqtt.publish_header(topic, len(payload), qos, retain, False, pid), payload)
        self.stats["sent"] += 1

    async def _keepalive(self, w, ka):
        now = ticks_ms()
        quiet = ticks_diff(now, self._last_rx)
        if quiet > ka + ka // 2:
            raise MqttError("no traffic from broker for %d ms" % quiet)
        if ticks_diff(now, self._last_tx) >= ka // 2 or quiet >= ka // 2:
            w.write(mqtt.pingreq())
            await self._drain(w)
        for pid in self._inflight:
            if ticks_diff(now, self._inflight[pid][3]) > self.ack_timeout_ms:
                raise MqttError("no PUBACK for packet %d" % pid)


def _write(w, header, payload):
    # a small message goes out as one write: two would leave the second
    # waiting for the broker's delayed ACK (Nagle), 40 ms and more a message
    if len(payload) <= _JOIN:
        try:
            joined = header + bytes(payload)
        except MemoryError:
            joined = None  # a fragmented heap: two writes need no copy
        if joined is not None:
            w.write(joined)
            return
    w.write(header)
    w.write(payload)


def _close(w):
    try:
        w.close()
    except OSError:
        pass
