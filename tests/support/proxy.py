"""A real TCP proxy on loopback between clients and a broker, for link faults:
freeze (the link goes silent both ways), cut (connections reset), delay."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.broker import free_port


class LinkProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.frozen = False
        self.delay = 0.0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thaw = asyncio.Event()
        self._thaw.set()

    async def start(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def freeze(self) -> None:
        """Stop moving bytes, without closing anything (a dead Wi-Fi link)."""
        self.frozen = True
        self._thaw.clear()

    def thaw(self) -> None:
        self.frozen = False
        self._thaw.set()

    def cut(self) -> None:
        """Drop every connection at once (a link loss both ends notice)."""
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            w.transport.abort()
            return
        self._writers |= {w, uw}
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w), return_exceptions=True)
        for x in (w, uw):
            self._writers.discard(x)
            with contextlib.suppress(Exception):
                x.transport.abort()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            data = await r.read(4096)
            if not data:
                break
            await self._thaw.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            w.write(data)
            await w.drain()
        w.transport.abort()
