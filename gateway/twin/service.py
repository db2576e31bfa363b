"""The gateway's twin previews (docs/twin.md 2): cached per device and
release in the ``twin_previews`` table, computed one at a time in the
background.

request() answers a cached preview that still holds, or records the
request and queues it (state computing); the worker (loop(), one of the
gateway's tasks) has it computed in a process of its own (the fit's
numerical work neither holds the gateway's interpreter nor spreads over its
cores), on a read-only connection to the database, with the release's code
in the sandbox, and stores the answer. A
preview holds while it is younger than MAX_AGE_S and was computed with the
feature set the device runs now and the heater power it has now, and while
the streams the twin needs are shared as they were then. Previews
left computing by a gateway that stopped are computed when it starts again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..db import is_url
from ..releases import ReleaseStore, StoredRelease
from ..store import Store
from ..streams import twin_withheld, withheld
from .sandbox import Limits

if TYPE_CHECKING:
    from ..service import Gateway

log = logging.getLogger("permabeta.gateway.twin")

MAX_AGE_S = 6 * 3600.0  # a preview this old is computed again when asked for
RETRY_S = 3600.0  # ... and one that was insufficient or failed, this old
STATES = ("computing", "ready", "insufficient", "failed")
MAX_HEATER_W = 100_000.0


@dataclass(frozen=True)
class Row:
    device: str
    release: str
    state: str
    reason: str | None
    answer: dict[str, Any] | None
    heater_w: float | None
    requested: float
    started: float | None
    finished: float | None


class TwinService:
    def __init__(self, gw: Gateway, limits: Limits | None = None) -> None:
        self.gw = gw
        self.store = gw.store
        self.limits = limits or Limits()
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._pool: ProcessPoolExecutor | None = None
        self.computed = 0  # previews computed since the start (tests wait on it)

    # ---- the table ---------------------------------------------------------------

    def row(self, dev: str, release: str) -> Row | None:
        r = self.store.db.execute(
            "SELECT * FROM twin_previews WHERE device = ? AND release = ?", (dev, release)
        ).fetchone()
        if r is None:
            return None
        return Row(
            r["device"],
            r["release"],
            r["state"],
            r["reason"],
            json.loads(r["answer"]) if r["answer"] else None,
            r["heater_w"],
            r["requested"],
            r["started"],
            r["finished"],
        )

    def rows(self, dev: str) -> list[Row]:
        found = self.store.db.execute(
            "SELECT release FROM twin_previews WHERE device = ? ORDER BY requested DESC", (dev,)
        ).fetchall()
        return [r for r in (self.row(dev, f[0]) for f in found) if r is not None]

    def heater_w(self, dev: str) -> float | None:
        r = self.store.db.execute("SELECT heater_w FROM twin_devices WHERE device = ?", (dev,)).fetchone()
        return None if r is None or r[0] is None else float(r[0])

    def set_heater_w(self, dev: str, watts: float, now: float) -> None:
        self.store.db.execute(
            "INSERT INTO twin_devices (device, heater_w, updated) VALUES (?, ?, ?)"
            " ON CONFLICT (device) DO UPDATE SET heater_w = excluded.heater_w, updated = excluded.updated",
            (dev, watts, now),
        )

    def answer(self, row: Row, release: StoredRelease | None) -> dict[str, Any]:
        """The API's answer for a preview (docs/twin.md 2)."""
        head: dict[str, Any] = {
            "device": row.device,
            "release": {
                "id": row.release,
                "ref": release.ref if release is not None else None,
                "version": release.version if release is not None else None,
            },
            "state": row.state,
            "reason": row.reason,
            "requested": row.requested,
            "started": row.started,
            "finished": row.finished,
            "heater_w": row.heater_w,
        }
        body = dict(row.answer or {})
        for key in ("device", "state", "reason"):
            body.pop(key, None)
        return head | body

    # ---- asking ------------------------------------------------------------------

    def _holds(self, row: Row, dev: str, heater_w: float | None, now: float) -> bool:
        if row.state == "computing":
            return True
        age = MAX_AGE_S if row.state == "ready" else RETRY_S
        if row.finished is None or now - row.finished > age or row.heater_w != heater_w:
            return False
        d = self.store.device(dev)
        if row.state != "failed" and d is not None:
            # (a stream the twin needs kept back, or shared again, since: the answer no longer holds)
            now_held = [w["stream"] for w in twin_withheld(d.model or "", withheld(d.hello))]
            if now_held != [w.get("stream") for w in (row.answer or {}).get("withheld", [])]:
                return False
        running = ((d.ota if d is not None else None) or {}).get("manifest")
        computed_on = ((row.answer or {}).get("current") or {}).get("id")
        return row.state == "failed" or computed_on == running or "current" not in (row.answer or {})

    def request(
        self, dev: str, release: StoredRelease, heater_w: float | None, refresh: bool, now: float
    ) -> tuple[Row, bool]:
        """(the preview, whether it is new work): a cached one that holds,
        else one queued for the worker."""
        if heater_w is not None:
            self.set_heater_w(dev, heater_w, now)
        watts = self.heater_w(dev)
        row = self.row(dev, release.id)
        if (
            row is not None
            and (row.state == "computing" or not refresh)
            and self._holds(row, dev, watts, now)
        ):
            return row, False
        self.store.db.execute(
            "INSERT INTO twin_previews (device, release, state, heater_w, requested)"
            " VALUES (?, ?, 'computing', ?, ?)"
            " ON CONFLICT (device, release) DO UPDATE SET state = 'computing', reason = NULL, answer = NULL,"
            " heater_w = excluded.heater_w, requested = excluded.requested, started = NULL, finished = NULL",
            (dev, release.id, watts, now),
        )
        self._enqueue(dev, release.id)
        new = self.row(dev, release.id)
        assert new is not None
        return new, True

    def _enqueue(self, dev: str, release: str) -> None:
        if (dev, release) not in self._queued:
            self._queued.add((dev, release))
            self.queue.put_nowait((dev, release))

    # ---- the worker --------------------------------------------------------------

    async def loop(self) -> None:
        for r in self.store.db.execute("SELECT device, release FROM twin_previews WHERE state = 'computing'"):
            self._enqueue(r[0], r[1])  # (left by a gateway that stopped)
        try:
            while True:
                dev, release = await self.queue.get()
                self._queued.discard((dev, release))
                try:
                    await self._compute(dev, release)
                except Exception:
                    log.exception("the twin preview of %s on %s failed", release[:12], dev)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    async def _compute(self, dev: str, release: str) -> None:
        row = self.row(dev, release)
        if row is None or row.state != "computing":
            return
        started = self.gw.clock.now()
        self.store.db.execute(
            "UPDATE twin_previews SET started = ? WHERE device = ? AND release = ?", (started, dev, release)
        )
        answer = await self._in_worker(dev, release, row.heater_w)
        state = str(answer.get("state", "failed"))
        self.store.db.execute(
            "UPDATE twin_previews SET state = ?, reason = ?, answer = ?, finished = ?"
            " WHERE device = ? AND release = ? AND requested = ?",
            (
                state if state in STATES else "failed",
                answer.get("reason"),
                json.dumps(answer, separators=(",", ":")),
                self.gw.clock.now(),
                dev,
                release,
                row.requested,
            ),
        )
        self.computed += 1
        log.info("twin preview of %s on %s: %s", release[:12], dev, state)

    async def _in_worker(self, dev: str, release: str, heater_w: float | None) -> dict[str, Any]:
        main = self.gw.ota.releases
        job = (str(self.store.where), str(main.blobs), main.root, dev, release, heater_w, self.limits)
        if self._pool is None:
            # a fresh interpreter (spawn): its numerical libraries start with
            # the single thread set here, whatever the gateway's loaded
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, "1")
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            answer: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(self._pool, work, *job)
        except BrokenProcessPool:
            self._pool = None
            return {"state": "failed", "reason": "the twin's worker process died", "code": "internal"}
        return answer


def work(
    db: str,
    blobs: str,
    root: bytes | None,
    dev: str,
    release_id: str,
    heater_w: float | None,
    limits: Limits,
) -> dict[str, Any]:
    """Compute one preview (in the twin's worker process: its own
    connection to the database, read-only). Never raises: a failure is a
    failed answer."""
    from .preview import Failed, compute, gather

    try:
        with Store(db if is_url(db) else Path(db), readonly=True) as ro:
            releases = ReleaseStore(ro, blobs=Path(blobs), root=root)
            release = releases.get(release_id)
            if release is None:
                raise Failed(f"no release {release_id[:12]}", "unknown_release")
            inputs = gather(ro, releases, dev, release, heater_w)
        return compute(inputs, limits)
    except Failed as exc:
        return {"state": "failed", "reason": str(exc), "code": exc.code}
    except Exception as exc:
        log.exception("the twin preview of %s on %s failed", release_id[:12], dev)
        reason = f"the gateway failed: {type(exc).__name__}: {exc}"[:300]
        return {"state": "failed", "reason": reason, "code": "internal"}
