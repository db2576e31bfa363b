"""What `permabeta login` keeps (docs/protocol.md 10.1): the gateway's URL,
the account's token and what to trust the gateway's certificate by, in
$XDG_CONFIG_HOME/permabeta/credentials.json (default ~/.config/permabeta),
the folder 0700 and the file 0600 from the moment it exists."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

FILE_NAME = "credentials.json"


def config_dir() -> Path:
    """$XDG_CONFIG_HOME/permabeta, else ~/.config/permabeta."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "permabeta"


def credentials_path() -> Path:
    return config_dir() / FILE_NAME


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str
    account: str
    cafile: str | None = None  # a CA file to trust the gateway by, or ...
    cert: str | None = None  # ... its own certificate (PEM), pinned by its fingerprint
    fingerprint: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Credentials:
        """Raises ConfigError."""
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError as exc:
            raise ConfigError(f"{credentials_path()} is not one permabeta login wrote: {exc}") from exc


def save(c: Credentials) -> Path:
    """Write the credentials (replacing any). Raises ConfigError."""
    path = credentials_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.parent.chmod(0o700)
        tmp = path.with_name(FILE_NAME + ".tmp")
        tmp.unlink(missing_ok=True)  # (one left behind keeps its own mode: a new one is 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(c), f, indent=2)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    return path


def load() -> Credentials | None:
    """The credentials kept, or None. Raises ConfigError (unreadable, malformed)."""
    path = credentials_path()
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(d, dict):
        raise ConfigError(f"{path} is not one permabeta login wrote")
    return Credentials.from_dict(d)


def remove() -> bool:
    try:
        credentials_path().unlink()
    except FileNotFoundError:
        return False
    return True
