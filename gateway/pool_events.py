"""The app's live events across a pool of gateway workers (docs/app.md,
docs/makers.md "A pool of gateway workers"). A page's event stream is served
by one worker, but what it shows is heard by others too: each worker stores
the share of the fleet's telemetry the broker gives it, and only a device's
owner marks it online or offline. So each worker passes on what it alone
hears (RELAYED) to the others, which hand it to their streams.

The way is PostgreSQL's LISTEN/NOTIFY, on a connection of its own: no table
grows, and nothing is sent while no page is open. A worker with a stream
open says so on the channel every beat; the others pass events on only
while some worker has said so within WATCHED_S, in notifications of at most
LIMIT bytes, a batch every FLUSH_S. A pool on SQLite (one file) has no such
channel: there a page sees what its own worker hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from .pool import BEAT_S

log = logging.getLogger("permabeta.gateway.pool_events")

RELAYED = ("telemetry", "online", "offline")  # what one worker of the pool hears alone
CHANNEL = "permabeta_pool_events"
LIMIT = 7900  # bytes of one notification (PostgreSQL takes 8000)
FLUSH_S = 0.1
WATCHED_S = 3 * BEAT_S  # a worker's word that it has a stream open holds this long
MAX_WAITING = 10_000  # events waiting to be sent; more are dropped (a database gone slow)

Listener = Callable[[str, str, dict[str, Any]], None]


def batches(worker: str, events: list[str]) -> list[str]:
    """Notifications of events (each a JSON array [kind, dev, msg]) from
    worker: JSON objects of at most LIMIT bytes, in order. An event that
    cannot fit in one alone is left out (a device's message is at most 4 KiB:
    only one full of escapes could)."""
    head = json.dumps({"w": worker, "e": []})[:-2]  # '{"w": "...", "e": ['
    out: list[str] = []
    part: list[str] = []
    size = len(head) + 2
    for e in events:
        n = len(e.encode())
        if len(head) + 2 + n > LIMIT:
            log.warning("an event of %d bytes is too large to pass on to the pool", n)
            continue
        if part and size + n + 1 > LIMIT:
            out.append(head + ",".join(part) + "]}")
            part, size = [], len(head) + 2
        part.append(e)
        size += n + 1
    if part:
        out.append(head + ",".join(part) + "]}")
    return out


class PoolEvents:
    """One worker's side of the channel. heard() is a listener of the
    gateway (gw.listeners); what the other workers pass on goes to the
    listeners in `listeners` (the app's streams). `watching` is how many
    of those are open here."""

    def __init__(self, worker: str, url: str) -> None:
        self.worker = worker
        self.url = url
        self.listeners: list[Listener] = []
        self.watched_until = 0.0  # another worker has a stream open until then (monotonic)
        self.sent = self.received = self.dropped = 0
        self._out: list[str] = []
        self._ready = asyncio.Event()

    def heard(self, kind: str, dev: str, msg: dict[str, Any]) -> None:
        if kind not in RELAYED or time.monotonic() > self.watched_until:
            return
        if len(self._out) >= MAX_WAITING:
            self.dropped += 1
            return
        self._out.append(json.dumps([kind, dev, msg], separators=(",", ":"), ensure_ascii=False, default=str))
        self._ready.set()

    async def run(self) -> None:
        """Listen and pass on until cancelled, connecting again after a failure."""
        while True:
            try:
                # (two connections: one waiting for notifications is held by that)
                async with (
                    await psycopg.AsyncConnection.connect(self.url, autocommit=True) as ear,
                    await psycopg.AsyncConnection.connect(self.url, autocommit=True) as mouth,
                ):
                    await ear.execute(f"LISTEN {CHANNEL}")
                    log.info("%s passes the app's live events on to the pool", self.worker)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._send(mouth))
                        tg.create_task(self._receive(ear))
            except* (psycopg.Error, OSError) as group:
                log.warning("the pool's live events: %s; trying again", group.exceptions[0])
            await asyncio.sleep(BEAT_S)

    async def _send(self, db: psycopg.AsyncConnection[Any]) -> None:
        said = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BEAT_S):
                    await self._ready.wait()
            self._ready.clear()
            notes: list[str] = []
            if self.listeners and time.monotonic() - said >= BEAT_S:
                said = time.monotonic()
                notes.append(json.dumps({"w": self.worker, "watching": len(self.listeners)}))
            events, self._out = self._out, []
            notes += batches(self.worker, events)
            if notes:
                await db.execute(f"SELECT pg_notify('{CHANNEL}', n) FROM unnest(%s::text[]) AS n", (notes,))
                self.sent += len(events)
            await asyncio.sleep(FLUSH_S)

    async def _receive(self, db: psycopg.AsyncConnection[Any]) -> None:
        async for note in db.notifies():
            try:
                body = json.loads(note.payload)
                if body.get("w") == self.worker:
                    continue
                if body.get("watching"):
                    self.watched_until = time.monotonic() + WATCHED_S
                    continue
                events = body["e"]
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("a notification on %s that is not the pool's: %r", CHANNEL, note.payload[:80])
                continue
            for kind, dev, msg in events:
                self.received += 1
                for listener in self.listeners:
                    try:
                        listener(kind, dev, msg)
                    except Exception:
                        log.exception("listener failed on a %s passed on by the pool", kind)
