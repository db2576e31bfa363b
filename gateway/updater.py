"""The I/O side of updates: the ``updates`` table, offers and cancels sent
over MQTT, chunks read from the blob files and sent through a bounded
outbox, and a watch that ends updates past their deadline. The decisions
are gateway/updates.py's; this module only moves bytes and rows.

A device has at most one update in progress; they are kept in memory (and
reloaded at start, so a restarted gateway goes on serving them). Bytes
served are counted in memory and written at least every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from dataclasses import replace
from typing import Any

from firmware.pb.peer import protocol as proto
from firmware.pb.peer.ota_transfer import MAX_WINDOW, UPDATE_ID_LEN, Stream, encode_chunk
from ota.errors import KeyStoreError
from ota.keys import ROOT_FILE, Keys, freshness, load_keys

from .clock import Clock, SystemClock
from .db import Error as DbError
from .db import upsert
from .errors import (
    DeviceNotFoundError,
    DeviceOfflineError,
    DeviceRevokedError,
    GatewayError,
    OtaDisabledError,
    OtaServiceError,
    UpdateNotFoundError,
)
from .releases import ReleaseStore, StoredRelease
from .roots import RESEND_S, RETRY_S, RootPlan
from .store import DeviceRecord, Store
from .updates import (
    DEFAULT_DEADLINE_S,
    DEFAULT_FRESHNESS_TTL_S,
    Refuse,
    RefuseStream,
    Serve,
    Update,
    apply_status,
    cancel_message,
    check_target,
    expire,
    fail,
    from_hello,
    late_step,
    new_update,
    next_freshness_version,
    offer_message,
    plan_chunk,
    plan_stream,
    step_rank,
    untaken,
)

log = logging.getLogger("permabeta.gateway.ota")

Publish = Callable[[str, bytes, int, bool], Awaitable[None]]

NO_KEYS = "this gateway has no keys: start it with --keys DIR"
OUTBOX = 1024  # chunks waiting to be sent; more are dropped (the device asks again)
# of which one device's: a window of the stream it asked for last and one of the stream
# before it (one device asking again and again does not crowd out the others' chunks)
OUTBOX_PER_DEVICE = 2 * MAX_WINDOW
SEND_BATCH = 64  # chunks handed to the MQTT client at once
_WATCH_S = 1.0
RECONCILE_S = 2.0  # after a (re)connect: time for the broker's retained messages to arrive


class UpdateTable:
    """The ``updates`` table (schema version 2) and each update's steps,
    its changes of state (``update_steps``, schema version 3)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._states: dict[str, str] = {}  # the last state saved, of updates in progress

    def save(self, u: Update) -> None:
        d = u.to_dict()
        cols = [c for c in d if c not in ("ended", "success")]
        with self.store.transaction():
            self.store.db.execute(
                upsert("updates", cols, ("id",)),
                [d[c] for c in cols],
            )
            if self._last_state(u.id) != u.state:
                self.store.db.execute(
                    "INSERT INTO update_steps (update_id, at, state, reason, bytes, total)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (u.id, u.updated, u.state, u.reason, u.bytes, u.total),
                )
        if u.ended:
            self._states.pop(u.id, None)
        else:
            self._states[u.id] = u.state

    def _last_state(self, uid: str) -> str | None:
        if uid in self._states:
            return self._states[uid]
        row = self.store.db.execute(
            "SELECT state FROM update_steps WHERE update_id = ? ORDER BY id DESC LIMIT 1", (uid,)
        ).fetchone()
        return None if row is None else str(row[0])

    def steps(self, uid: str) -> list[dict[str, Any]]:
        """The update's changes of state, in the order the update went
        through them (a state is never entered twice: a step that arrived
        late comes where it belongs)."""
        if self.store.schema < 3:
            return []
        rows = self.store.db.execute(
            "SELECT at, state, reason, bytes, total FROM update_steps WHERE update_id = ? ORDER BY id",
            (uid,),
        )
        return sorted((dict(r) for r in rows), key=lambda r: step_rank(r["state"]))

    def add_late_step(self, u: Update, state: str, now: float) -> bool:
        """Record a step that a later one overtook (updates.late_step), once,
        at the time of the first step recorded after it (its status was
        sent before that one's); the update's state is left alone."""
        if self.store.schema < 3:
            return False
        rows = self.store.db.execute("SELECT at, state FROM update_steps WHERE update_id = ?", (u.id,))
        seen = [(float(r["at"]), str(r["state"])) for r in rows]
        if any(st == state for _, st in seen):
            return False
        after = [at for at, st in seen if step_rank(st) > step_rank(state)]
        at = min([now, *after])
        total = u.total
        with self.store.transaction():
            self.store.db.execute(
                "INSERT INTO update_steps (update_id, at, state, reason, bytes, total)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (u.id, at, state, None, total if total is not None else u.bytes, total),
            )
        return True

    def _select(self, where: str, args: tuple[Any, ...]) -> list[Update]:
        if self.store.schema < 2:
            return []
        rows = self.store.db.execute(f"SELECT * FROM updates {where}", args)
        return [Update.from_dict(dict(r)) for r in rows]

    def get(self, uid: str) -> Update | None:
        found = self._select("WHERE id = ?", (uid,))
        return found[0] if found else None

    def of_device(self, dev: str, limit: int = 20) -> list[Update]:
        """The device's updates, newest first."""
        return self._select("WHERE device = ? ORDER BY started DESC, rowid DESC LIMIT ?", (dev, limit))

    def find(
        self, state: str | None = None, device: str | None = None, model: str | None = None, limit: int = 1000
    ) -> list[Update]:
        """Updates across devices, newest first. state: an update state,
        "active" (in progress) or "ended"; device, model: only those."""
        where, args = [], []
        if state == "active":
            where.append("state NOT IN ('committed', 'failed', 'rolled_back')")
        elif state == "ended":
            where.append("state IN ('committed', 'failed', 'rolled_back')")
        elif state is not None:
            where.append("state = ?")
            args.append(state)
        for col, value in (("device", device), ("model", model)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return self._select(f"{clause}ORDER BY started DESC, rowid DESC LIMIT ?", (*args, limit))

    def offers(self, releases: Collection[str], since: float) -> dict[str, int]:
        """How many updates to one of releases each device was offered since
        (every one stored counts, however it ended)."""
        if self.store.schema < 2 or not releases:
            return {}
        rows = self.store.db.execute(
            f"SELECT device, count(*) FROM updates WHERE release IN ({','.join('?' * len(releases))})"
            " AND started >= ? GROUP BY device",
            (*releases, since),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def latest(self) -> dict[str, Update]:
        """Each device's latest update, by device."""
        found = self._select(
            "WHERE rowid IN (SELECT rowid FROM updates u WHERE u.device = updates.device"
            " ORDER BY started DESC, rowid DESC LIMIT 1)",
            (),
        )
        return {u.device: u for u in found}

    def in_progress(self) -> list[Update]:
        """Updates that have not ended, oldest first."""
        return self._select(
            "WHERE state NOT IN ('committed', 'failed', 'rolled_back') ORDER BY started, rowid", ()
        )

    def in_progress_of(self, dev: str) -> Update | None:
        """The device's update that has not ended, if any (the newest)."""
        found = self._select(
            """WHERE device = ? AND state NOT IN ('committed', 'failed', 'rolled_back')
               ORDER BY started DESC, rowid DESC LIMIT 1""",
            (dev,),
        )
        return found[0] if found else None

    def last_freshness(self) -> int:
        if self.store.schema < 2:
            return 0
        row = self.store.db.execute("SELECT max(freshness) FROM updates").fetchone()
        return int(row[0] or 0)


FRESHNESS_VERSION = "freshness_version"  # meta: the last freshness version handed out


class Updater:
    """Starts updates, serves their bytes, tracks their statuses.

    keys: the gateway's keys (root.json and gateway.key); without them
    nothing can be added or offered (OtaDisabledError). devices(id) gives a
    device's record, online(id) whether it is connected, revoked(id) whether
    it is revoked (it is offered nothing, forced or not), fleet() every
    record; `publish` is set by the gateway to its MQTT publish (raising
    GatewayError when it cannot). A device on an older root than the keys'
    takes the newer roots first (gateway/roots.py): its update's offer waits
    until it trusts this root.
    """

    def __init__(
        self,
        store: Store,
        *,
        keys: Keys | None,
        devices: Callable[[str], DeviceRecord | None],
        online: Callable[[str], bool],
        revoked: Callable[[str], bool] = lambda dev: False,
        fleet: Callable[[], Iterable[DeviceRecord]] = list,
        deadline_s: float = DEFAULT_DEADLINE_S,
        freshness_ttl_s: float = DEFAULT_FRESHNESS_TTL_S,
        outbox: int = OUTBOX,
        clock: Clock | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.keys = keys
        self.releases = ReleaseStore(store, root=keys.root_bytes if keys is not None else None)
        self.table = UpdateTable(store)
        self.devices = devices
        self.online = online
        self.revoked = revoked
        self.fleet = fleet
        self.roots = RootPlan(dict(keys.chain) if keys is not None else {})
        self._held: set[str] = set()  # devices whose update's offer waits for a root
        self._hello_at: dict[str, float] = {}  # device on an older root -> when its last hello came
        self._keys_stamp = _stamp(keys)
        self.deadline_s = deadline_s
        self.freshness_ttl_s = freshness_ttl_s
        self.publish: Publish | None = None
        self.stats: dict[str, int] = {
            "started": 0,
            "requests": 0,
            "chunks": 0,
            "error_chunks": 0,
            "served": 0,
            "dropped": 0,
            "statuses": 0,
            "committed": 0,
            "failed": 0,
            "reoffers": 0,
            "roots": 0,
        }
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: dict[str, Update] = {u.device: u for u in self.table.in_progress()}
        self._dirty: set[str] = set()
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(outbox)
        self._waiting: dict[str, int] = {}  # device -> its chunks in the outbox
        self._starved: dict[str, None] = {}  # devices whose window allows chunks the outbox had no room for
        self._last_version = self.table.last_freshness()
        self.serving = True  # False: a worker of a pool that does not lead (step_down)
        self._renewing: set[str] = set()  # updates whose statement is being renewed
        self._streams: dict[str, tuple[str, Stream]] = {}  # device -> (update id, its stream)

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def require_keys(self) -> Keys:
        if self.keys is None:
            raise OtaDisabledError(NO_KEYS)
        return self.keys

    # ---- looking up --------------------------------------------------------

    def get(self, uid: str) -> Update:
        """An update by id (in progress: as of now). Raises UpdateNotFoundError."""
        for u in self._active.values() if self.serving else ():
            if u.id == uid:
                return u
        found = self.table.get(uid)
        if found is None:
            raise UpdateNotFoundError(f"no update {uid!r}")
        return found

    def of_device(self, dev: str, limit: int = 20) -> list[Update]:
        """A device's updates, newest first (the one in progress as of now)."""
        self.flush()
        return self.table.of_device(dev, limit)

    def active(self, dev: str) -> Update | None:
        if not self.serving:  # (a worker of a pool that does not lead: the leader's, as last saved)
            return self.table.in_progress_of(dev)
        return self._active.get(dev)

    # ---- starting ----------------------------------------------------------

    def _freshness(
        self, keys: Keys, release: StoredRelease, dev: str, uid: str, now: float
    ) -> tuple[int, bytes]:
        """A statement for release offered to dev as update uid (the device
        checks both: another device's offer is of no use to it)."""
        # (max(last + 1, now in ms), the last of every gateway on this database)
        version = self.table.store.next_number(
            FRESHNESS_VERSION, next_freshness_version(self._last_version, now)
        )
        # keys.freshness signs int(now * 1000) as the version; half a ms in keeps float rounding out
        envelope = freshness(
            keys,
            release.model,
            release.counter,
            release.id,
            self.freshness_ttl_s,
            (version + 0.5) / 1000,
            device=dev,
            update=uid,
        )
        signed = json.loads(json.loads(envelope)["signed"])
        if signed["version"] != version:
            raise OtaServiceError(f"freshness version {signed['version']} is not the {version} intended")
        self._last_version = version
        return version, envelope

    async def start(self, dev: str, ref: str, force: bool = False, idle: bool = False) -> Update:
        """Offer the release ref to dev; the device's previous update, if one
        is in progress, is cancelled; idle: the device installs it only while
        its features are idle (a rollout's offers). Raises OtaDisabledError,
        ReleaseNotFoundError, DeviceNotFoundError, DeviceOfflineError (offline,
        unless force; revoked, forced or not), UpdateRefusedError (wrong_model, rollback), GatewayError (not
        connected to the broker)."""
        self.check_keys()
        keys = self.require_keys()
        release = self.releases.find(ref)
        record = self.devices(dev)
        if record is None:
            raise DeviceNotFoundError(f"no device {dev!r}")
        if self.revoked(dev):
            raise DeviceRevokedError(f"device {dev} is revoked (`devices restore {dev}` lets it back)")
        if not force and not self.online(dev):
            raise DeviceOfflineError(f"device {dev} is offline")
        check_target(dev, record.model, record.ota, release)
        publish = self.publish
        if publish is None:
            raise GatewayError("the gateway is not connected to the broker")
        now = self.clock.now()
        uid = secrets.token_hex(UPDATE_ID_LEN // 2)
        try:
            version, envelope = self._freshness(keys, release, dev, uid, now)
        except KeyStoreError as exc:
            raise OtaServiceError(f"cannot sign the freshness statement: {exc}") from exc
        u = new_update(
            uid,
            dev,
            release.id,
            release.model,
            release.counter,
            release.version,
            version,
            now,
            self.deadline_s,
            idle,
        )
        old = self._active.get(dev)
        # recorded before the offer goes out: a quick device's first request must find it
        self._active[dev] = u
        self.table.save(u)
        self.stats["started"] += 1
        topic = proto.topic(dev, "ota/offer")
        if old is not None:
            self._end(fail(old, f"cancelled: replaced by update {uid}", now))
            try:
                await publish(topic, cancel_message(old.id), 1, False)
            except GatewayError as exc:
                log.warning("%s: could not cancel update %s: %s", dev, old.id, exc)
        if self.roots.behind(record.hello):
            # the device takes the newer roots first; the offer follows its hello on ours
            self._held.add(dev)
            if self.online(dev):
                await self._send_root(dev, record.hello, now)
            log.info(
                "%s: update %s to %s waits for the device to trust root %d",
                dev,
                uid,
                release.ref,
                self.roots.current,
            )
            return u
        self._held.discard(dev)
        try:
            await publish(
                topic, offer_message(uid, release.id, len(release.manifest), envelope, idle), 1, False
            )
        except GatewayError as exc:
            self._end(fail(u, f"the offer was not sent: {exc}", self.clock.now()))
            raise
        log.info("%s: update %s to %s (%s) offered", dev, uid, release.ref, release.version)
        return u

    async def cancel(self, dev: str, reason: str) -> Update | None:
        """End dev's update in progress, if any, as failed(reason), and tell
        the device (a download stops; one already staged goes on to its
        trial, which reports as usual). The update ended, or None."""
        ended = self.drop(dev, reason)
        publish = self.publish
        if ended is not None and publish is not None and not self.revoked(dev):  # (a revoked one: nothing)
            try:
                await publish(proto.topic(dev, "ota/offer"), cancel_message(ended.id), 1, False)
            except GatewayError as exc:
                log.warning("%s: could not cancel update %s: %s", dev, ended.id, exc)
        return ended

    def drop(self, dev: str, reason: str) -> Update | None:
        """End dev's update in progress, if any, as failed(reason), telling
        the device nothing (a revoked device is sent nothing). The update
        ended, or None."""
        u = self._active.get(dev)
        if u is None:
            return None
        ended = fail(u, reason, self.clock.now())
        self._end(ended)
        return ended

    # ---- messages from devices ---------------------------------------------

    def on_online(self, dev: str) -> None:
        """dev says it has (re)connected. An offer it has not answered was
        lost (QoS 1 does not outlive a clean session: the device reset
        before it took it, or took it and lost it in a crash): it is sent
        again, with a fresh freshness statement. A device that has the
        offer already ignores the repeat. So is a deferred one: a statement
        renewed while the device was away never reached it. A device on an
        older root is sent the next one: its hello, which comes first, found
        it not yet online."""
        record = self.devices(dev)
        behind = record is not None and self.roots.behind(record.hello)
        last = self.roots.sent.get(dev)
        if last is None or last[1] < self._hello_at.get(dev, math.inf):
            # what was sent before this connection's hello did not outlive the
            # connection before (a root sent at that hello did)
            self.roots.sent.pop(dev, None)
            if behind and record is not None:
                self._spawn(self._send_root(dev, record.hello, self.clock.now()), f"root-{dev}")
        u = self._active.get(dev)
        if u is not None and (untaken(u) or u.state == "deferred"):
            if behind:
                self._held.add(dev)  # its hello says which root it came back with
            else:
                self._spawn(self._reoffer(u, renew=u.state == "deferred"), f"reoffer-{u.id}")

    def on_hello(self, dev: str, hello: dict[str, Any], now: float) -> Update | None:
        """A hello (validated, from dev; retained or not): a device on an
        older root is sent the next one (if online); one that trusts ours
        now is offered the update that waited for it. A device that says it
        runs its update's release on trial or committed has got that far,
        though the statuses that said so were lost (a broker restarted
        without them). The update if it moved."""
        if self.roots.behind(hello):
            self._hello_at[dev] = now
            if self.online(dev):
                self._spawn(self._send_root(dev, hello, now), f"root-{dev}")
        elif dev in self._held:
            self._held.discard(dev)
            held = self._active.get(dev)
            if held is not None and (untaken(held) or held.state == "deferred"):
                self._spawn(self._reoffer(held, renew=held.state == "deferred"), f"reoffer-{held.id}")
        u = self._active.get(dev)
        msg = from_hello(u, hello.get("ota")) if u is not None else None
        if u is None or msg is None:
            return None
        log.info("%s: its hello says update %s is %s", dev, u.id, msg["state"])
        return self.on_status(dev, msg, now)

    def step_down(self) -> None:
        """This gateway does not run the updates of its pool (any more): what
        it held of them in memory is let go, unsaved (the leader's are the
        database's), and what it had under way stops."""
        self.serving = False
        for task in list(self._tasks):
            task.cancel()
        self._active.clear()
        self._streams.clear()
        self._starved.clear()
        self._dirty.clear()
        self._held.clear()
        self._renewing.clear()

    def take_over(self, delay: float = RECONCILE_S) -> None:
        """This gateway now runs the updates of a pool (gateway/pool.py): the
        updates in progress are the database's, whoever served them until
        now; what is untaken is offered again once the devices' retained
        messages are in, and a device resumes its download from what it has."""
        self.serving = True
        self._active = {u.device: u for u in self.table.in_progress()}
        self._streams.clear()
        self._dirty.clear()
        self._held.clear()
        self.reconcile_soon(delay)

    def reconcile_soon(self, delay: float = RECONCILE_S) -> None:
        """The gateway has (re)connected to the broker: once the retained
        states, hellos and statuses have come in, reconcile."""
        self._spawn(self._reconcile_after(delay), "ota-reconcile")

    async def _reconcile_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.reconcile()

    def reconcile(self) -> int:
        """Offer again every update in progress that its device, online,
        has not taken. A device that reconnected while the gateway was away
        (a broker restarted with the gateway: no persistence, the offer and
        the non-retained online both lost) is seen only by its retained
        state; nothing else would send it the offer again. A device that
        has the offer ignores the repeat. The number offered again."""
        n = 0
        for u in list(self._active.values()):
            if untaken(u) and self.online(u.device):
                record = self.devices(u.device)
                if record is not None and self.roots.behind(record.hello):
                    self._held.add(u.device)
                    continue
                self._spawn(self._reoffer(u), f"reoffer-{u.id}")
                n += 1
        if n:
            log.info("reconciling: %d update(s) offered again", n)
        self.roots_to_fleet()
        return n

    # ---- roots ---------------------------------------------------------------

    def roots_to_fleet(self) -> int:
        """Send the next root to every online device on an older one; how many."""
        n = 0
        now = self.clock.now()
        for record in self.fleet():
            if self.roots.behind(record.hello) and self.online(record.id):
                self._spawn(self._send_root(record.id, record.hello, now), f"root-{record.id}")
                n += 1
        return n

    def retry_roots(self, now: float) -> None:
        """Send a root again to each online device that has not taken it
        within RETRY_S (it was lost: the device reset as it came)."""
        for dev, (_version, when) in list(self.roots.sent.items()):
            if now - when < RETRY_S or not self.online(dev):
                continue
            record = self.devices(dev)
            if record is not None and self.roots.behind(record.hello):
                self._spawn(self._send_root(dev, record.hello, now, RETRY_S), f"root-{dev}")

    async def _send_root(self, dev: str, hello: dict[str, Any], now: float, gap: float = RESEND_S) -> None:
        plan = self.roots.next_root(dev, hello, now, gap)
        publish = self.publish
        if plan is None or publish is None:
            return
        if isinstance(plan, str):
            log.warning(
                "%s: trusts root %s, older than %d, and cannot be sent a newer one: %s",
                dev,
                (hello.get("ota") or {}).get("root"),
                self.roots.current,
                plan,
            )
            return
        version, data = plan
        try:
            await publish(proto.topic(dev, "ota/root"), data, 1, False)
        except GatewayError as exc:
            log.warning("%s: could not send root version %d: %s", dev, version, exc)
            return
        self.stats["roots"] += 1
        log.info("%s: sent root version %d (it trusts %d)", dev, version, version - 1)

    def check_keys(self) -> bool:
        """Load the keys folder again if its root.json changed (the maker
        rotated the root); True if it did. Keys that do not load are
        logged, and the ones in use stay."""
        if self.keys is None or _stamp(self.keys) == self._keys_stamp:
            return False
        self._keys_stamp = _stamp(self.keys)
        try:
            keys = load_keys(self.keys.path)
            keys.gateway_key()
        except KeyStoreError as exc:
            log.error(
                "the keys folder changed and cannot be used: %s; keeping root version %d",
                exc,
                self.keys.version,
            )
            return False
        self.keys = keys
        self.releases.root = keys.root_bytes
        self.roots = RootPlan(dict(keys.chain))
        log.info("keys: root version %d from %s", keys.version, keys.path)
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def renew_statements(self, now: float) -> None:
        """An update that waits (deferred: a low battery, a busy device) past
        half its freshness statement's life is offered again with a new
        statement, which the device takes in place of the old one: it
        would refuse to install on an expired one (docs/ota.md 2.2)."""
        half_ms = self.freshness_ttl_s * 500
        for u in list(self._active.values()):
            if u.state == "deferred" and now * 1000 - u.freshness > half_ms and u.id not in self._renewing:
                self._renewing.add(u.id)
                self._spawn(self._reoffer(u, renew=True), f"renew-{u.id}")

    async def _reoffer(self, u: Update, renew: bool = False) -> None:
        try:
            await self._offer_again(u, renew)
        finally:
            self._renewing.discard(u.id)

    async def _offer_again(self, u: Update, renew: bool) -> None:
        release = self.releases.get(u.release)
        publish = self.publish
        if release is None or publish is None or self.keys is None:
            return
        try:
            version, envelope = self._freshness(self.keys, release, u.device, u.id, self.clock.now())
        except (KeyStoreError, OtaServiceError) as exc:
            log.error("%s: cannot offer update %s again: %s", u.device, u.id, exc)
            return
        current = self._active.get(u.device)
        if (
            current is None
            or current.id != u.id
            or (current.state != "deferred" if renew else current.device_state is not None)
        ):
            return  # it moved on while the statement was signed
        self._active[u.device] = current = replace(current, freshness=version)
        self.table.save(current)
        try:
            await publish(
                proto.topic(u.device, "ota/offer"),
                offer_message(u.id, release.id, len(release.manifest), envelope, u.idle),
                1,
                False,
            )
        except GatewayError as exc:
            log.warning("%s: could not offer update %s again: %s", u.device, u.id, exc)
            return
        self.stats["reoffers"] += 1
        why = "its freshness statement renewed" if renew else "the device reconnected without taking it"
        log.info("%s: update %s offered again (%s)", u.device, u.id, why)

    def on_request(self, dev: str, req: dict[str, Any]) -> None:
        """Answer a request (validated, from dev): a version 2 stream is
        started, or its window moved by an acknowledgement; a version 1
        request is answered with one chunk. Chunks are queued."""
        if req["v"] == 1:
            self._on_request_v1(dev, req)
            return
        if "ack" in req:
            held = self._streams.get(dev)
            # (an acknowledgement's stream is the device's; its id, if it says one, must match)
            moved = held is not None and held[0] == req.get("id", held[0]) and held[1].s == req["s"]
            if held is not None and moved and held[1].ack(req["ack"], req["win"]):
                self._serve(dev, held[0], held[1])
            return
        self.stats["requests"] += 1
        u = self._update_of(dev, req["id"])
        release = self.releases.get(u.release) if u is not None else None
        plan = plan_stream(req, u, release.objects if release is not None else None)
        if isinstance(plan, RefuseStream):
            self._streams.pop(dev, None)
            self._count(dev, u, 0, error=True)
            self._queue(dev, plan.chunk())
            return
        self._streams[dev] = (req["id"], plan)
        self._count(dev, u, 0, error=False)
        self._serve(dev, req["id"], plan)

    def _update_of(self, dev: str, uid: str) -> Update | None:
        u = self._active.get(dev)
        if u is None or u.id != uid:
            u = self.table.get(uid)
            if u is not None and u.device != dev:
                u = None  # another device's update: as if there were none
        return u

    def _serve(self, dev: str, uid: str, stream: Stream) -> None:
        """Queue the chunks stream's window allows."""
        u = self._active.get(dev)
        release = self.releases.get(u.release) if u is not None and u.id == uid else None
        if release is None:
            self._streams.pop(dev, None)  # it ended meanwhile
            return
        served = 0
        # as many as the outbox has room for: the rest when it has (send_loop), not dropped
        # (a device would find them lost, and ask again, halving its window)
        room = min(self._outbox.maxsize - self._outbox.qsize(), OUTBOX_PER_DEVICE - self._waiting.get(dev, 0))
        for idx, key, tag, off, n, pos, last in stream.chunks(max(0, room)):
            try:
                data = self.releases.read(release, key, off, n)
            except OSError as exc:
                log.error("cannot read %s of release %s: %s", key[:16], release.ref, exc)
                data = b""
            if len(data) != n:
                self._streams.pop(dev, None)
                self._queue(dev, RefuseStream(stream.s, tag, "gateway: this object cannot be read").chunk())
                break
            served += n
            self.stats["chunks"] += 1
            self._queue(dev, bytes(encode_chunk(stream.s, idx, pos, off, data, tag, last=last)))
        if stream.done():
            self._streams.pop(dev, None)
        elif stream.due():
            self._starved[dev] = None
        if served:
            self.stats["served"] += served
            self._count(dev, u, served, error=False, request=False)

    def _count(self, dev: str, u: Update | None, served: int, error: bool, request: bool = True) -> None:
        if error:
            self.stats["error_chunks"] += 1
        if u is not None and self._active.get(dev) is u:
            self._active[dev] = replace(
                u,
                served=u.served + served,
                requests=u.requests + (1 if request else 0),
                errors=u.errors + (1 if error else 0),
            )
            self._dirty.add(dev)

    def _queue(self, dev: str, payload: bytes) -> None:
        waiting = self._waiting.get(dev, 0)
        if waiting >= OUTBOX_PER_DEVICE:
            self.stats["dropped"] += 1
            return
        try:
            self._outbox.put_nowait((proto.topic(dev, "ota/chunk"), payload))
        except asyncio.QueueFull:
            self.stats["dropped"] += 1
            return
        self._waiting[dev] = waiting + 1

    def _feed_starved(self) -> None:
        """Serve the streams that waited for room in the outbox, first come
        first served, while there is room."""
        for dev in list(self._starved):  # (one that still waits goes in again, at the end)
            if self._outbox.qsize() >= self._outbox.maxsize:
                return
            del self._starved[dev]
            held = self._streams.get(dev)
            if held is None:
                continue
            try:
                self._serve(dev, *held)
            except Exception:
                # (the sender must go on: the device asks again after its silence)
                log.exception("%s: could not serve its stream", dev)

    def _taken(self, topic: str) -> None:
        """A chunk for topic's device left the outbox."""
        dev = topic.split("/")[1]
        waiting = self._waiting.pop(dev, 0) - 1
        if waiting > 0:
            self._waiting[dev] = waiting

    def _on_request_v1(self, dev: str, req: dict[str, Any]) -> None:
        """Answer a version 1 request with one chunk, queued."""
        self.stats["requests"] += 1
        u = self._update_of(dev, req["id"])
        release = self.releases.get(u.release) if u is not None else None
        plan = plan_chunk(req, u, release.objects if release is not None else None)
        if isinstance(plan, Serve):
            assert release is not None  # plan_chunk serves only with objects
            try:
                data = self.releases.read(release, plan.obj, plan.offset, plan.length)
            except OSError as exc:
                log.error("cannot read %s of release %s: %s", plan.obj[:16], release.ref, exc)
                data = b""
            if len(data) == plan.length:
                payload = plan.chunk(data)
            else:
                plan = Refuse(plan.seq, plan.offset, plan.tag, "gateway: this object cannot be read")
                payload = plan.chunk()
        else:
            payload = plan.chunk()
        served = plan.length if isinstance(plan, Serve) else 0
        if served:
            self.stats["chunks"] += 1
        self.stats["served"] += served
        self._count(dev, u, served, error=not isinstance(plan, Serve))
        self._queue(dev, payload)

    def on_status(self, dev: str, msg: dict[str, Any], now: float) -> Update | None:
        """Apply a status (validated, from dev) to its update; the update if
        it changed, None if the status was for another update, stale or a
        repeat. Of an update that has ended only device_state is noted (a
        device that commits after its deadline stays failed(timeout))."""
        self.stats["statuses"] += 1
        u = self._active.get(dev)
        if (
            msg["id"] == "-"
            and msg["state"] == "failed"
            and str(msg.get("reason", "")).startswith("root refused")
        ):
            return self._root_refused(dev, u, msg, now)
        if u is None or u.id != msg["id"]:
            old = self.table.get(msg["id"])
            if old is not None and old.device == dev and old.device_state != msg["state"]:
                self.table.save(replace(old, device_state=msg["state"]))
            return None
        new = apply_status(u, msg, now)
        if new is None:
            late = late_step(u, msg)
            if late is not None:
                self.table.add_late_step(u, late, now)
            return None
        if new.ended:
            self._end(new)
        else:
            self._active[dev] = new
            self._dirty.discard(dev)
            self.table.save(new)
        return new

    def _root_refused(self, dev: str, u: Update | None, msg: dict[str, Any], now: float) -> Update | None:
        version = self.roots.on_refused(dev)
        if version is None:
            return None  # said again at a connect: noted already
        log.warning("%s: refused root version %d: %s", dev, version, msg.get("reason"))
        if u is None or dev not in self._held:
            return None
        self._held.discard(dev)
        ended = fail(u, f"the device refused root version {version}: {msg.get('reason')}", now)
        self._end(ended)
        return ended

    def _end(self, u: Update) -> None:
        if self._active.get(u.device) is not None and self._active[u.device].id == u.id:
            del self._active[u.device]
            self._dirty.discard(u.device)
            self._streams.pop(u.device, None)
        self.table.save(u)
        self.stats["committed" if u.success else "failed"] += 1
        if u.success:
            log.info("%s: update %s committed (%s)", u.device, u.id, u.version)
        else:
            log.warning("%s: update %s %s: %s", u.device, u.id, u.state, u.reason)

    # ---- time --------------------------------------------------------------

    def check_deadlines(self, now: float) -> list[Update]:
        """End every update past its deadline as failed("timeout"). One that
        cannot be saved is logged; the others end all the same."""
        ended = []
        for u in list(self._active.values()):
            timed_out = expire(u, now)
            if timed_out is not None:
                try:
                    self._end(timed_out)
                except Exception:
                    log.exception("%s: could not save the end of update %s", u.device, u.id)
                    continue
                ended.append(timed_out)
        return ended

    def flush(self) -> None:
        """Write the byte counters of updates in progress (each on its own:
        one that cannot be saved is logged, and tried again next time)."""
        if not self.serving:
            return
        for dev in list(self._dirty):
            u = self._active.get(dev)
            try:
                if u is not None:
                    self.table.save(u)
            except Exception:
                log.exception("%s: could not save update %s", dev, u.id if u else "?")
                continue
            self._dirty.discard(dev)

    async def watch_loop(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_S)
            try:
                if self.check_keys():
                    self.roots_to_fleet()
                self.retry_roots(self.clock.now())
                self.check_deadlines(self.clock.now())
                self.renew_statements(self.clock.now())
                self.flush()
            except Exception:
                log.exception("could not save updates; trying again")

    async def send_loop(self) -> None:
        """Send queued chunks (QoS 0), up to SEND_BATCH at once (the MQTT
        client writes them in order, as many at a time as the socket takes);
        dropped when the broker is away."""
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < SEND_BATCH and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            for topic, _ in batch:
                self._taken(topic)
            if self._starved:
                self._feed_starved()
            publish = self.publish
            if publish is None:
                self.stats["dropped"] += len(batch)
                continue
            # (cancelled, gather raises CancelledError, whatever its publishes did with theirs)
            results = await asyncio.gather(
                *(publish(topic, payload, 0, False) for topic, payload in batch), return_exceptions=True
            )
            for (topic, _), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    self.stats["dropped"] += 1
                    if not isinstance(result, GatewayError | asyncio.CancelledError):
                        log.error("could not send a chunk on %s: %r", topic, result)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(*DbError):
            self.flush()


def _stamp(keys: Keys | None) -> tuple[int, int] | None:
    """What tells that the keys folder's root.json changed."""
    if keys is None:
        return None
    try:
        st = (keys.path / ROOT_FILE).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
