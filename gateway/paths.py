"""Where the gateway keeps its state by default."""

import os
from pathlib import Path


def home() -> Path:
    """$PERMABETA_HOME, else $XDG_STATE_HOME/permabeta, else ~/.local/state/permabeta."""
    if env := os.environ.get("PERMABETA_HOME"):
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "permabeta"


def default_db() -> Path:
    return home() / "gateway.db"


def firmware_dir() -> Path:
    """The device filesystem shipped with this package (boot.py, pb/, features/, boards/)."""
    import firmware

    return Path(firmware.__file__).parent


def db_of(args: object) -> Path | str:
    """The database a command names with --db (a file, or a postgresql://
    URL), else the default one."""
    given = getattr(args, "db", None)
    if not given:
        return default_db()
    from .db import is_url

    return given if is_url(given) else Path(given)


def db_exists(db: Path | str) -> bool:
    """Whether there is a database there to open: an SQLite file, or a
    PostgreSQL database that holds tables (an empty one is the file not made
    yet: the first gateway or command that writes makes its tables; one that
    cannot be reached is said so by opening it)."""
    if isinstance(db, Path):
        return db.exists()
    from .db import Error, connect

    try:
        conn = connect(db, readonly=True)
    except Error:
        return True
    try:
        return bool(conn.tables())
    finally:
        conn.close()
