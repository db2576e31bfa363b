# The device's serial carrier (docs/protocol.md 15): the messages MQTT
# carries, in frames (pb/net/frames.py) on a serial port, behind the MQTT
# client's interface (pb/net/mqtt_client.py) so that the runtime and update
# mode can use either. A port is a path: a USB serial adapter or a UART
# under Linux (/dev/ttyUSB0, /dev/ttyACM0), or a pty; or "repl", the board's
# own REPL port (its USB serial) handed over to the line; or a board's UART
# (a stream: pb/hal esp32 uart). Runs unchanged on MicroPython's unix port
# and on CPython (the simulator; "repl" and a UART are a board's).
#
# The unix port has no fcntl and no os.open: a port cannot be made
# non-blocking, and a read of a blocking tty waits until the whole buffer
# is filled, event loop and all. So the line is set raw with VMIN 0 and
# VTIME 0 (termios, which both have): a read then returns what has arrived,
# at once, and the event loop tells when there is some (MicroPython:
# asyncio.StreamReader over the file; CPython: loop.add_reader). A read that
# returns nothing after the loop said there was something is a hang-up:
# the cable was pulled (a pty: its other side closed), and the port is
# opened again, with backoff, until it comes back.
#
# Writes block too: a frame goes out in pieces, each once poll() says the
# port takes more, so a gateway that does not read holds back the messages
# (queued, the oldest QoS 0 ones dropped first) and not the device.
import select

from ..compat import (
    MICROPYTHON,
    TimeoutError,
    asyncio,
    const,
    forget,
    format_exception,
    sleep_ms,
    ticks_diff,
    ticks_ms,
    wait_for_ms,
)
from ..errors import ProtocolError
from . import backoff_ms, enqueue, guard, wire
from .frames import Decoder, pieces

_READ = const(256)  # bytes one read takes, into a buffer reused
_PIECE = const(256)  # bytes one write gives: a tty that polls writable takes that much
_FULL = const(20)  # ms between looks at a port that takes no more
_VTIME = const(5)  # Linux's c_cc indexes (MicroPython's termios names neither)
_IDLE = const(500)  # ms of a quiet line that end a frame cut short (a frame's time at 115200)
_VMIN = const(6)


def _open(port, baud, event):
    # the port, raw, at baud, its reads returning at once (VMIN 0, VTIME 0);
    # on CPython, event set each time bytes come
    import termios  # type: ignore[import-not-found]  # (the unix port and CPython have it)

    if MICROPYTHON:
        # (MicroPython cannot ask for O_NOCTTY: a process that leads its
        # session and has no terminal takes the port as its controlling
        # one, and a hang-up then kills it with SIGHUP; run it under a
        # parent, as firmware/main.py does, or with SIGHUP ignored)
        f = open(port, "r+b", buffering=0)
    else:
        from . import tty_host

        f = tty_host.open(port, event)
    try:
        fd = f.fileno()
        if MICROPYTHON:
            termios.setraw(fd)
        a = termios.tcgetattr(fd)
        cc = a[6]
        cc[_VMIN] = 0
        cc[_VTIME] = 0
        a[4] = a[5] = getattr(termios, "B%d" % baud)
        termios.tcsetattr(fd, termios.TCSANOW, a)
    except BaseException as exc:
        f.close()
        if isinstance(exc, getattr(termios, "error", OSError)):
            raise OSError(*exc.args)  # (CPython's termios.error is none: not a tty, say)
        raise
    return f


class SerialLink:
    """The device's end of a serial line, as MQTTClient is its broker link:
    publish() queues, run() owns the port; callbacks on_message(topic,
    payload, retain), on_up(), on_down(reason) and birth() -> [(topic,
    payload, qos, retain)], sent first every time the line comes up.

    A message's frame carries its topic's tail after pb/<device>/; a frame
    received is given to on_message as (pb/<device>/<kind>, payload bytes,
    False) when a subscribe() named that topic. There is no QoS on a line
    (a frame is sent once); qos only says what the queue drops last, and
    retain is not carried. The line is up once the port is open."""

    def __init__(
        self,
        device,
        port,
        baud=115200,
        queue_size=32,
        backoff_min_ms=250,
        backoff_max_ms=5000,
        key=None,
        lean=True,
    ):
        self.dev = device
        self.key = key
        self.port = port
        self.baud = baud
        self.queue_size = queue_size
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.on_message = None
        self.on_up = None
        self.on_down = None
        self.birth = None
        self.up = False
        self.last_error = None
        # noise: bytes passed over; bad: frames dropped as corrupt
        self.stats = {"sent": 0, "received": 0, "dropped": 0, "connects": 0, "noise": 0, "bad": 0}
        self._subs = []
        self._queue = []  # [(frame's pieces, qos)], oldest first
        self._out = None  # the entry being written: back to the queue's front if the line goes
        self._wake = asyncio.Event()
        self._end = asyncio.Event()  # the session is over (close(), or a task failed)
        self._closed = False
        # (a board reads a little at a time into a buffer it keeps; a host
        # takes what has come at once: a read each 256 bytes cost a third of its download)
        self._buf = bytearray(_READ if MICROPYTHON else 8192)
        self._decoder = Decoder(self._deliver, lean)
        self._proof = None  # (Prover, Event, [reply, outcome]) while the proof is under way

    # ---- API --------------------------------------------------------------

    def subscribe(self, topic, qos=1):
        """Take frames of this topic (a topic under pb/<device>/, or one
        ending in #); qos is MQTT's and means nothing on a line."""
        if topic not in self._subs:
            self._subs.append(topic)

    def publish(self, topic, payload, qos=0, retain=False):
        """Queue a message (framed now: a topic not under pb/<device>/ or a
        payload too large raises ProtocolError here); False if the queue was
        full and something was dropped (QoS 0 before QoS 1, oldest first)."""
        frame = self._frame(topic, payload)
        q = self._queue
        ok = enqueue(q, (frame, qos), qos, self.queue_size, self.stats)
        self._wake.set()
        return ok

    def pending(self):
        """Messages queued or being written."""
        return len(self._queue) + (self._out is not None)

    async def run(self):
        """Open the port and keep it open until close(); never raises for
        line trouble, only backs off and opens it again."""
        attempt = 0
        while not self._closed:
            started = ticks_ms()
            try:
                await self._session()
            except (OSError, EOFError, ProtocolError, TimeoutError) as exc:
                err = format_exception(exc)
                if err != self.last_error:  # (the console says each trouble once, not each retry)
                    print("pb: line %s: %s" % (self.port, err))
                self.last_error = err
            if self.up:
                self.up = False
                if self.on_down:
                    self.on_down(self.last_error or "closed")
            if self._closed:
                break
            if ticks_diff(ticks_ms(), started) > self.backoff_max_ms:
                attempt = 0  # it was up a while: this is a new trouble
            self._end.clear()
            ms = backoff_ms(attempt, self.backoff_min_ms, self.backoff_max_ms)
            try:
                await wait_for_ms(self._end.wait(), ms)
            except TimeoutError:
                pass
            attempt += 1

    async def close(self):
        """Close the port and make run() return, even if run() has not
        started yet (a line has no goodbye to say)."""
        self.drop()

    def drop(self):
        """Close the port at once and make run() return."""
        self._closed = True
        self._end.set()
        self._wake.set()

    # ---- internals --------------------------------------------------------

    def _frame(self, topic, payload):
        p = wire.topic(self.dev, "")
        if not topic.startswith(p):
            raise ProtocolError("bad_topic", "not a topic of this device: %s" % topic)
        return pieces(topic[len(p) :], payload)

    async def _session(self):
        if self.port == "repl":
            # the board's own REPL port (its USB serial): the line writes to
            # its output and reads its input, where Ctrl-C is a byte like any
            # other (the way back to the REPL: the command repl.open)
            import sys

            if not MICROPYTHON:
                raise OSError("the REPL's port is a board's (MicroPython)")
            import micropython

            micropython.kbd_intr(-1)
            try:
                import termios  # (the unix port: its terminal, raw)

                termios.setraw(0)
            except (ImportError, OSError):
                pass
            f = sys.stdout.buffer
            stream = asyncio.StreamReader(sys.stdin.buffer)
        elif not isinstance(self.port, str):
            # a board's UART (hal.uart): a stream whose reads return what came
            if not MICROPYTHON:
                raise OSError("a UART is a board's (MicroPython)")
            f = self.port
            stream = asyncio.StreamReader(f)
        elif MICROPYTHON:
            f = _open(self.port, self.baud, None)
            stream = asyncio.StreamReader(f)  # (MicroPython's wraps any stream)
        else:
            stream = asyncio.Event()  # type: ignore[assignment]
            f = _open(self.port, self.baud, stream)
        poll = None  # (the REPL's port: each frame written whole, the console's text between frames)
        if self.port != "repl":
            poll = select.poll()
            poll.register(f, select.POLLOUT)  # (a hang-up shows whatever is asked)
        tasks = []
        failure = []  # type: list[BaseException]
        try:
            if self._closed:
                return
            self._decoder.idle()  # (what the last session left is no frame)
            self._end.clear()
            tasks.append(asyncio.create_task(guard(self._reader(f, stream, poll), self._end, failure)))
            await self._serve(f, poll, failure)
        finally:
            for t in tasks:
                t.cancel()
            if isinstance(self.port, str) and self.port != "repl":
                f.close()  # (a board's own port stays: it never hangs up)

    async def _serve(self, f, poll, failure):
        # the proof, then the messages, until the session ends; a gateway that
        # asks for a new proof (it restarted) gets one on the same line (a
        # task waiting on a port is not cancelled while the port stays)
        while True:
            if self.key is not None:
                await self._prove(f, poll, failure)
            self.stats["connects"] += 1
            self.up = True
            self.last_error = None
            pump = asyncio.create_task(guard(self._pump(f, poll), self._end, failure))
            try:
                await self._end.wait()
            finally:
                pump.cancel()
                if self._out is not None:
                    self._queue.insert(0, self._out)  # sent again whole
                    self._out = None
            if failure and not self._closed:
                raise failure[0]
            if self._closed or self.last_error != "the gateway asked for a new proof":
                return
            self.up = False
            if self.on_down:
                self.on_down(self.last_error)
            self._end.clear()

    async def _prove(self, f, poll, failure):
        # the proof of identity (pb/net/proof.py), asked again at longer and
        # longer intervals until the gateway answers; a refusal ends the session
        from .proof import Prover

        p = Prover(self.dev, self.key)
        ev = asyncio.Event()
        got = [None, None]
        self._proof = (p, ev, got)
        ms = 1000
        try:
            while True:
                if self._end.is_set():
                    raise failure[0] if failure else EOFError("the line closed during the proof")
                await self._write(f, poll, pieces("auth", p.start()))
                while True:
                    ev.clear()
                    try:
                        await wait_for_ms(ev.wait(), ms)
                    except TimeoutError:
                        break  # (the gateway was not there yet: a new proof)
                    if got[0] is not None:
                        await self._write(f, poll, pieces("auth", got[0]))
                    if got[1] is True:
                        return
                    if got[1] is not None:
                        raise OSError(got[1])
                ms = min(ms * 2, 8000)
        finally:
            self._proof = None
            p = None
            forget(("pb.net.proof",))  # (its RAM back to a small heap until the next proof)

    async def _write(self, f, poll, data):
        # one frame down the line (data: its pieces, frames.pieces), in
        # writes the port takes (a Bluetooth link cuts it into values instead)
        for part in data:
            mv = memoryview(part)
            i = 0
            while i < len(mv):
                if poll is not None and not _takes(poll):
                    await sleep_ms(_FULL)
                    continue
                n = f.write(mv[i : i + _PIECE])
                i += n or 0

    async def _reader(self, f, stream, poll):
        dec = self._decoder
        held = False  # bytes came since the decoder last went idle
        buf = self._buf
        repl = None
        if self.port == "repl":
            # the REPL's input as a board gives it: a read of n bytes waits
            # for all n there, so one byte once the loop says there is some,
            # then each byte that has come (up to the buffer's size)
            import sys

            repl = select.poll()
            repl.register(sys.stdin.buffer, select.POLLIN)
            mv = memoryview(buf)
            one = mv[:1]
        while True:
            # MicroPython's stream reads what came; CPython's loop says it came
            aw = (stream.readinto(buf if repl is None else one)) if MICROPYTHON else stream.wait()
            try:
                n = await (wait_for_ms(aw, _IDLE) if held else aw)  # type: int
            except TimeoutError:
                held = False
                dec.idle()
                continue
            if not MICROPYTHON:
                stream.clear()
                n = f.readinto(buf)
            if not n:
                if MICROPYTHON:
                    raise EOFError("the port hung up")  # (its loop said there were bytes)
                _takes(poll)  # (raises if it hung up)
                continue  # (CPython's loop can say so once more than there was)
            held = True
            while repl is not None and n < len(buf):
                ev = repl.poll(0)
                if not ev or not ev[0][1] & select.POLLIN:
                    break  # (nothing more now; a hang-up is the next read's)
                got = sys.stdin.buffer.readinto(mv[n : n + 1])
                if not got:
                    break
                n += got
            dec.feed(memoryview(buf)[:n])
            self.stats["noise"] = dec.skipped
            self.stats["bad"] = dec.dropped

    def _deliver(self, kind, payload):
        # a frame the decoder completed (its payload, on MicroPython, a view
        # of the decoder's buffer valid only during the call)
        if kind == "auth":
            if self._proof:
                p, ev, got = self._proof
                got[0], got[1] = p.on_auth(bytes(payload))
                ev.set()
            elif self.up:
                # the gateway asks for a proof on a line up: it restarted, or this
                # is a connection it has not seen; the session starts again
                self.last_error = "the gateway asked for a new proof"
                self._end.set()
            return
        if not self.up:
            return  # (nothing is taken before the proof)
        topic = wire.topic(self.dev, kind)
        for s in self._subs:
            if s == topic or (s[-1:] == "#" and topic.startswith(s[:-1])):
                break
        else:
            return  # a kind the device did not ask for (or one it sends)
        self.stats["received"] += 1
        if self.on_message:
            try:
                self.on_message(topic, payload, False)
            except MemoryError:
                raise  # not a handler bug: the device is short of RAM and must reset
            except Exception as exc:  # noqa: BLE001 - a handler bug must not cut the line
                self.stats["handler_errors"] = self.stats.get("handler_errors", 0) + 1
                self.last_error = "message handler: " + format_exception(exc)

    async def _pump(self, f, poll):
        for topic, payload, _, _ in self.birth() if self.birth else ():
            await self._write(f, poll, self._frame(topic, payload))
            self.stats["sent"] += 1
        if self.on_up:
            self.on_up()
        q = self._queue
        while True:
            while q:
                self._out = q.pop(0)
                await self._write(f, poll, self._out[0])
                self._out = None
                self.stats["sent"] += 1
            self._wake.clear()
            await self._wake.wait()


def _takes(poll):
    # whether the port takes more bytes now; EOFError if it hung up
    ev = poll.poll(0)
    if ev and ev[0][1] & (select.POLLHUP | select.POLLERR):
        raise EOFError("the port hung up")
    return bool(ev)
