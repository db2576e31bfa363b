"""The gateway's store: device registry, telemetry, events, commands,
rejected-message counters, releases and updates, in SQLite (a file: the
default) or PostgreSQL (a postgresql:// URL), through gateway/db.py. Survives
restarts; readable by the CLI while the gateway runs (SQLite's WAL mode).

Schema versions: _SCHEMA is version 1 and never changes; each later version
is one entry of _MIGRATIONS, applied in order in one transaction each, so a
database of any older version opens and is brought up to date (and a newer
one is refused).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import db as dbapi
from .db import Database, Row
from .errors import StoreError
from .retention import DAY_S, FOREVER, Periods, kept

SCHEMA_VERSION = 19
_UPGRADE_WAIT_S = 120.0  # how long an opening waits for another process's upgrade to end

# version 1: frozen (a database made by the first gateway holds exactly this)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    model TEXT, board TEXT, runtime TEXT, platform TEXT,
    features TEXT NOT NULL DEFAULT '{}',
    hello TEXT,
    online INTEGER NOT NULL DEFAULT 0,
    state_reason TEXT,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    state_changed REAL,
    boot_count INTEGER, reset_cause TEXT, heap_free INTEGER,
    keepalive INTEGER, telemetry_s REAL,
    last_telemetry TEXT
);
CREATE TABLE IF NOT EXISTS telemetry (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    received REAL NOT NULL,
    ts REAL, seq INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_device ON telemetry(device, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    received REAL NOT NULL,
    kind TEXT NOT NULL,
    feature TEXT, message TEXT
);
CREATE INDEX IF NOT EXISTS events_device ON events(device, id);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    op TEXT NOT NULL,
    args TEXT,
    sent REAL NOT NULL,
    status TEXT NOT NULL,
    replied REAL,
    reply TEXT
);
CREATE TABLE IF NOT EXISTS rejects (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_topic TEXT, last_detail TEXT, last_at REAL
);
"""

_MIGRATIONS: dict[int, str] = {
    # 2: releases (gateway/releases.py; their blobs are files in <db>.blobs/)
    # and updates (gateway/updater.py)
    2: """
CREATE TABLE releases (
    id TEXT PRIMARY KEY,            -- sha256 of manifest.json, what offers name
    model TEXT NOT NULL,
    counter INTEGER NOT NULL,
    version TEXT NOT NULL,
    manifest BLOB NOT NULL,         -- manifest.json, byte for byte
    files INTEGER NOT NULL,
    size INTEGER NOT NULL,          -- bytes of the files
    zsize INTEGER NOT NULL,         -- bytes of the distinct blobs
    added REAL NOT NULL
);
CREATE UNIQUE INDEX releases_model_counter ON releases(model, counter);
CREATE TABLE updates (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    release TEXT NOT NULL REFERENCES releases(id),
    model TEXT NOT NULL, counter INTEGER NOT NULL, version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    bytes INTEGER NOT NULL DEFAULT 0, total INTEGER,
    served INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    freshness INTEGER NOT NULL,     -- the version of the freshness statement offered
    started REAL NOT NULL, updated REAL NOT NULL, finished REAL,
    deadline REAL NOT NULL,
    device_state TEXT               -- the last state the device reported for it
);
CREATE INDEX updates_device ON updates(device, started);
CREATE INDEX updates_state ON updates(state);
""",
    # 3: every change of an update's state, in order (what `devices update` shows)
    3: """
CREATE TABLE update_steps (
    id INTEGER PRIMARY KEY,
    update_id TEXT NOT NULL REFERENCES updates(id),
    at REAL NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    bytes INTEGER NOT NULL DEFAULT 0, total INTEGER
);
CREATE INDEX update_steps_update ON update_steps(update_id, id);
""",
    # 4: since when an update's device holds it back (deferred); its deadline waits
    4: """
ALTER TABLE updates ADD COLUMN deferred_since REAL;
""",
    # 5: what the maker and the owner set of a device (gateway/settings.py), and
    # telemetry found by time (the rollouts' windows, gateway/metrics.py)
    5: """
CREATE TABLE device_settings (
    device TEXT PRIMARY KEY,
    channel TEXT NOT NULL DEFAULT 'stable',
    tags TEXT NOT NULL DEFAULT '[]',
    policy TEXT NOT NULL DEFAULT 'auto',
    "window" TEXT,                  -- HH:MM-HH:MM, the device's local time
    approved TEXT,                  -- the release the owner said yes to
    updated REAL
);
CREATE INDEX telemetry_device_received ON telemetry(device, received);
""",
    # 6: rollouts, their members and their decisions (gateway/rollouts.py);
    # updates whose offer asks the device to wait while its features are busy;
    # each device's boots and changes of state over time (the health metrics,
    # gateway/metrics.py)
    6: """
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    release TEXT NOT NULL REFERENCES releases(id),
    ref TEXT NOT NULL,              -- MODEL@COUNTER of the release
    model TEXT NOT NULL,
    cohort TEXT NOT NULL,
    stages TEXT NOT NULL,           -- JSON: cumulative fractions, the last 1.0
    soak REAL NOT NULL,
    max_failure_rate REAL NOT NULL,
    metrics TEXT NOT NULL,          -- JSON: the metrics judged
    reverts TEXT NOT NULL,          -- JSON: {counter the member ran: revert release id}
    seed INTEGER NOT NULL,
    state TEXT NOT NULL,
    stage INTEGER NOT NULL,
    stage_started REAL NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    reason TEXT
);
CREATE TABLE rollout_members (
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    device TEXT NOT NULL,
    stage INTEGER NOT NULL,
    from_counter INTEGER NOT NULL,  -- the release counter it ran when the rollout was created
    update_id TEXT,                 -- its update to the release
    offered REAL,
    revert_id TEXT,                 -- its update to the revert release
    "left" REAL,                    -- when it was updated by hand (it left the rollout)
    PRIMARY KEY (rollout, device)
);
CREATE INDEX rollout_members_device ON rollout_members(device);
CREATE TABLE rollout_decisions (
    id INTEGER PRIMARY KEY,
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    at REAL NOT NULL,
    stage INTEGER NOT NULL,
    kind TEXT NOT NULL,             -- created, look, stage, halt, pause, resume, abort, revert, completed
    result TEXT,
    reason TEXT,
    numbers TEXT                    -- JSON: what the decision saw
);
CREATE INDEX rollout_decisions_rollout ON rollout_decisions(rollout, id);
ALTER TABLE updates ADD COLUMN idle INTEGER NOT NULL DEFAULT 0;
CREATE TABLE device_boots (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    at REAL NOT NULL,
    boot_count INTEGER NOT NULL,
    reset_cause TEXT NOT NULL
);
CREATE INDEX device_boots_device ON device_boots(device, at);
CREATE TABLE device_states (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    at REAL NOT NULL,
    online INTEGER NOT NULL,
    reason TEXT
);
CREATE INDEX device_states_device ON device_states(device, at);
""",
    # 7: accounts, their API tokens, devices' claim codes and owners (gateway/accounts.py)
    7: """
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,             -- owner, maker, admin
    password TEXT,                  -- scrypt$N$r$p$salt$hash; NULL: tokens only
    created REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE account_tokens (
    hash TEXT PRIMARY KEY,          -- SHA-256 of the token
    account INTEGER NOT NULL REFERENCES accounts(id),
    label TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL
);
CREATE TABLE device_claims (
    device TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL UNIQUE, -- SHA-256 of the claim code's 16 digits
    created REAL NOT NULL
);
CREATE TABLE device_owners (
    device TEXT PRIMARY KEY,
    account INTEGER NOT NULL REFERENCES accounts(id),
    since REAL NOT NULL
);
CREATE INDEX device_owners_account ON device_owners(account);
CREATE TABLE claim_attempts (
    account INTEGER NOT NULL,
    at REAL NOT NULL,
    ok INTEGER NOT NULL
);
CREATE INDEX claim_attempts_account ON claim_attempts(account, at);
""",
    # 8: the browser's sessions (gateway/sessions.py)
    8: """
CREATE TABLE account_sessions (
    hash TEXT PRIMARY KEY,          -- SHA-256 of the session's cookie
    account INTEGER NOT NULL REFERENCES accounts(id),
    csrf TEXT NOT NULL,             -- what X-CSRF-Token must say
    created REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE INDEX account_sessions_account ON account_sessions(account);
""",
    # 9: the owner's decision on each update of a device (gateway/decisions.py);
    # an approval (device_settings.approved) is the decision `now`
    9: """
CREATE TABLE device_decisions (
    device TEXT NOT NULL,
    release TEXT NOT NULL,          -- the release id
    decision TEXT NOT NULL,         -- now, later, never
    until REAL,                     -- later: not before this time
    at REAL NOT NULL,
    PRIMARY KEY (device, release)
);
CREATE INDEX device_decisions_release ON device_decisions(release);
INSERT INTO device_decisions (device, release, decision, until, at)
    SELECT device, approved, 'now', NULL, coalesce(updated, 0) FROM device_settings
    WHERE approved IS NOT NULL;
UPDATE device_settings SET approved = NULL;
""",
    # 10: twin previews (gateway/twin/, docs/twin.md), cached per device and
    # release; the heater power an owner gave for them; the commands of a
    # device found by time (the data and settings a twin replays)
    10: """
CREATE TABLE twin_previews (
    device TEXT NOT NULL,
    release TEXT NOT NULL,          -- the release id previewed
    state TEXT NOT NULL,            -- computing, ready, insufficient, failed
    reason TEXT,
    answer TEXT,                    -- JSON: the preview (docs/twin.md 2)
    heater_w REAL,                  -- the heater power it was computed with
    requested REAL NOT NULL,
    started REAL,
    finished REAL,
    PRIMARY KEY (device, release)
);
CREATE TABLE twin_devices (
    device TEXT PRIMARY KEY,
    heater_w REAL,                  -- the heater's rated power, W, as the owner gave it
    updated REAL NOT NULL
);
CREATE INDEX commands_device ON commands(device, sent);
""",
    # 11: devices whose data was forgotten (gateway/footprint.py): nothing of
    # their telemetry, events, boots or states is kept until they are claimed
    # again; and what each rollout counted of its forgotten members, by stage
    # and by what they showed, naming none of them
    11: """
CREATE TABLE device_forgotten (
    device TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE rollout_forgotten (
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    stage INTEGER NOT NULL,
    state TEXT NOT NULL,            -- what the members showed when they were forgotten
    count INTEGER NOT NULL,
    offered INTEGER NOT NULL DEFAULT 0,     -- of those, offered the release ...
    failed INTEGER NOT NULL DEFAULT 0,      -- ... and failed (the hard-failure rule's count)
    rolled_back INTEGER NOT NULL DEFAULT 0, -- ... or rolled back
    PRIMARY KEY (rollout, stage, state)
);
""",
    # 12: how long the gateway keeps what a device shares, as its owner chose
    # (docs/protocol.md 12); none: as long as the gateway keeps data at all
    12: """
CREATE TABLE data_retention (
    device TEXT PRIMARY KEY,
    days REAL NOT NULL CHECK (days > 0),
    set_at REAL NOT NULL
);
""",
    # 13: the devices their owners linked to Home Assistant (gateway/ha_bridge.py,
    # docs/protocol.md 14): the gateway bridges them while their owner keeps them
    13: """
CREATE TABLE ha_links (
    device TEXT PRIMARY KEY,
    account INTEGER NOT NULL,       -- the owner who linked it
    since REAL NOT NULL
);
""",
    # 14: a stream's own period, where its owner gave one (gateway/retention.py);
    # a stream without one keeps its device's (data_retention)
    14: """
CREATE TABLE stream_retention (
    device TEXT NOT NULL,
    stream TEXT NOT NULL,           -- sensors.<name>, actuators.<name>, features.<feature>.<field>
    days REAL CHECK (days IS NULL OR days > 0),  -- NULL: kept with no limit
    set_at REAL NOT NULL,
    PRIMARY KEY (device, stream)
);
""",
    # 15: the devices provisioned, known before their first hello, and the
    # revoked (gateway/registry.py): the broker's configuration is written from it
    15: """
CREATE TABLE device_registry (
    device TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    board TEXT NOT NULL,
    password_hash TEXT NOT NULL,    -- as Mosquitto's password file holds it ($7$...)
    registered REAL NOT NULL,
    revoked REAL                    -- when it was cut off; NULL: it may connect
);
""",
    # 16: devices on a serial or Bluetooth LE line (docs/protocol.md 17): the key
    # each proves itself with, and the carrier a device last reached the gateway by
    16: """
ALTER TABLE device_registry ADD COLUMN link_key TEXT;  -- 64 hex digits; NULL: registered before
ALTER TABLE devices ADD COLUMN carrier TEXT;           -- mqtt, serial:PORT or ble:ADDRESS
""",
    # 17: a pool of gateway workers on one database (gateway/pool.py): who is
    # alive, and who holds what must be done once
    17: """
CREATE TABLE pool_workers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL, pid INTEGER NOT NULL,
    api TEXT,                       -- its API's URL, once it serves one
    started REAL NOT NULL,
    seen REAL NOT NULL              -- when it last said it is alive
);
CREATE TABLE pool_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,           -- a pool_workers name
    expires REAL NOT NULL
);
ALTER TABLE commands ADD COLUMN worker TEXT;  -- the worker of a pool that sent it; NULL: alone
""",
    # 18: a device's broker password hashed for a NATS cluster too (gateway/nats_cluster.py)
    18: """
ALTER TABLE device_registry ADD COLUMN cluster_hash TEXT;  -- bcrypt ($2b$...); NULL: Mosquitto only
""",
    # 19: a pool on several machines (docs/makers.md): the releases' blobs in the database
    # (PostgreSQL's; each worker's folder keeps what it fetched of them), and how another
    # machine reaches a worker's API and trusts it
    19: """
CREATE TABLE release_blobs (
    zsha256 TEXT PRIMARY KEY,       -- the blob's SHA-256, as a release's manifest names it
    data BLOB NOT NULL
);
ALTER TABLE pool_workers ADD COLUMN machine TEXT;    -- its machine's id (/etc/machine-id), else host
ALTER TABLE pool_workers ADD COLUMN api_reach TEXT;  -- its API's URL from other machines; NULL: none
ALTER TABLE pool_workers ADD COLUMN api_cert TEXT;   -- its API's certificate (PEM), trusted by it
""",
}


@dataclass(frozen=True)
class DeviceRecord:
    """One registered device as the gateway last saw it."""

    id: str
    model: str | None
    board: str | None
    runtime: str | None
    platform: str | None
    features: dict[str, Any]
    online: bool
    state_reason: str | None
    first_seen: float
    last_seen: float
    state_changed: float | None
    boot_count: int | None
    reset_cause: str | None
    heap_free: int | None
    keepalive: int | None
    telemetry_s: float | None
    hello: dict[str, Any] = field(default_factory=dict)
    last_telemetry: dict[str, Any] | None = None
    carrier: str = "mqtt"  # how it last reached the gateway: mqtt, serial:PORT, ble:ADDRESS

    @classmethod
    def from_row(cls, row: Row) -> DeviceRecord:
        return cls(
            id=row["id"],
            model=row["model"],
            board=row["board"],
            runtime=row["runtime"],
            platform=row["platform"],
            features=_object(row["features"]),
            online=bool(row["online"]),
            state_reason=row["state_reason"],
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            state_changed=row["state_changed"],
            boot_count=row["boot_count"],
            reset_cause=row["reset_cause"],
            heap_free=row["heap_free"],
            keepalive=row["keepalive"],
            telemetry_s=row["telemetry_s"],
            hello=_object(row["hello"]),
            last_telemetry=_object(row["last_telemetry"]) if row["last_telemetry"] else None,
            carrier=row["carrier"] or "mqtt",
        )

    @property
    def ota(self) -> dict[str, Any] | None:
        """The running feature set as the hello tells it: counter, manifest, state
        (factory, trial, committed, safe_mode); None from a device that does not say."""
        info = self.hello.get("ota")
        return dict(info) if isinstance(info, dict) else None

    def summary(self) -> dict[str, Any]:
        """The fields `devices list --json` shows."""
        return {
            "id": self.id,
            "model": self.model,
            "board": self.board,
            "online": self.online,
            "carrier": self.carrier,
            "runtime": self.runtime,
            "features": {n: feature_version(f) for n, f in sorted(self.features.items())},
            "last_seen": self.last_seen,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "board": self.board,
            "runtime": self.runtime,
            "platform": self.platform,
            "online": self.online,
            "state_reason": self.state_reason,
            "carrier": self.carrier,
            "features": self.features,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "state_changed": self.state_changed,
            "boot_count": self.boot_count,
            "reset_cause": self.reset_cause,
            "heap_free": self.heap_free,
            "keepalive": self.keepalive,
            "telemetry_s": self.telemetry_s,
            "last_telemetry": self.last_telemetry,
            "ota": self.ota,
        }


def _object(text: str | None) -> dict[str, Any]:
    """A JSON object stored by the gateway; {} for anything else (a row
    written before hello was validated as it is now must not break a listing)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def feature_version(f: Any) -> str | None:
    """The version of a feature entry of a hello, as listings show it."""
    v = f.get("version") if isinstance(f, dict) else None
    return v if isinstance(v, str) else None


@dataclass(frozen=True)
class TelemetryRow:
    device: str
    received: float
    ts: float | None
    seq: int | None
    data: dict[str, Any]


_STREAM_RETENTION = ("device", "stream", "days", "set_at")
_EXPIRE_BATCH = 500  # telemetry rows read at a time to strip expired values from


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Store:
    """One database: an SQLite file, or PostgreSQL (where is a
    postgresql:// URL). Writes go through the gateway process only."""

    def __init__(self, where: Path | str, readonly: bool = False, files: Path | None = None) -> None:
        self.where: Path | str = where if dbapi.is_url(where) else Path(where)
        # the folder of what the gateway keeps beside a PostgreSQL database (beside() says)
        self.files = files if files is not None or isinstance(self.where, Path) else _files_of(self.where)
        self.name = dbapi.redacted(str(where)) if dbapi.is_url(where) else str(where)
        self.schema = 0  # the version of the open database
        # each device's periods at the last retention pass, and its time (expire_shared)
        self._expired: dict[str, tuple[Periods, float]] = {}
        try:
            if isinstance(self.where, Path):
                if readonly and not self.where.exists():
                    raise StoreError(f"no gateway database at {self.where}")
                if not readonly:
                    self.where.parent.mkdir(parents=True, exist_ok=True)
            self.db: Database = dbapi.connect(self.where, readonly)
            if isinstance(self.where, Path) and not readonly:
                self.where.chmod(0o600)
            if not readonly:
                self._migrate()
            else:
                self._check_schema()
        except dbapi.Error as exc:
            raise StoreError(f"cannot open gateway database {self.name}: {exc}") from exc

    @property
    def path(self) -> Path:
        """The SQLite file."""
        if not isinstance(self.where, Path):
            raise StoreError(f"{self.name} is a PostgreSQL database: it has no file")
        return self.where

    def beside(self, suffix: str) -> Path:
        """Where the gateway keeps files of a kind (".blobs", ".tls") beside
        its database: <db><suffix> beside an SQLite file; <files>/<kind> for
        PostgreSQL (Store's files; by default the gateway's home's
        files/HOST_PORT_DATABASE)."""
        if isinstance(self.where, Path):
            return self.where.with_name(self.where.name + suffix)
        assert self.files is not None  # (set for every PostgreSQL database)
        return self.files / suffix[1:]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        """Create the schema, or upgrade it to SCHEMA_VERSION. Each step runs
        in a transaction that holds the database's write lock (SQLite's
        BEGIN IMMEDIATE, PostgreSQL's advisory lock) and begins by checking
        the version it upgrades from: processes that open a database at the
        same instant (a pool's workers, a command beside the gateway) each
        find it done or do it once."""
        tables = self.db.tables()
        if tables and "meta" not in tables:
            raise StoreError(f"{self.name} is a database, but not a permabeta gateway's")
        if "meta" in tables and self._version() == SCHEMA_VERSION:
            self.schema = SCHEMA_VERSION  # (up to date: no lock taken, no other opening waits)
            return
        # (None before: just created, as version 1)
        first = "INSERT INTO meta (key, value) VALUES ('schema', '1') ON CONFLICT (key) DO NOTHING;"
        self._locked(f"{self.db.ddl(_SCHEMA)}\n{first}", 1)
        current = self._version() or 1
        if current > SCHEMA_VERSION:
            raise StoreError(f"{self.name} has schema {current}, newer than this gateway's {SCHEMA_VERSION}")
        for v in range(current + 1, SCHEMA_VERSION + 1):
            # (a version other than the one before: a constraint fails, and the step is undone)
            guard = (
                "INSERT INTO meta (key, value) SELECT 'schema', 'upgraded meanwhile'"
                f" WHERE (SELECT value FROM meta WHERE key = 'schema') <> '{v - 1}';"
            )
            done = f"UPDATE meta SET value = '{v}' WHERE key = 'schema';"
            self._locked(f"{guard}\n{self.db.ddl(_MIGRATIONS[v])}\n{done}", v)
        self.schema = SCHEMA_VERSION

    def _version(self) -> int | None:
        """The schema's version as the database says it now (None: none yet)."""
        try:
            version = self.get_meta("schema")
        except dbapi.Error:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            return None  # (no meta table yet)
        return None if version is None else int(version)

    def _locked(self, sql: str, v: int) -> None:
        """Run a step of the schema to version v under the write lock; one
        that fails is undone, and is an error unless another process took
        the schema to v meanwhile. While another process holds the lock (a
        long step of its own upgrade) it is tried again, up to _UPGRADE_WAIT_S."""
        deadline = time.monotonic() + _UPGRADE_WAIT_S
        while True:
            try:
                self.db.script(f"{self.db.exclusive_script}\n{sql}\nCOMMIT;")
                return
            except dbapi.Error as exc:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                now = self._version()
                if now is not None and now >= v:
                    return  # (another process did it)
                if "locked" in str(exc) and time.monotonic() < deadline:
                    continue  # (SQLite: another process holds the lock past the busy timeout)
                raise StoreError(f"cannot upgrade {self.name} to schema {v}: {exc}") from exc

    def _check_schema(self) -> None:
        try:
            version = self.get_meta("schema")
        except dbapi.Error as exc:
            raise StoreError(f"{self.name} is not a permabeta gateway database") from exc
        if version is None:
            raise StoreError(f"{self.name} is not a permabeta gateway database")
        # read-only: an older database is read as it is (the gateway upgrades it when it starts)
        self.schema = int(version)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; within one already under way, that one."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- meta --------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(dbapi.upsert("meta", ("key", "value"), ("key",)), (key, value))

    def delete_meta(self, key: str) -> None:
        self.db.execute("DELETE FROM meta WHERE key = ?", (key,))

    def next_number(self, key: str, at_least: int) -> int:
        """The next of a number kept in meta under key: above the last one
        handed out and at least at_least, taken in one statement, so that the
        gateways of a pool on this database never hand out the same one, nor
        one below another's (the freshness statements' versions)."""
        above = self.db.greatest("CAST(meta.value AS BIGINT) + 1", "CAST(excluded.value AS BIGINT)")
        row = self.db.execute(
            f"""INSERT INTO meta (key, value) VALUES (?, ?)
                ON CONFLICT (key) DO UPDATE SET value = CAST({above} AS TEXT) RETURNING value""",
            (key, str(at_least)),
        ).fetchone()
        return int(row[0])

    # ---- devices -----------------------------------------------------------

    def upsert_hello(self, dev: str, hello: dict[str, Any], now: float, carrier: str = "mqtt") -> None:
        """Register a device, or refresh what it says of itself and the
        carrier it said it by; a hello whose boot count or reset cause is new
        is a boot, kept in device_boots (not of a forgotten device: it keeps
        no history)."""
        before = self.db.execute(
            "SELECT boot_count, reset_cause FROM devices WHERE id = ?", (dev,)
        ).fetchone()
        said = (hello["boot_count"], self.db.kept(hello["reset_cause"]))  # (as it reads back)
        new_boot = before is None or (before[0], before[1]) != said
        if new_boot and not self.forgotten(dev):
            self.db.execute(
                "INSERT INTO device_boots (device, at, boot_count, reset_cause) VALUES (?, ?, ?, ?)",
                (dev, now, hello["boot_count"], hello["reset_cause"]),
            )
        self.db.execute(
            """INSERT INTO devices (id, model, board, runtime, platform, features, hello,
                   first_seen, last_seen, boot_count, reset_cause, heap_free, keepalive, telemetry_s, carrier)
               VALUES (:id, :model, :board, :runtime, :platform, :features, :hello,
                   :now, :now, :boot_count, :reset_cause, :heap_free, :keepalive, :telemetry_s, :carrier)
               ON CONFLICT (id) DO UPDATE SET
                   model = excluded.model, board = excluded.board, runtime = excluded.runtime,
                   platform = excluded.platform, features = excluded.features, hello = excluded.hello,
                   last_seen = excluded.last_seen, boot_count = excluded.boot_count,
                   reset_cause = excluded.reset_cause, heap_free = excluded.heap_free,
                   keepalive = excluded.keepalive, telemetry_s = excluded.telemetry_s,
                   carrier = excluded.carrier""",
            {
                "id": dev,
                "model": hello["model"],
                "board": hello["board"],
                "runtime": hello["runtime"],
                "platform": hello.get("platform"),
                "features": _dumps(hello["features"]),
                "hello": _dumps(hello),
                "now": now,
                "boot_count": hello["boot_count"],
                "reset_cause": hello["reset_cause"],
                "heap_free": hello["heap_free"],
                "keepalive": hello["keepalive"],
                "telemetry_s": hello["telemetry_s"],
                "carrier": carrier,
            },
        )

    def stream_counts(
        self, dev: str, paths: list[str], since: float | None = None
    ) -> dict[str, tuple[int, float | None]]:
        """How many of the device's stored telemetry rows carry each stream
        (`sensors.humidity`, `features.thermostat.setpoint`, ...), and when
        the oldest of them was received (None: none); with since, of the rows
        received from then on (an owner's: from its claim)."""
        if not paths:
            return {}
        parts = []
        has = self.db.json_present("data")
        for _ in paths:
            parts.append(f"coalesce(sum(CASE WHEN {has} THEN 1 ELSE 0 END), 0)")
            parts.append(f"min(CASE WHEN {has} THEN received END)")
        json_paths = [jp for p in paths for jp in (self._json_path(p), self._json_path(p))]
        after = "" if since is None else " AND received >= ?"
        row = self.db.execute(
            f"SELECT {', '.join(parts)} FROM telemetry WHERE device = ?{after}",
            (*json_paths, dev, *(() if since is None else (since,))),
        ).fetchone()
        return {p: (int(row[2 * i]), row[2 * i + 1]) for i, p in enumerate(paths)}

    def retention(self, dev: str) -> float | None:
        """Days the device's owner has the gateway keep what it shares (None: no limit set)."""
        row = self.db.execute("SELECT days FROM data_retention WHERE device = ?", (dev,)).fetchone()
        return float(row[0]) if row is not None else None

    def periods(self, dev: str) -> Periods:
        """The device's period and each stream's own (gateway/retention.py)."""
        own = self.db.execute("SELECT stream, days FROM stream_retention WHERE device = ?", (dev,))
        return Periods(self.retention(dev), {str(p): None if d is None else float(d) for p, d in own})

    def set_retention(self, dev: str, days: float | None, now: float) -> None:
        if days is None:
            self.db.execute("DELETE FROM data_retention WHERE device = ?", (dev,))
        else:
            self.db.execute(
                dbapi.upsert("data_retention", ("device", "days", "set_at"), ("device",)), (dev, days, now)
            )

    def set_stream_retention(self, dev: str, asked: dict[str, float | str | None], now: float) -> None:
        """Streams' own periods (retention.check_streams): days, FOREVER, or
        None (the stream keeps the device's again)."""
        for path, days in asked.items():
            if days is None:
                self.db.execute("DELETE FROM stream_retention WHERE device = ? AND stream = ?", (dev, path))
            else:
                self.db.execute(
                    dbapi.upsert("stream_retention", _STREAM_RETENTION, ("device", "stream")),
                    (dev, path, None if days == FOREVER else days, now),
                )

    def expire_shared(self, now: float) -> int:
        """Delete what each device's owner no longer has the gateway keep:
        rows older than every period that applies to them, and from younger
        rows the values of streams kept for less (retention.kept). The rows
        deleted or changed."""
        devices = self.db.execute(
            "SELECT device FROM data_retention UNION SELECT device FROM stream_retention"
        )
        changed = 0
        for (dev,) in devices.fetchall():
            periods = self.periods(dev)
            if not periods.limited:
                continue
            with self.transaction():
                whole = periods.whole_row_days
                if whole is not None:
                    changed += self.db.execute(
                        "DELETE FROM telemetry WHERE device = ? AND received < ?", (dev, now - whole * DAY_S)
                    ).rowcount
                changed += self._expire_values(dev, periods, now)
            self._expired[dev] = (periods, now)
        return changed

    def _expire_values(self, dev: str, periods: Periods, now: float) -> int:
        """Strip from dev's rows the values past their stream's period. Under
        the periods of the last pass, only the rows that have come of age
        since are read (a stream kept with no limit keeps old rows, which
        are not read again every pass)."""
        whole = periods.whole_row_days
        tests: list[tuple[float, str, list[Any]]] = []  # (days, which rows hold such values, its args)
        for path, days in periods.streams.items():
            if days is not None and (whole is None or days < whole) and '"' not in path:
                tests.append((days, self.db.json_present("data"), [self._json_path(path)]))
        if periods.device is not None and (whole is None or periods.device < whole):
            # (a value of any stream without a period of its own)
            own = list(periods.streams)
            tests.append((periods.device, self._unlisted(len(own)), [*own, *own, *own]))
        last = self._expired.get(dev)
        since = last[1] if last is not None and last[0] == periods else None
        changed = 0
        for days, test, args in tests:
            low = -math.inf if since is None else since - days * DAY_S
            changed += self._strip(dev, periods, now, (low, now - days * DAY_S), test, args)
        return changed

    def _json_path(self, stream: str) -> Any:
        """The JSON path of a stream's value in a telemetry row (`sensors.humidity`)."""
        return self.db.json_path(stream.split(".", 2))

    def _unlisted(self, n: int) -> str:
        """An SQL test, with n placeholders three times over (stream names):
        whether a telemetry row holds a value of a stream not among them."""
        marks = ", ".join("?" for _ in range(n))

        def other(name: str) -> str:
            return f"{name} NOT IN ({marks})" if n else "1 = 1"

        if self.db.kind == "postgresql":
            # (rows written with json_text: no \u0000, which these functions refuse)
            def each(value: str) -> str:
                return f"json_each(CASE WHEN json_typeof({value}) = 'object' THEN {value} END)"

            return f"""(
                EXISTS (SELECT 1 FROM {each("data::json -> 'sensors'")} AS s
                        WHERE {other("'sensors.' || s.key")})
                OR EXISTS (SELECT 1 FROM {each("data::json -> 'actuators'")} AS a
                           WHERE {other("'actuators.' || a.key")})
                OR EXISTS (SELECT 1 FROM {each("data::json -> 'features'")} AS f
                           WHERE json_typeof(f.value) != 'object' OR EXISTS (
                               SELECT 1 FROM {each("f.value")} AS g
                               WHERE {other("'features.' || f.key || '.' || g.key")})))"""
        return f"""(
            EXISTS (SELECT 1 FROM json_each(data, '$.sensors') WHERE {other("'sensors.' || key")})
            OR EXISTS (SELECT 1 FROM json_each(data, '$.actuators') WHERE {other("'actuators.' || key")})
            OR EXISTS (SELECT 1 FROM json_each(data, '$.features') AS f
                       WHERE f.type != 'object' OR EXISTS (SELECT 1 FROM json_each(f.value) AS g
                           WHERE {other("'features.' || f.key || '.' || g.key")})))"""

    def _strip(
        self, dev: str, periods: Periods, now: float, span: tuple[float, float], test: str, args: list[Any]
    ) -> int:
        """retention.kept on dev's rows received within span that pass test, a batch at a time."""
        changed, after = 0, (-math.inf, -1)
        while True:
            batch = self.db.execute(
                "SELECT id, received, data FROM telemetry WHERE device = ? AND received >= ? AND received < ?"
                f" AND (received, id) > (?, ?) AND {test} ORDER BY received, id LIMIT {_EXPIRE_BATCH}",
                (dev, *span, *after, *args),
            ).fetchall()
            if not batch:
                return changed
            for row_id, received, data in batch:
                left = kept(json.loads(data), now - received, periods)
                if left is None:
                    self.db.execute("DELETE FROM telemetry WHERE id = ?", (row_id,))
                else:
                    self.db.execute(
                        "UPDATE telemetry SET data = ? WHERE id = ?",
                        (self.db.json_text(_dumps(left)), row_id),
                    )
                changed += 1
            after = (batch[-1][1], batch[-1][0])

    def set_withheld(self, dev: str, withheld: dict[str, str]) -> None:
        """What the device answered it now keeps back (its reply to
        streams.set, docs/protocol.md 12), ahead of the hello that says it."""
        with self.transaction():
            row = self.db.execute("SELECT hello FROM devices WHERE id = ?", (dev,)).fetchone()
            if row is None:
                return
            hello = _object(row["hello"])
            hello["streams"] = withheld
            self.db.execute("UPDATE devices SET hello = ? WHERE id = ?", (_dumps(hello), dev))

    def set_state(self, dev: str, online: bool, reason: str | None, now: float) -> bool:
        """Record online/offline, and the change in device_states (not of a
        forgotten device); True if it changed."""
        with self.transaction():
            cur = self.db.execute(
                """UPDATE devices SET online = ?, state_reason = ?, state_changed = ?,
                       last_seen = CASE WHEN ? = 1 THEN ? ELSE last_seen END
                   WHERE id = ? AND online != ?""",
                (int(online), reason, now, int(online), now, dev, int(online)),
            )
            if cur.rowcount > 0 and not self.forgotten(dev):
                self.db.execute(
                    "INSERT INTO device_states (device, at, online, reason) VALUES (?, ?, ?, ?)",
                    (dev, now, int(online), reason),
                )
        return cur.rowcount > 0

    def forgotten(self, dev: str) -> bool:
        """Whether the device's data was forgotten and nobody has claimed it
        since (gateway/footprint.py): its telemetry, events, boots and
        changes of state are not kept."""
        if self.schema < 11:
            return False
        row = self.db.execute("SELECT 1 FROM device_forgotten WHERE device = ?", (dev,)).fetchone()
        return row is not None

    def forgotten_devices(self) -> set[str]:
        if self.schema < 11:
            return set()
        return {str(r[0]) for r in self.db.execute("SELECT device FROM device_forgotten")}

    def history(self, table: str, dev: str, start: float, end: float) -> list[Row]:
        """A device's rows of device_boots or device_states from start to
        end, with the last one before start (what held at start)."""
        if table not in ("device_boots", "device_states"):
            raise ValueError(table)
        before = self.db.execute(
            f"SELECT * FROM {table} WHERE device = ? AND at < ? ORDER BY at DESC, id DESC LIMIT 1",
            (dev, start),
        ).fetchall()
        within = self.db.execute(
            f"SELECT * FROM {table} WHERE device = ? AND at >= ? AND at <= ? ORDER BY at, id",
            (dev, start, end),
        ).fetchall()
        return before + within

    def telemetry_between(self, dev: str, start: float, end: float) -> list[tuple[float, str]]:
        """(received, data JSON) of a device's telemetry from start to end, in order."""
        return self.db.tuples(  # (plain tuples: a look reads millions of rows)
            "SELECT received, data FROM telemetry WHERE device = ? AND received >= ? AND received <= ?"
            " ORDER BY received, id",
            (dev, start, end),
        )

    def events_between(self, dev: str, start: float, end: float) -> list[Row]:
        return self.db.execute(
            "SELECT received, kind, feature FROM events WHERE device = ? AND received >= ? AND received <= ?"
            " ORDER BY id",
            (dev, start, end),
        ).fetchall()

    def device_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM devices ORDER BY id")]

    def devices(self) -> list[DeviceRecord]:
        return [DeviceRecord.from_row(r) for r in self.db.execute("SELECT * FROM devices ORDER BY id")]

    def device(self, dev: str) -> DeviceRecord | None:
        row = self.db.execute("SELECT * FROM devices WHERE id = ?", (dev,)).fetchone()
        return None if row is None else DeviceRecord.from_row(row)

    # ---- telemetry and events ----------------------------------------------

    def add_telemetry(self, rows: Iterable[TelemetryRow]) -> tuple[int, list[tuple[TelemetryRow, Exception]]]:
        """Store a batch in one transaction. If that fails, each row is
        stored in a transaction of its own, so that a row that cannot be
        stored costs no other row its place. Returns how many rows were
        stored, and each row that was not with the reason."""
        rows = list(rows)
        if not rows:
            return 0, []
        try:
            self._add_telemetry(rows)
        except Exception as exc:  # noqa: BLE001 - told to the caller, row by row
            if len(rows) == 1:
                return 0, [(rows[0], exc)]
            failed: list[tuple[TelemetryRow, Exception]] = []
            for r in rows:
                try:
                    self._add_telemetry([r])
                except Exception as one:  # noqa: BLE001 - told to the caller
                    failed.append((r, one))
            return len(rows) - len(failed), failed
        return len(rows), []

    def _add_telemetry(self, rows: list[TelemetryRow]) -> None:
        texts = [self.db.json_text(_dumps(r.data)) for r in rows]
        latest: dict[str, tuple[str, float]] = {}
        for r, text in zip(rows, texts, strict=True):
            latest[r.device] = (text, r.received)
        with self.transaction():
            self.db.insert_many(
                "telemetry",
                ("device", "received", "ts", "seq", "data"),
                [(r.device, r.received, r.ts, r.seq, text) for r, text in zip(rows, texts, strict=True)],
            )
            later = self.db.greatest("last_seen", "?")
            self.db.executemany(
                f"UPDATE devices SET last_telemetry = ?, last_seen = {later} WHERE id = ?",
                [(text, received, dev) for dev, (text, received) in latest.items()],
            )

    def telemetry(self, dev: str, limit: int = 100, since: float | None = None) -> list[TelemetryRow]:
        """The newest rows of a device (received at since or later), oldest first."""
        rows = self.db.execute(
            "SELECT * FROM telemetry WHERE device = ? AND received >= ? ORDER BY id DESC LIMIT ?",
            (dev, -math.inf if since is None else since, limit),
        ).fetchall()
        return [
            TelemetryRow(r["device"], r["received"], r["ts"], r["seq"], json.loads(r["data"]))
            for r in reversed(rows)
        ]

    def telemetry_count(self, dev: str | None = None) -> int:
        if dev is None:
            return int(self.db.execute("SELECT count(*) FROM telemetry").fetchone()[0])
        return int(self.db.execute("SELECT count(*) FROM telemetry WHERE device = ?", (dev,)).fetchone()[0])

    def touch(self, dev: str, now: float) -> None:
        self.db.execute(
            f"UPDATE devices SET last_seen = {self.db.greatest('last_seen', '?')} WHERE id = ?", (now, dev)
        )

    def add_event(self, dev: str, kind: str, feature: str | None, message: str | None, now: float) -> None:
        self.db.execute(
            "INSERT INTO events (device, received, kind, feature, message) VALUES (?, ?, ?, ?, ?)",
            (dev, now, kind, feature, message),
        )

    def events(self, dev: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT received, kind, feature, message FROM events WHERE device = ? ORDER BY id DESC LIMIT ?",
            (dev, limit),
        ).fetchall()
        return [dict(r) for r in reversed(rows)]

    # ---- commands ----------------------------------------------------------

    def add_command(
        self, cmd_id: str, dev: str, op: str, args: dict[str, Any], now: float, worker: str | None = None
    ) -> None:
        """A command sent (by the pool's worker `worker`, which waits for its reply)."""
        self.db.execute(
            """INSERT INTO commands (id, device, op, args, sent, status, worker)
               VALUES (?, ?, ?, ?, ?, 'sent', ?)""",
            (cmd_id, dev, op, _dumps(args), now, worker),
        )

    def finish_command(
        self, cmd_id: str, dev: str, status: str, reply: dict[str, Any] | None, now: float
    ) -> None:
        """The end of dev's command cmd_id, if it was still sent; a reply
        that comes after its wait ended (timeout, cancelled) is recorded as
        `late` with it. A repeat of a reply recorded, or a reply naming
        another device's command id, changes nothing."""
        ending = "('sent', 'timeout', 'cancelled')" if status == "late" else "('sent')"
        self.db.execute(
            f"""UPDATE commands SET status = ?, reply = ?, replied = ?
               WHERE id = ? AND device = ? AND status IN {ending}""",
            (status, _dumps(reply) if reply is not None else None, now, cmd_id, dev),
        )

    def command(self, cmd_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM commands WHERE id = ?", (cmd_id,)).fetchone()
        return None if row is None else dict(row)

    # ---- rejected messages -------------------------------------------------

    def count_reject(self, reason: str, topic: str, detail: str, now: float) -> None:
        self.db.execute(
            """INSERT INTO rejects (reason, count, last_topic, last_detail, last_at) VALUES (?, 1, ?, ?, ?)
               ON CONFLICT (reason) DO UPDATE SET count = rejects.count + 1, last_topic = excluded.last_topic,
                   last_detail = excluded.last_detail, last_at = excluded.last_at""",
            (reason, topic[:200], detail[:500], now),
        )

    def rejects(self) -> dict[str, dict[str, Any]]:
        return {
            r["reason"]: {
                "count": r["count"],
                "last_topic": r["last_topic"],
                "last_detail": r["last_detail"],
                "last_at": r["last_at"],
            }
            for r in self.db.execute("SELECT * FROM rejects ORDER BY reason")
        }


def _files_of(url: str) -> Path:
    """The default folder of what the gateway keeps beside the PostgreSQL database at url."""
    from urllib.parse import urlsplit

    from .paths import home

    u = urlsplit(url)
    name = f"{u.hostname or 'local'}_{u.port or 5432}_{u.path.strip('/') or 'postgres'}"
    return home() / "files" / "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def now() -> float:
    return time.time()
