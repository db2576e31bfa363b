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

from .db import CONNECTION
from .pool import BEAT_S

log = logging.getLogger("permabeta.gateway.pool_events")

RELAYED = ("telemetry", "online", "offline")  # what one worker of the pool hears alone
CHANNEL = "permabeta_pool_events"
LIMIT = 7900  # bytes of one notification (PostgreSQL takes 8000)
FLUSH_S = 0.1
WATCHED_S = 3 * BEAT_S  # a worker's word that it has a stream open holds this long
MAX_WAITING = 10_000  # events waiting to be sent; more are dropped (a database gone slow)

Listener = Callable[[str, str, dict[str, Any]], None]


def batches(worker: str, events: list[str]) -> tuple[list[str], int]:
    """Notifications of events (each a JSON array [kind, dev, msg]) from
    worker: JSON objects of at most LIMIT bytes, in order, and how many
    events were left out, each too large to go alone (a device's message is
    at most 4 KiB as it came, but written again it may be longer: escapes,
    and numbers such as 9e15 written out in full)."""
    head = json.dumps({"w": worker, "e": []})[:-2]  # '{"w": "...", "e": ['
    out: list[str] = []
    part: list[str] = []
    size = len(head) + 2
    left_out = 0
    for e in events:
        n = len(e.encode())
        if len(head) + 2 + n > LIMIT:
            left_out += 1
            continue
        if part and size + n + 1 > LIMIT:
            out.append(head + ",".join(part) + "]}")
            part, size = [], len(head) + 2
        part.append(e)
        size += n + 1
    if part:
        out.append(head + ",".join(part) + "]}")
    return out, left_out


def _events(payload: str, worker: str) -> tuple[bool, list[tuple[str, str, dict[str, Any]]]]:
    """(whether another worker says it has a stream open, the events it passes
    on) of a notification on the channel; nothing of this worker's own, nor of
    one not in the pool's form (anyone on the database may NOTIFY). Never raises."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("w"), str):
        log.warning("a notification on %s not of the pool's: %r", CHANNEL, payload[:80])
        return False, []
    if body["w"] == worker:
        return False, []
    if "watching" in body:
        return bool(body["watching"]), []
    events = body.get("e")
    if not isinstance(events, list):
        log.warning("a notification on %s not of the pool's: %r", CHANNEL, payload[:80])
        return False, []
    ok = [
        (e[0], e[1], e[2])
        for e in events
        if isinstance(e, list)
        and len(e) == 3
        and e[0] in RELAYED
        and isinstance(e[1], str)
        and isinstance(e[2], dict)
    ]
    if len(ok) != len(events):
        log.warning("%d events passed on by %s not of the pool's form", len(events) - len(ok), body["w"][:32])
    return False, ok


class PoolEvents:
    """One worker's side of the channel. heard() is a listener of the
    gateway (gw.listeners); what the other workers pass on goes to the
    listeners in `listeners` (the app's streams), whose number this worker
    tells the others at every beat."""

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
        """Listen and pass on until cancelled, connecting again after any failure."""
        while True:
            try:
                # (two connections: one waiting for notifications is held by that)
                async with (
                    await psycopg.AsyncConnection.connect(self.url, **CONNECTION) as ear,
                    await psycopg.AsyncConnection.connect(self.url, **CONNECTION) as mouth,
                ):
                    await ear.execute(f"LISTEN {CHANNEL}")
                    log.info("%s passes the app's live events on to the pool", self.worker)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._send(mouth))
                        tg.create_task(self._receive(ear))
            except Exception as exc:  # noqa: BLE001 - (a group too) logged, and tried again
                log.warning("the pool's live events: %r; trying again", exc)
            await asyncio.sleep(BEAT_S)

    async def _send(self, db: psycopg.AsyncConnection[Any]) -> None:
        said = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BEAT_S):
                    await self._ready.wait()
            self._ready.clear()
            notes: list[str] = []
            if time.monotonic() - said >= BEAT_S:
                # (every beat, watched or not: a dead connection is found by this too)
                said = time.monotonic()
                notes.append(json.dumps({"w": self.worker, "watching": len(self.listeners)}))
            events, self._out = self._out, []
            batch, left_out = batches(self.worker, events)
            if left_out:
                self.dropped += left_out
                log.info("%d events too large for a notification were not passed on", left_out)
            notes += batch
            if notes:
                await db.execute(f"SELECT pg_notify('{CHANNEL}', n) FROM unnest(%s::text[]) AS n", (notes,))
                self.sent += len(events) - left_out
            await asyncio.sleep(FLUSH_S)

    async def _receive(self, db: psycopg.AsyncConnection[Any]) -> None:
        async for note in db.notifies():
            watching, events = _events(note.payload, self.worker)
            if watching:
                self.watched_until = time.monotonic() + WATCHED_S
            for kind, dev, msg in events:
                self.received += 1
                for listener in self.listeners:
                    try:
                        listener(kind, dev, msg)
                    except Exception:
                        log.exception("listener failed on a %s passed on by the pool", kind)
