"""The gateway's database, SQLite or PostgreSQL, behind the one interface
the store modules use, the part of sqlite3's they always used:
`execute(sql, params)` gives a cursor (`fetchone`, `fetchall`, `rowcount`,
iteration) whose rows are read by column name or index; `script(sql)` runs
statements without parameters; `in_transaction`; `close()`. Autocommit: a
transaction is an explicit BEGIN ... COMMIT, as the modules write them.

SQL is written once, in what both engines take alike: `?` placeholders,
upserts as `INSERT ... ON CONFLICT (...) DO UPDATE` or `DO NOTHING`,
`"window"` and `"left"` quoted (reserved words in PostgreSQL). What differs
the Database says: its `kind`, the column types of a schema (`ddl`), the
tables it holds, JSON paths (`json_present`, `json_path`) and the scalar
`greatest`. Parameters are a sequence for `?`, or a mapping for `:name`.

SQLite is a file (the default, nothing to configure); PostgreSQL is a
`postgresql://` URL (psycopg 3).
"""

from __future__ import annotations

import functools
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import psycopg
import psycopg.errors
import psycopg.rows

# what a caller catches, whichever engine raised it
Error = (sqlite3.Error, psycopg.Error)
IntegrityError = (sqlite3.IntegrityError, psycopg.errors.IntegrityError)
OperationalError = (sqlite3.OperationalError, psycopg.OperationalError)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchmany(self, size: int) -> list[Any]: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


def is_url(where: str | Path) -> bool:
    """Whether where names a PostgreSQL database (not an SQLite file)."""
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """A database URL as logs and errors show it: without its password
    (in its user part, or as a password= parameter)."""
    url = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


class Database:
    """One connection. kind: "sqlite" or "postgresql"."""

    kind = ""
    name = ""  # the file, or the URL without its password

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def insert_many(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """INSERT rows of columns into table: the fastest way the engine has."""
        marks = ", ".join("?" * len(columns))
        self.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows as plain tuples (many rows: no names to build)."""
        raise NotImplementedError

    def plain(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Cursor:
        """A cursor whose rows are plain tuples, read a batch at a time (fetchmany)."""
        raise NotImplementedError

    snapshot = "BEGIN"  # a transaction that reads the database as it is when it begins
    # begin_exclusive() in a script (script() takes no parameters): the schema's upgrades
    exclusive_script = "BEGIN IMMEDIATE;"

    def begin_exclusive(self) -> None:
        """Begin a transaction that reads, then writes on what it read, as
        if no other such transaction ran meanwhile (another waits for it)."""
        self.execute("BEGIN IMMEDIATE")

    def greatest(self, a: str, b: str) -> str:
        """An SQL expression: the larger of two."""
        raise NotImplementedError

    def script(self, sql: str) -> None:
        """Run statements that take no parameters, one after another."""
        raise NotImplementedError

    @property
    def in_transaction(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def tables(self) -> set[str]:
        raise NotImplementedError

    def columns(self, table: str) -> set[str]:
        """The names of a table's columns."""
        raise NotImplementedError

    def ddl(self, sql: str) -> str:
        """A schema script in this engine's column types."""
        return sql

    def json_present(self, column: str) -> str:
        """An SQL test with one placeholder, for a json_path(): whether the
        JSON text in column holds a value there (JSON null included)."""
        raise NotImplementedError

    def json_path(self, keys: Sequence[str]) -> Any:
        """The parameter json_present() takes for the value at keys."""
        raise NotImplementedError

    def json_has_key(self, column: str, member: str) -> str:
        """An SQL test with one placeholder, a key: whether the object at
        member (a name) of the JSON text in column has that key."""
        raise NotImplementedError

    def json_text(self, text: str) -> str:
        """JSON text as this engine's JSON functions can read it."""
        return text

    def kept(self, value: Any) -> Any:
        """A value as this engine keeps it, and so reads it back."""
        return value


BUSY_S = 5.0  # how long SQLite waits for another connection's lock


class SqliteDatabase(Database):
    kind = "sqlite"

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.name = str(path)
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            self.db = sqlite3.connect(path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_S * 1000)}")
        if not readonly:
            self._wal()
            self.db.execute("PRAGMA synchronous = NORMAL")

    def _wal(self) -> None:
        """Put the file in WAL mode (kept in it). The change takes the file's
        lock and does not wait for it as other statements do: a process
        opening a new database while another does tries again, up to the
        busy timeout."""
        deadline = time.monotonic() + BUSY_S
        while True:
            try:
                self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Cursor:
        return self.db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)

    def tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.plain(sql, params).fetchall()

    def plain(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Cursor:
        cur = self.db.cursor()
        cur.row_factory = None
        return cur.execute(sql, params)

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})"

    def script(self, sql: str) -> None:
        self.db.executescript(sql)

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def close(self) -> None:
        self.db.close()

    def tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def columns(self, table: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM pragma_table_info(?)", (table,))}

    def json_present(self, column: str) -> str:
        return f"json_type({column}, ?) IS NOT NULL"

    def json_path(self, keys: Sequence[str]) -> Any:
        return "$." + ".".join(f'"{k}"' for k in keys)

    def json_has_key(self, column: str, member: str) -> str:
        return f"EXISTS (SELECT 1 FROM json_each({column}, '$.{member}') WHERE key = ?)"


class Row:
    """A row read by column name or by index, as sqlite3.Row is."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


STATEMENT_S = 60  # a PostgreSQL statement running longer is cancelled
_EXCLUSIVE_LOCK = 0x70625F6578  # the advisory lock of begin_exclusive() ("pb_ex")
ROWID = "rowid"  # PostgreSQL's stand-in for SQLite's rowid: every table's first column


def _rows(cursor: psycopg.Cursor[Any]) -> psycopg.rows.RowMaker[Row]:
    names = [c.name for c in cursor.description or ()]
    if ROWID in names:
        # (SELECT * of a table: the stand-in is not one of its columns)
        skip = names.index(ROWID)
        index = {n: i for i, n in enumerate(names[:skip] + names[skip + 1 :])}
        return lambda values: Row(values[:skip] + values[skip + 1 :], index)
    index = {n: i for i, n in enumerate(names)}
    return lambda values: Row(values, index)


# every table gains a rowid first, numbering its rows in the order they came, as
# SQLite's does (what ORDER BY rowid asks for); a row read leaves it out
_TABLE = re.compile(r"(CREATE TABLE (?:IF NOT EXISTS )?\w+ \()")
_TYPES = [
    (_TABLE, rf"\1\n    {ROWID} BIGINT GENERATED ALWAYS AS IDENTITY,"),
    # (what SQLite's schemas say, what PostgreSQL's say): rowid aliases become identities
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]


_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # \u0000 in JSON text (not \\u0000)
_NAMED = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """sql with its placeholders as psycopg's: ? as %s, :name as %(name)s
    (none is inside a quoted literal or name: the store writes values as
    parameters), and a literal % doubled."""
    out = []
    quote = ""
    i = 0
    while i < len(sql):
        ch = sql[i]
        named = _NAMED.match(sql, i) if ch == ":" and not quote and sql[i - 1 : i] != ":" else None
        if not quote and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = len(sql) if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))  # (a comment: nothing in it is a placeholder)
            i = end
            continue
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        elif named is not None:
            out.append(f"%({named.group(1)})s")
            i = named.end()
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _pg_value(p: Any) -> Any:
    if isinstance(p, bool):
        return int(p)  # as SQLite stores it (the columns are BIGINT)
    if isinstance(p, str) and "\x00" in p:
        # PostgreSQL's text cannot hold U+0000, which SQLite's can: a device's
        # words that carry one are kept with U+FFFD in its place, not refused
        return p.replace("\x00", "\ufffd")
    return p


def _pg_params(params: Sequence[Any] | Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
    if isinstance(params, Mapping):
        return {k: _pg_value(p) for k, p in params.items()}
    return [_pg_value(p) for p in params]


# how every connection of the gateway's to PostgreSQL is made: a statement that runs
# past STATEMENT_S is cancelled, a server gone silent is found by TCP keepalives
CONNECTION: dict[str, Any] = {
    "autocommit": True,
    "connect_timeout": 10,
    "options": f"-c statement_timeout={STATEMENT_S * 1000}",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class PostgresDatabase(Database):
    kind = "postgresql"

    def __init__(self, url: str, readonly: bool = False) -> None:
        self.name = redacted(url)
        self.url = url
        self.readonly = readonly
        self._cursors = 0
        self._began = False  # a BEGIN sent, its COMMIT or ROLLBACK not yet
        self.db = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection: a statement that runs past STATEMENT_S is cancelled, and
        a server gone silent is found by TCP keepalives, so that the gateway's
        loop is never held by the database for longer."""
        db = psycopg.connect(self.url, **CONNECTION)
        row = db.execute("SHOW server_encoding").fetchone()
        # (a SQL_ASCII database's client hands text over as bytes)
        encoding = "?" if row is None else row[0].decode() if isinstance(row[0], bytes) else str(row[0])
        if encoding.upper() != "UTF8":
            db.close()
            raise psycopg.NotSupportedError(
                f"the database's encoding is {encoding}, not UTF8: make it with createdb -E UTF8 -T template0"
            )
        if self.readonly:
            db.execute("SET default_transaction_read_only = on")
        return db

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, made again if it was lost (a server restarted, a
        session ended) while no transaction was under way: the statement that
        found it lost failed, the next one runs. Within a transaction the loss
        is the transaction's, which fails to its end (ROLLBACK)."""
        if self.db.closed or self.db.broken:
            if self._began:
                raise psycopg.OperationalError("the connection to the database was lost within a transaction")
            self.db.close()
            self.db = self._connect()
        return self.db

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Cursor:
        word = sql.split(None, 1)[0].upper() if sql else ""
        if word in ("COMMIT", "ROLLBACK"):
            began, self._began = self._began, False
            if word == "ROLLBACK" and (self.db.closed or self.db.broken):
                return self._live().cursor()  # (the transaction went with the connection)
            if not began and word == "COMMIT" and (self.db.closed or self.db.broken):
                raise psycopg.OperationalError("the connection to the database was lost")
        cur = self._live().cursor(row_factory=_rows)
        cur.execute(_pg_sql(sql).encode(), _pg_params(params))
        if word == "BEGIN":
            self._began = True
        return cur

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._live().cursor() as cur:
            cur.executemany(_pg_sql(sql).encode(), [_pg_params(r) for r in rows])

    def insert_many(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        # COPY: a fraction of the cost of INSERTs, row for row
        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with self._live().cursor() as cur, cur.copy(sql) as copy:
            for r in rows:
                copy.write_row([_pg_value(p) for p in r])

    def tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._live().cursor() as cur:
            return cur.execute(_pg_sql(sql).encode(), _pg_params(params)).fetchall()

    def plain(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Cursor:
        db = self._live()
        if self.in_transaction:
            # a cursor of the server's, read a batch at a time (it lives in a transaction)
            self._cursors += 1
            cur: psycopg.Cursor[Any] = db.cursor(name=f"pb_plain_{self._cursors}")
        else:
            cur = db.cursor()
        cur.execute(_pg_sql(sql).encode(), _pg_params(params))
        return cur

    snapshot = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    exclusive_script = f"BEGIN; SELECT pg_advisory_xact_lock({_EXCLUSIVE_LOCK});"

    def begin_exclusive(self) -> None:
        # as SQLite's BEGIN IMMEDIATE: one such transaction at a time, the others
        # wait (a lock held to its end), never a serialization failure to retry
        self.execute("BEGIN")
        self.execute("SELECT pg_advisory_xact_lock(?)", (_EXCLUSIVE_LOCK,))

    def greatest(self, a: str, b: str) -> str:
        return f"greatest({a}, {b})"

    def script(self, sql: str) -> None:
        self._live().execute(sql.encode())  # (bytes: no placeholders; several statements at once)

    @property
    def in_transaction(self) -> bool:
        if self.db.closed or self.db.broken:
            return self._began
        return self.db.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.db.close()

    def tables(self) -> set[str]:
        rows = self.db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        return {r[0] for r in rows}

    def columns(self, table: str) -> set[str]:
        rows = self.db.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
        return {r[0] for r in rows}

    def ddl(self, sql: str) -> str:
        for pattern, replacement in _TYPES:
            sql = pattern.sub(replacement, sql)
        return sql

    # (JSON text the store wrote with json_text: no \u0000, which these functions refuse)
    def json_present(self, column: str) -> str:
        return f"(({column})::json #> ?) IS NOT NULL"

    def json_path(self, keys: Sequence[str]) -> Any:
        return list(keys)  # (a text[])

    def kept(self, value: Any) -> Any:
        return _pg_value(value) if isinstance(value, str) else value

    def json_text(self, text: str) -> str:
        # PostgreSQL's JSON functions refuse \u0000 (text cannot hold it): a
        # device's U+0000 is kept as U+FFFD, as in a text column
        return _JSON_NUL.sub(r"\1\\ufffd", text) if "\\u0000" in text else text

    def json_has_key(self, column: str, member: str) -> str:
        inner = f"({column})::json -> '{member}'"
        keys = f"json_object_keys(CASE WHEN json_typeof({inner}) = 'object' THEN {inner} END)"
        return f"EXISTS (SELECT 1 FROM {keys} AS k WHERE k = ?)"


def upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """INSERT of a row of columns (?-placeholders, in order) that replaces the
    row with the same key, in what both engines take."""
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    keys = ", ".join(f'"{c}"' for c in key)
    rest = [c for c in columns if c not in key]
    action = "DO UPDATE SET " + ", ".join(f'"{c}" = excluded."{c}"' for c in rest) if rest else "DO NOTHING"
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({keys}) {action}"


def connect(where: str | Path, readonly: bool = False) -> Database:
    """The database at where: a postgresql:// URL, or an SQLite file's path.
    Raises the engine's error (one of Error) when it cannot be opened."""
    if is_url(where):
        return PostgresDatabase(str(where), readonly)
    return SqliteDatabase(Path(where), readonly)
