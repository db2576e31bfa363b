"""The devices a maker provisioned (docs/security.md 11): each device's id,
model and board, and the hash of its broker password, recorded when it is
provisioned, before its first hello; and whether it is revoked.

The broker's configuration is written from this table (gateway/cli_broker.py:
a password file of the devices not revoked, and a block in the ACL file
that denies every topic to each revoked one), so that a device known here is
let in from its first connection, and a revoked one is cut off within
seconds of its revocation. The gateway refuses every message of a revoked
device and sends it nothing (gateway/service.py). Its data stays until its
owner deletes it (`devices forget`).

The gateway never sees a broker password: provisioning sends the hash that
goes into Mosquitto's password file (PBKDF2-SHA512 with a random salt,
`$7$` as mosquitto_passwd writes it), and this table checks its form, since
it is written into that file line by line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from firmware.pb.ids import valid_id

from .db import Row
from .errors import GatewayError
from .store import Store

# $7$<iterations>$<salt, base64>$<PBKDF2-SHA512, base64>: nothing else may
# reach the password file (a newline or a colon would add a user of its own)
_HASH = re.compile(r"\$7\$[1-9][0-9]{0,6}\$[A-Za-z0-9+/]{8,88}={0,2}\$[A-Za-z0-9+/]{86}==")
_LINK_KEY = re.compile(r"[0-9a-f]{64}")
# bcrypt at the cost provisioning uses (cli_registry.CLUSTER_COST: a dearer one would make every
# connection attempt as that id cost the cluster's nodes), as a NATS server's configuration holds a
# password: written there between quotes, so nothing else may pass
_CLUSTER_HASH = re.compile(r"\$2[ab]\$04\$[./A-Za-z0-9]{53}")
_GENERATION = "registry_generation"  # meta: bumped at every change (`broker run` watches it)


class RegistryError(GatewayError):
    """A registration that is malformed, or a device that is not registered."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Registered:
    device: str
    model: str
    board: str
    password_hash: str
    registered: float
    revoked: float | None  # when it was revoked; None: it may connect
    # its link key (firmware/pb/net/proof.py), hex: what it proves itself with on a
    # serial or Bluetooth line; None: registered without one, it may use MQTT only
    link_key: str | None = None
    # its broker password as a NATS cluster checks it (bcrypt); None: registered
    # without one, it may use Mosquitto only (gateway/nats_cluster.py)
    cluster_hash: str | None = None

    def as_dict(self) -> dict[str, object]:
        """What the API and the command line show: never the hash."""
        return {
            "device": self.device,
            "model": self.model,
            "board": self.board,
            "registered": self.registered,
            "revoked": self.revoked,
            "link_key": self.link_key is not None,  # (whether it has one, never the key)
            "cluster": self.cluster_hash is not None,  # (whether it may use a NATS cluster)
        }


def valid_hash(text: str) -> bool:
    return _HASH.fullmatch(text) is not None


def valid_link_key(text: str) -> bool:
    return _LINK_KEY.fullmatch(text) is not None


def valid_cluster_hash(text: str) -> bool:
    return _CLUSTER_HASH.fullmatch(text) is not None


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def register(
        self,
        device: str,
        model: str,
        board: str,
        password_hash: str,
        now: float,
        link_key: str | None = None,
        cluster_hash: str | None = None,
    ) -> Registered:
        """Record (or record again, after a new provisioning) a device, with
        its link key and its password's hash for a NATS cluster where given. A revoked device stays revoked:
        provisioning it again does not let it back in (`restore` does).
        Raises RegistryError."""
        from .errors import ConfigError
        from .provision import RESERVED_IDS, board_for

        if not valid_id(device):
            raise RegistryError(f"device id {device[:64]!r}: 1-32 of a-z 0-9 - _, a letter or digit first")
        if device in RESERVED_IDS:
            raise RegistryError(f"device id {device!r} is reserved for the broker's own accounts")
        try:
            b = board_for(model, board)
        except ConfigError as exc:
            raise RegistryError(str(exc)) from exc
        if not valid_hash(password_hash):
            raise RegistryError(
                "password_hash must be a Mosquitto PBKDF2-SHA512 hash ($7$ITERATIONS$SALT$HASH), "
                "as permabeta provision sends it"
            )
        if link_key is not None and not valid_link_key(link_key):
            raise RegistryError("link_key must be 64 lowercase hex digits, as permabeta provision sends it")
        if cluster_hash is not None and not valid_cluster_hash(cluster_hash):
            raise RegistryError(
                "cluster_hash must be a bcrypt hash of cost 4 ($2b$04$...), as permabeta provision sends it"
            )
        with self.store.transaction():
            self.db.execute(
                "INSERT INTO device_registry (device, model, board, password_hash, registered, link_key,"
                " cluster_hash) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET"
                " model = excluded.model, board = excluded.board, password_hash = excluded.password_hash, "
                "registered = excluded.registered, link_key = excluded.link_key,"
                " cluster_hash = excluded.cluster_hash",
                (device, b["model"], b["board"], password_hash, now, link_key, cluster_hash),
            )
            self._bump()
        got = self.get(device)
        assert got is not None
        return got

    def get(self, device: str) -> Registered | None:
        row = self.db.execute("SELECT * FROM device_registry WHERE device = ?", (device,)).fetchone()
        return None if row is None else _registered(row)

    def all(self) -> list[Registered]:
        return [_registered(r) for r in self.db.execute("SELECT * FROM device_registry ORDER BY device")]

    def revoked(self) -> set[str]:
        rows = self.db.execute("SELECT device FROM device_registry WHERE revoked IS NOT NULL")
        return {str(r[0]) for r in rows}

    def revoke(self, device: str, now: float) -> Registered:
        """Cut the device off: the broker's next configuration denies it
        everything and drops its password. Raises RegistryError for a device
        never registered (there is nothing at the broker to take away)."""
        return self._set_revoked(device, now)

    def restore(self, device: str) -> Registered:
        """Let a revoked device back in, with the password it was provisioned with."""
        return self._set_revoked(device, None)

    def generation(self) -> int:
        """A number that changes whenever the registry does."""
        value = self.store.get_meta(_GENERATION)
        return int(value) if value is not None else 0

    def _set_revoked(self, device: str, at: float | None) -> Registered:
        with self.store.transaction():
            cur = self.db.execute(
                "UPDATE device_registry SET revoked = ?"
                " WHERE device = ? AND (CASE WHEN revoked IS NULL THEN 1 ELSE 0 END) = ?",
                (at, device, at is not None),
            )
            if cur.rowcount:
                self._bump()
        got = self.get(device)
        if got is None:
            raise RegistryError(
                f"{device[:64]!r} was never registered (provision it with --db or through the gateway)",
                "unknown_device",
            )
        return got

    def _bump(self) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT)",
            (_GENERATION,),
        )


def _registered(row: Row) -> Registered:
    return Registered(
        str(row["device"]),
        str(row["model"]),
        str(row["board"]),
        str(row["password_hash"]),
        float(row["registered"]),
        None if row["revoked"] is None else float(row["revoked"]),
        None if row["link_key"] is None else str(row["link_key"]),
        None if row["cluster_hash"] is None else str(row["cluster_hash"]),
    )
