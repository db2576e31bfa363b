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


def db_of(args: object) -> Path:
    """The database a command names with --db, else the default one."""
    given = getattr(args, "db", None)
    return Path(given) if given else default_db()
