"""The gateway's end of a serial line (docs/protocol.md 15): a port opened
with pyserial and kept open, one device at its other end, its frames read as
the event loop says they come and written as the port takes them, never
blocking the gateway. A port that cannot be opened, or that hangs up (the
cable pulled, the adapter gone, a pty's other side closed), is opened again
with backoff; its device is offline meanwhile (gateway/lines.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

import serial

from firmware.pb.net.frames import Decoder

from .lines import LineSession

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("permabeta.gateway.serial")

MAX_OUT = 256 * 1024  # bytes queued for a port that takes no more: then frames are dropped
_READ = 4096


class SerialLine:
    """One port, as `permabeta gateway run --serial PORT` opens it."""

    def __init__(self, gw: Gateway, port: str, baud: int = 115200, idle_s: float = 0.5) -> None:
        from .service import Backoff

        self.gw = gw
        self.port = port
        self.baud = baud
        self.name = f"serial:{port}"
        self.idle_s = idle_s  # a quiet line ends a frame cut short (4410 bytes at 115200 baud)
        self.backoff = Backoff(0.25, 5.0)
        self.session: LineSession | None = None
        self.stats = {"opens": 0, "frames_in": 0, "frames_out": 0, "dropped_out": 0, "noise": 0, "bad": 0}
        self.last_error: str | None = None
        self._fd: int | None = None
        self._out = bytearray()
        self._lost: asyncio.Future[str] | None = None

    async def run(self) -> None:
        """Keep the port open until cancelled."""
        while True:
            try:
                port = serial.Serial(self.port, self.baud, timeout=0, write_timeout=0, exclusive=True)
            except (serial.SerialException, OSError, ValueError) as exc:
                if str(exc) != self.last_error:
                    log.warning("%s: cannot open: %s; trying again", self.name, exc)
                self.last_error = str(exc)
                await asyncio.sleep(self.backoff.next())
                continue
            began = asyncio.get_running_loop().time()
            try:
                reason = await self._session(port)
            finally:
                port.close()
            self.last_error = reason
            log.warning("%s: %s; opening it again", self.name, reason)
            if asyncio.get_running_loop().time() - began > 10:
                self.backoff.reset()  # it was up a while: this is a new trouble
            await asyncio.sleep(self.backoff.next())

    async def _session(self, port: Any) -> str:
        loop = asyncio.get_running_loop()
        fd: int = port.fd
        self._fd = fd
        self._out.clear()
        self._lost = loop.create_future()
        self.stats["opens"] += 1
        decoder = Decoder()
        session = self.session = LineSession(self.gw, self)
        idle: list[asyncio.TimerHandle] = []
        log.info("%s: open at %d baud", self.name, self.baud)

        def deliver(frames: list[tuple[str, bytes]]) -> None:
            self.stats["noise"], self.stats["bad"] = decoder.skipped, decoder.dropped
            for kind, payload in frames:
                self.stats["frames_in"] += 1
                session.on_frame(kind, bytes(payload))

        def quiet() -> None:
            idle.clear()
            deliver(decoder.idle())

        def readable() -> None:
            try:
                data = os.read(fd, _READ)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lose(f"read: {exc.strerror or exc}")
                return
            if not data:
                self._lose("the port hung up")
                return
            for h in idle:
                h.cancel()
            idle[:] = [loop.call_later(self.idle_s, quiet)]
            deliver(decoder.feed(data))

        loop.add_reader(fd, readable)
        try:
            return await self._lost
        finally:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            for h in idle:
                h.cancel()
            self._fd = None
            self.session = None
            session.closed(self._lost.result() if self._lost.done() else "closed")

    def _lose(self, reason: str) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)

    # ---- Line -------------------------------------------------------------

    def send_frame(self, kind: str, frame: bytes) -> bool:
        if self._fd is None:
            return False
        if len(self._out) + len(frame) > MAX_OUT:
            self.stats["dropped_out"] += 1
            return False
        was_empty = not self._out
        self._out += frame
        self.stats["frames_out"] += 1
        if was_empty:
            self._flush()
        return True

    def hang_up(self, reason: str) -> None:
        """(a serial port stays open: the line speaks for nobody until a new proof)"""

    def _flush(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            n = os.write(fd, self._out)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._lose(f"write: {exc.strerror or exc}")
            return
        del self._out[:n]
        loop = asyncio.get_running_loop()
        if self._out:
            loop.add_writer(fd, self._flush)
        else:
            loop.remove_writer(fd)
