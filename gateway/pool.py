"""A pool of gateway workers on one database (docs/makers.md, "A pool of
gateway workers"): each `permabeta gateway run --worker NAME` says it is
alive in `pool_workers` every BEAT_S, and the workers seen within TTL_S are
the pool. Each device belongs to one of them, by rendezvous hashing of its
id over the pool's names: when a worker joins or leaves, only the devices it
takes or held move. What must happen once in the whole pool (the update
service, rollouts, retention) is held by a lease in `pool_leases`, renewed
by its holder and taken over by another worker once it has expired.

A worker alone (no --worker) is a pool of one, which touches neither table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from firmware.pb.ids import valid_id

from .errors import GatewayError
from .store import Store

log = logging.getLogger("permabeta.gateway.pool")

BEAT_S = 1.0  # how often a worker says it is alive and looks at the others
TTL_S = 5.0  # a worker not heard of for this long has left the pool; a lease lasts as long
SKEW_TOLD_S = 1.0  # a change of the clocks' difference past this is logged
SKEW_RTT_MAX_S = 0.25  # a clock reading answered slower than this is not taken
_TOKEN = "pool_token"  # meta: the API token every worker of the pool answers to
_GROUP = "pool_share"  # meta: the secret part of the pool's shared subscriptions' group


class PoolError(GatewayError):
    """A worker name that cannot be one."""


@dataclass(frozen=True)
class Worker:
    name: str
    host: str
    pid: int
    api: str | None  # its API's URL, once it serves one
    started: float
    seen: float


def machine_id() -> str:
    """This machine's id: systemd's (/etc/machine-id), else its host name."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                got = f.read().strip()
        except OSError:
            continue
        if got:
            return got
    return socket.gethostname()


def _alive(pid: int) -> bool:
    """Whether a process of this machine has that id (another's, reusing a
    dead worker's, counts as alive: the name waits out TTL_S then)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rank(worker: str, dev: str) -> bytes:
    return hashlib.sha256(f"{worker}\0{dev}".encode()).digest()


def owner_of(dev: str, workers: list[str]) -> str:
    """The worker dev belongs to, of the pool's names (rendezvous hashing)."""
    return max(workers, key=lambda w: _rank(w, dev))


class Pool:
    """This worker's view of the pool. `beat(now)` keeps it current: call it
    every BEAT_S (Gateway runs it)."""

    def __init__(
        self,
        store: Store,
        name: str | None = None,
        ttl_s: float = TTL_S,
        wall: Callable[[], float] = time.time,
        host: str | None = None,
    ) -> None:
        """wall: this machine's clock, whose difference from the database's
        (skew) is added to every `now` given (Gateway gives its clock's);
        host: this machine's name (its host name; and its id, which is
        otherwise /etc/machine-id: boards made alike share a host name)."""
        if name is not None and not valid_id(name):
            raise PoolError(f"a worker's name is a device-style id (a-z, 0-9, '-', '_'; 1-32), not {name!r}")
        self.store = store
        self.name = name or "gateway"
        self.pooled = name is not None
        self.ttl_s = ttl_s
        self.members: list[str] = [self.name]
        self.api: str | None = None
        self.api_info: str | None = None  # what the command line finds the API by (meta `api`)
        self._started: float | None = None
        self._held: set[str] = set()  # the leases this worker holds, as of its last beat
        self.wall = wall
        self.host = host or socket.gethostname()
        self.machine = host or machine_id()
        self.reach: str | None = None  # its API's URL from other machines (None: its loopback)
        self.api_cert: str | None = None  # its API's certificate, PEM
        self.skew = 0.0  # the database's clock less this machine's, as of the last beat
        self._joined = False  # its row written: it is one of the pool until it leaves

    def _measure_skew(self) -> None:
        """How far the database's clock is ahead of this machine's (skew).
        Workers on several machines compare the times they write (who was
        seen when, until when a lease holds) on the database's clock: a
        machine whose own is off (a board without a battery-backed clock,
        booted before its time was set) neither drops the others from the
        pool nor takes a lease its holder still renews. SQLite's workers
        share this machine's clock."""
        if self.store.db.kind != "postgresql":
            return
        t0 = self.wall()
        row = self.store.db.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
        t1 = self.wall()
        if t1 - t0 > SKEW_RTT_MAX_S:
            return  # (a slow answer says the difference to within half its time: the last stands)
        skew = float(row[0]) - (t0 + t1) / 2
        if abs(skew - self.skew) > SKEW_TOLD_S:
            off = f"{-skew:+.1f} s off the database's"
            log.warning("%s: this machine's clock is %s: the pool keeps to the database's", self.name, off)
        self.skew = skew

    def at(self, now: float) -> float:
        """This machine's time now as the database's clock says it: the
        pool's times (seen, a lease's end) are on that clock."""
        return now + self.skew

    def beat(self, now: float) -> list[str]:
        """Say this worker is alive, and read who else is: the pool's names,
        sorted. A worker alone owns every device and holds every lease.
        (now: this machine's time; the pool's is the database's: skew)"""
        if not self.pooled:
            return self.members
        self._measure_skew()
        now = self.at(now)
        self._claim(now)
        db = self.store.db
        rows = db.execute("SELECT name, api FROM pool_workers WHERE seen > ?", (now - self.ttl_s,))
        alive = {str(r[0]): r[1] for r in rows.fetchall()}
        members = sorted({*alive, self.name})  # (a clock stepped back: it is here all the same)
        if self.api_info is not None:
            raw = self.store.get_meta("api")
            if raw is None or json.loads(raw).get("url") not in alive.values():
                # (the worker the command line went to has stopped, or was killed: it comes here)
                self.store.set_meta("api", self.api_info)
        if members != self.members:
            log.info("the pool is now %s", ", ".join(members))
        self.members = members
        return members

    def check_name(self, now: float) -> None:
        """Take this worker's name, or raise PoolError if another process runs
        under it: asked before the worker does anything (connects to the
        broker, with the client id its account binds, or writes the API's
        token and address), so that one refused leaves the one that runs
        alone. Taking it is one statement: of two started under one name at
        the same instant, one is refused."""
        if self.pooled:
            self._measure_skew()
            self._claim(self.at(now))

    def _claim(self, now: float) -> None:
        """Write this worker's row, unless another process holds its name:
        one heard from within TTL_S that is not a process of this machine
        and host name known to be gone (a process is its machine, host name
        and pid: containers of one image share a machine id and may each run
        the gateway as process 1). The check and the write are one statement (a row
        of another process is written over only while it still says what
        was read of it), so no two processes both pass."""
        if self._started is None:
            self._started = now
        row = self.store.db.execute(
            "SELECT coalesce(machine, host), pid, seen, host FROM pool_workers WHERE name = ?", (self.name,)
        ).fetchone()
        gone = -1  # (a pid of this machine and host that is gone: its row may be written over)
        # (containers may share a machine id, not their processes: the host name too)
        if row is not None and (str(row[0]), str(row[3])) == (self.machine, self.host):
            gone = int(row[1]) if int(row[1]) != os.getpid() and not _alive(int(row[1])) else -1
        taken = self.store.db.execute(
            """INSERT INTO pool_workers (name, host, pid, api, started, seen, machine, api_reach, api_cert)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,
                   api = excluded.api, seen = excluded.seen, machine = excluded.machine,
                   api_reach = excluded.api_reach, api_cert = excluded.api_cert
               WHERE pool_workers.seen <= ?
                  OR (coalesce(pool_workers.machine, pool_workers.host) = ? AND pool_workers.host = ?
                      AND pool_workers.pid IN (?, ?))""",
            (
                self.name,
                self.host,
                os.getpid(),
                self.api,
                self._started,
                now,
                *self._published(),
                now - self.ttl_s,
                self.machine,
                self.host,
                os.getpid(),
                gone,
            ),
        ).rowcount
        if taken:
            self._joined = True
            return
        # (two processes under one name would both own its devices and both hold its leases)
        row = self.store.db.execute(
            "SELECT coalesce(machine, host), pid FROM pool_workers WHERE name = ?", (self.name,)
        ).fetchone()
        where = f" (on {row[0]}, process {row[1]})" if row is not None else ""
        raise PoolError(
            f"another worker named {self.name!r} runs{where}: each worker needs a name of its own"
        )

    def _published(self) -> tuple[str, str | None, str | None]:
        """What another machine's worker needs of this one: its machine, where
        it reaches this API, and the certificate it trusts it by."""
        return self.machine, self.reach, self.api_cert

    def owns(self, dev: str) -> bool:
        """Whether dev's messages that must be handled once are this worker's."""
        return not self.pooled or owner_of(dev, self.members) == self.name

    def holds(self, lease: str, now: float) -> bool:
        """Take or renew the lease named `lease` for TTL_S: True while this
        worker holds it. It is taken from its holder only once it expired."""
        if not self.pooled:
            return True
        now = self.at(now)
        db = self.store.db
        expires = now + self.ttl_s
        taken = db.execute(
            """UPDATE pool_leases SET holder = ?, expires = ?
               WHERE name = ? AND (holder = ? OR expires <= ?)""",
            (self.name, expires, lease, self.name, now),
        ).rowcount
        if not taken:
            taken = db.execute(
                """INSERT INTO pool_leases (name, holder, expires) VALUES (?, ?, ?)
                   ON CONFLICT (name) DO NOTHING""",
                (lease, self.name, expires),
            ).rowcount
        held = bool(taken)
        if held != (lease in self._held):
            log.info("%s %s the lease %r", self.name, "holds" if held else "no longer holds", lease)
            (self._held.add if held else self._held.discard)(lease)
        return held

    def release(self) -> None:
        """Leave the pool at once (a worker stopping): its leases and devices
        go to the others at their next beat, not after TTL_S."""
        if not self.pooled or not self._joined:
            return  # (refused, it never joined: the name's rows are another process's)
        self._joined = False
        self._held.clear()
        db = self.store.db
        gone = db.execute(
            "DELETE FROM pool_workers"
            " WHERE name = ? AND coalesce(machine, host) = ? AND host = ? AND pid = ?",
            (self.name, self.machine, self.host, os.getpid()),
        ).rowcount
        if gone:  # (not taken over meanwhile by a process of the same name, this one having been silent)
            db.execute("DELETE FROM pool_leases WHERE holder = ?", (self.name,))

    def token(self, now: float) -> str:
        """The API token of the pool's workers (the gateway's own, which the
        command line uses), kept in meta: a new one when no other worker of
        the pool is alive (as a gateway alone makes one at every start)."""
        others = self.store.db.execute(
            "SELECT count(*) FROM pool_workers WHERE seen > ? AND name != ?",
            (self.at(now) - self.ttl_s, self.name),
        ).fetchone()[0]
        fresh = secrets.token_urlsafe(24)
        if not others:
            self.store.set_meta(_TOKEN, fresh)
        return self._first(_TOKEN, fresh)

    def share(self) -> str:
        """The prefix of the pool's shared subscriptions, `$share/GROUP/`.
        Mosquitto lets any client subscribe to any filter and checks its ACL
        only when it delivers a message: a device that joined the group
        would be given its share of the fleet's telemetry, then be refused
        it, and the gateway would never see it. So the group's name is a
        secret of the pool, 128 random bits kept in the database."""
        return f"$share/{self._first(_GROUP, 'pb-' + secrets.token_hex(16))}/"

    def _first(self, key: str, value: str) -> str:
        """meta's value of key, value if it had none (the first worker's, whichever races)."""
        insert = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
        self.store.db.execute(insert, (key, value))
        kept = self.store.get_meta(key)
        assert kept is not None
        return kept

    def api_is_mine(self) -> bool:
        """Whether the API the command line finds (meta `api`) is this worker's."""
        raw = self.store.get_meta("api")
        return raw is not None and self.api is not None and json.loads(raw).get("url") == self.api

    def live_apis(self, now: float) -> list[tuple[str, str, str | None, str | None]]:
        """(api, machine, api_reach, api_cert) of the workers heard from within
        TTL_S, most recently heard first (now: this machine's time)."""
        self._measure_skew()
        rows = self.store.db.execute(
            "SELECT api, coalesce(machine, host), api_reach, api_cert FROM pool_workers"
            " WHERE api IS NOT NULL AND seen > ? ORDER BY seen DESC",
            (self.at(now) - self.ttl_s,),
        ).fetchall()
        return [(str(r[0]), str(r[1]), r[2], r[3]) for r in rows]

    def workers(self) -> list[Worker]:
        """Every worker the database has heard of, the silent ones too."""
        rows = self.store.db.execute(
            "SELECT name, host, pid, api, started, seen FROM pool_workers ORDER BY name"
        ).fetchall()
        return [Worker(str(r[0]), str(r[1]), int(r[2]), r[3], float(r[4]), float(r[5])) for r in rows]

    def leases(self) -> dict[str, tuple[str, float]]:
        rows = self.store.db.execute("SELECT name, holder, expires FROM pool_leases ORDER BY name").fetchall()
        return {str(r[0]): (str(r[1]), float(r[2])) for r in rows}
