"""A database taken back to an earlier schema version, as an older gateway
left it: the tables of each later migration dropped (gateway/store.py)."""

from __future__ import annotations

from gateway.store import SCHEMA_VERSION, Store

# what each migration from 7 on made, undone
_UNDO = {
    7: "DROP TABLE claim_attempts; DROP TABLE device_owners; DROP TABLE device_claims;"
    " DROP TABLE account_tokens; DROP TABLE accounts;",
    8: "DROP TABLE account_sessions;",
    9: "DROP TABLE device_decisions;",
    10: "DROP TABLE twin_previews; DROP TABLE twin_devices; DROP INDEX commands_device;",
    11: "DROP TABLE device_forgotten; DROP TABLE rollout_forgotten;",
    12: "DROP TABLE data_retention;",
    13: "DROP TABLE ha_links;",
    14: "DROP TABLE stream_retention;",
    15: "DROP TABLE device_registry;",
    16: "ALTER TABLE device_registry DROP COLUMN link_key; ALTER TABLE devices DROP COLUMN carrier;",
    17: "DROP TABLE pool_leases; DROP TABLE pool_workers; ALTER TABLE commands DROP COLUMN worker;",
    18: "ALTER TABLE device_registry DROP COLUMN cluster_hash;",
    19: "DROP TABLE release_blobs; ALTER TABLE pool_workers DROP COLUMN machine;"
    " ALTER TABLE pool_workers DROP COLUMN api_reach; ALTER TABLE pool_workers DROP COLUMN api_cert;",
}
assert max(_UNDO) == SCHEMA_VERSION, "a migration was added: say here how to undo it"


def as_of(store: Store, version: int) -> None:
    """store as a gateway of schema `version` (6 or later) left it."""
    for v in range(SCHEMA_VERSION, version, -1):
        store.db.script(_UNDO[v])
    store.set_meta("schema", str(version))
