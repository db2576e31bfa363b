"""Everything the gateway stores about one device, found, exported and
forgotten (docs/security.md 8, docs/protocol.md 10.3).

TABLES names every table that holds rows about a device and how to find
them (the tests check that no table with a `device` column is left out).
An export is one snapshot of those rows: a JSON document, or a zip of one
CSV per table, written a batch of rows at a time so that a device's years
of telemetry are never held in memory. Forgetting deletes those rows in one
transaction; a rollout keeps only counts of its forgotten member
(rollouts.Gone), the gateway's reject counters keep their counts but not a
topic or detail of the device, and the device is marked forgotten: the
store keeps none of its telemetry, events, boots or changes of state until
someone claims it again (gateway/accounts.py). Its claim code's hash stays,
so that the code on its box still claims it.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .db import ROWID, Cursor, Database, upsert
from .rollouts import Gone, RolloutTable, spent_reason
from .store import Store

FORMATS = ("json", "csv")
MEDIA_TYPES = {"json": "application/json", "csv": "application/zip"}
_BATCH = 500  # rows read and written at a time
_OWN_TOPICS = "substr(last_topic, 1, length('pb/' || :dev || '/')) = 'pb/' || :dev || '/'"


@dataclass(frozen=True)
class Table:
    """A table's rows about the device :dev; `since`: the time they are
    exported from for an owner, who sees nothing from before its claim
    (None: all of them, what holds now); `forget`: what forgetting does
    with them (delete, keep, or the statement that does it); `shown`: a
    row as exported, where it names other devices too (their part left out)."""

    name: str
    where: str
    since: str | None = None
    order: str = "rowid"
    forget: str = "delete"
    shown: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None


def _own_revert(dev: str, row: dict[str, Any]) -> dict[str, Any]:
    """A `revert_failed` decision as dev's export shows it: dev by name, the others counted."""
    numbers = json.loads(row["numbers"])
    mine = {dev: numbers["devices"][dev]}
    forgotten, others = int(numbers.get("forgotten", 0)), len(numbers["devices"]) - 1
    shown = {"devices": mine, "others": others} | ({"forgotten": forgotten} if forgotten else {})
    reason = spent_reason(mine, forgotten, others)
    return row | {"numbers": json.dumps(shown, sort_keys=True), "reason": reason}


TABLES: tuple[Table, ...] = (
    Table("devices", "id = :dev"),
    Table("device_settings", "device = :dev"),
    Table("device_owners", "device = :dev"),
    Table("device_claims", "device = :dev", forget="keep"),  # (the code on the box claims it again)
    Table("device_forgotten", "device = :dev", forget="keep"),
    # (the maker's record of what it provisioned: the broker lets the device in
    # by it; its password's hash is not the owner's to see)
    Table(
        "device_registry",
        "device = :dev",
        forget="keep",
        shown=lambda _dev, row: row | {"password_hash": None},
    ),
    Table("data_retention", "device = :dev"),
    Table("stream_retention", "device = :dev", order="stream"),
    Table("ha_links", "device = :dev", "since"),
    Table("telemetry", "device = :dev", "received", "id"),
    Table("events", "device = :dev", "received", "id"),
    Table("commands", "device = :dev", "sent", "sent"),
    Table("device_boots", "device = :dev", "at", "id"),
    Table("device_states", "device = :dev", "at", "id"),
    # (the steps first: they are found by their update)
    Table(
        "update_steps",
        "update_id IN (SELECT id FROM updates WHERE device = :dev"
        " AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR started >= :since))",
        order="id",
    ),
    Table("updates", "device = :dev", "started", "started"),
    Table("device_decisions", "device = :dev", "at", "at"),
    Table("twin_previews", "device = :dev", "requested", "requested"),
    Table("twin_devices", "device = :dev", "updated"),
    # (a membership not offered yet is the current owner's as much as anyone's)
    Table("rollout_members", "device = :dev", "coalesce(offered, :since)", forget="rollouts"),
    Table(
        "rollout_decisions",
        "kind = 'revert_failed' AND {has_dev}",
        "at",
        "id",
        forget="rollouts",
        shown=_own_revert,
    ),
    Table(
        "rejects",
        _OWN_TOPICS,
        "last_at",
        forget=f"UPDATE rejects SET last_topic = NULL, last_detail = NULL WHERE {_OWN_TOPICS}",
    ),
)


def _where(t: Table, db: Database) -> str:
    """t's test, in db's words (:dev, :since)."""
    return t.where.replace("{has_dev}", db.json_has_key("numbers", "devices").replace("?", ":dev"))


def _select(t: Table, db: Database) -> str:
    since = f" AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR {t.since} >= :since)" if t.since else ""
    return f"SELECT * FROM {t.name} WHERE ({_where(t, db)}){since} ORDER BY {t.order}"


Batches = Iterator[list[tuple[Any, ...]]]


def tables(store: Store, dev: str, since: float | None = None) -> Iterator[tuple[str, list[str], Batches]]:
    """(table, its columns, its rows in batches) of every table in TABLES,
    rows about dev only (from `since` on, where a table says when)."""
    for t in TABLES:
        cur = store.db.plain(_select(t, store.db), {"dev": dev, "since": since})
        columns = [d[0] for d in cur.description]
        skip = 1 if columns[0] == ROWID and store.db.kind == "postgresql" else 0  # (not a column of it)
        yield t.name, columns[skip:], _batches(cur, dev, columns[skip:], t.shown, skip)


def _batches(
    cur: Cursor,
    dev: str,
    columns: list[str],
    shown: Callable[[str, dict[str, Any]], dict[str, Any]] | None,
    skip: int = 0,
) -> Batches:
    while batch := cur.fetchmany(_BATCH):
        if skip:
            batch = [row[skip:] for row in batch]
        if shown is not None:
            batch = [tuple(shown(dev, dict(zip(columns, row, strict=True))).values()) for row in batch]
        yield batch


def stored(store: Store, dev: str) -> bool:
    """Whether the store holds anything about dev."""
    return any(
        store.db.execute(f"SELECT EXISTS ({_select(t, store.db)})", {"dev": dev, "since": None}).fetchone()[0]
        for t in TABLES
    )


@contextmanager
def snapshot(where: Path | str) -> Iterator[Store]:
    """The database (a file, or a URL) read as it is now, whatever the gateway
    writes while the export is written (one read transaction of its own connection)."""
    with Store(where, readonly=True) as store:
        store.db.execute(store.db.snapshot)
        try:
            yield store
        finally:
            store.db.execute("ROLLBACK")


# ---- export ---------------------------------------------------------------------


def head(store: Store, dev: str, now: float, since: float | None) -> dict[str, Any]:
    """What an export says of itself, and how long the gateway keeps what
    the device shares (`retention`: the device's days, each stream's own)."""
    periods = store.periods(dev)
    retention = {"days": periods.device, "streams": {p: periods.own(p) for p in sorted(periods.streams)}}
    return {"device": dev, "exported_at": now, "schema": store.schema, "since": since, "retention": retention}


def json_export(store: Store, dev: str, now: float, since: float | None = None) -> Iterator[bytes]:
    """One JSON document: head(), and `tables`: each table's rows about
    dev, each an object of its columns, values as stored (JSON kept in a
    text column, as a telemetry row's data, stays text)."""
    yield (json.dumps(head(store, dev, now, since))[:-1] + ', "tables": {').encode()
    for i, (name, columns, batches) in enumerate(tables(store, dev, since)):
        yield f"{', ' if i else ''}{json.dumps(name)}: [".encode()
        sep = ""
        for batch in batches:
            rows = (json.dumps(dict(zip(columns, row, strict=True))) for row in batch)
            yield (sep + ", ".join(rows)).encode()
            sep = ", "
        yield b"]"
    yield b"}}\n"


class _Sink(io.RawIOBase):
    """Where a zip is written as it is made: what was written since the
    last take(). Not seekable: zipfile then writes each entry's sizes after
    its data."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._parts.append(bytes(b))
        return len(self._parts[-1])

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


def csv_export(store: Store, dev: str, now: float, since: float | None = None) -> Iterator[bytes]:
    """A zip of `export.csv` (head() as rows of key and value, an object as
    JSON) and one
    `<table>.csv` per table, its column names first; NULL is an empty cell."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:
        meta = [
            [
                (k, json.dumps(v) if isinstance(v, dict) else v)
                for k, v in head(store, dev, now, since).items()
            ]
        ]
        for _ in _csv_entry(zf, "export.csv", ["key", "value"], meta):
            yield sink.take()
        for name, columns, batches in tables(store, dev, since):
            for _ in _csv_entry(zf, f"{name}.csv", columns, batches):
                yield sink.take()
    yield sink.take()


def _csv_entry(zf: zipfile.ZipFile, name: str, columns: list[str], batches: Iterable[Any]) -> Iterator[None]:
    """Write one CSV file into zf, a batch of rows at a time (yields after each)."""
    with zf.open(name, "w", force_zip64=True) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        out = csv.writer(text)
        out.writerow(columns)
        for batch in batches:
            out.writerows(batch)
            text.flush()
            yield
        text.flush()
        text.detach()  # (zf closes the entry itself)
    yield


# ---- forgetting -----------------------------------------------------------------


def forget(store: Store, dev: str, gone: Iterable[Gone], now: float) -> dict[str, int]:
    """Delete everything stored about dev in one transaction, and mark it
    forgotten; each rollout it was a member of counts it as gone says
    (RolloutService.gone). The rows removed (or stripped of dev) per table."""
    removed: dict[str, int] = {}
    args = {"dev": dev, "since": None}
    with store.transaction():
        removed["rollout_members"] = RolloutTable(store).forget(dev, gone)
        for t in TABLES:
            if t.forget == "delete":
                removed[t.name] = store.db.execute(
                    f"DELETE FROM {t.name} WHERE {_where(t, store.db)}", args
                ).rowcount
            elif t.forget not in ("keep", "rollouts"):
                removed[t.name] = store.db.execute(t.forget, args).rowcount
        store.db.execute(upsert("device_forgotten", ("device", "at"), ("device",)), (dev, now))
    return {name: n for name, n in removed.items() if n}
