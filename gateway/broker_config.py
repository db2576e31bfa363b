"""The fleet's Mosquitto, configured from the registry (docs/security.md 11).

`write` makes a folder Mosquitto runs from: mosquitto.conf, a password file
with the gateway's account and every registered device that is not revoked
(the hashes provisioning recorded: no device password is ever here), and the
ACL file of gateway/broker.py with a block denying every topic to each
revoked device. `refresh` writes the password and ACL files again, each
replaced in one step, and `BrokerRunner` reloads a running Mosquitto
(SIGHUP) whenever the registry changes: a device provisioned is let in, a
revoked one is refused at its next connection, and while it stays connected
nothing it publishes is passed on and nothing is delivered to it.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from firmware.pb.ids import valid_id

from .broker import (
    GATEWAY_USER,
    HA_USER,
    MosquittoFiles,
    MosquittoProcess,
    TlsListener,
    acl_text,
    mosquitto_config,
)
from .errors import ConfigError
from .registry import Registered, Registry
from .store import Store

log = logging.getLogger(__name__)

SECRET_FILES = {GATEWAY_USER: "gateway.password", HA_USER: "homeassistant.password"}
# the account of the worker NAME of a pool of gateways (gateway/pool.py), with the gateway's
# rights: a '.' is in no device id, so none can be a device's
WORKER_PREFIX = f"{GATEWAY_USER}."


def worker_user(name: str) -> str:
    return WORKER_PREFIX + name


def check_workers(names: Sequence[str]) -> None:
    """Raises ConfigError for a worker's name that is not a device-style id."""
    for name in names:
        if not valid_id(name):
            raise ConfigError(f"a worker's name is a device-style id (a-z, 0-9, '-', '_'), not {name!r}")


@dataclass(frozen=True)
class FleetBroker:
    files: MosquittoFiles
    host: str
    port: int
    gateway_password: str
    homeassistant_password: str | None
    devices: int  # let in
    revoked: int
    tls: TlsListener | None = None  # its TLS listener, on host too
    workers: dict[str, str] = field(default_factory=dict)  # a pool's worker -> its account's password


def secret(directory: Path, user: str) -> str:
    """The account's password, kept in the folder, made the first time."""
    password = _secret(directory, user, True)
    assert password is not None
    return password


def _secret(directory: Path, user: str, create: bool) -> str | None:
    """The account's password, kept in the folder (0600), made the first time."""
    path = directory / SECRET_FILES.get(user, f"{user}.password")
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    password = secrets.token_urlsafe(24)
    path.touch(0o600)
    path.write_text(password + "\n")
    return password


def write(
    directory: Path,
    store: Store,
    host: str,
    port: int,
    *,
    homeassistant: bool = False,
    run_as: str | None = None,
    extra: str = "",
    tls: TlsListener | None = None,
    workers: Sequence[str] = (),
) -> FleetBroker:
    """Write the fleet's broker configuration into directory (made if
    missing; the accounts' passwords it holds are kept from one writing to
    the next). tls: a TLS listener beside the plain one (gateway/ca.py
    tls_listener); workers: the names of a pool's workers, an account each
    (gateway.NAME) with the gateway's rights. Raises ConfigError."""
    check_workers(workers)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"cannot write the broker's configuration into {directory}: {exc}") from exc
    gw = _secret(directory, GATEWAY_USER, True)
    ha = _secret(directory, HA_USER, homeassistant)
    assert gw is not None
    users = {GATEWAY_USER: gw} | ({HA_USER: ha} if ha else {})
    pool = {name: _secret(directory, worker_user(name), True) or "" for name in dict.fromkeys(workers)}
    users |= {worker_user(name): password for name, password in pool.items()}
    files = mosquitto_config(
        directory,
        port,
        host,
        users=users,
        persistence=True,
        run_as=run_as or getpass.getuser(),
        extra=extra,
        tls=tls,
    )
    accounts = _accounts(files)
    registered = Registry(store).all()
    refresh(files, registered, accounts)
    revoked = sum(r.revoked is not None for r in registered)
    return FleetBroker(files, host, port, gw, ha, len(registered) - revoked, revoked, tls, pool)


def _accounts(files: MosquittoFiles) -> dict[str, str]:
    """The broker's own accounts' lines of the password file (the gateway's,
    its pool's workers', Home Assistant's)."""
    out = {}
    for line in files.passwords.read_text().splitlines():
        user = line.split(":", 1)[0]
        if user in SECRET_FILES or user.startswith(WORKER_PREFIX):
            out[user] = line
    return out


def refresh(files: MosquittoFiles, registered: list[Registered], accounts: dict[str, str]) -> None:
    """Write the password and ACL files for these devices, each replaced in
    one step (a reload meanwhile reads the old file or the new, never a part)."""
    lines = list(accounts.values())
    lines += [f"{r.device}:{r.password_hash}" for r in registered if r.revoked is None]
    _replace(files.passwords, "\n".join(lines) + "\n")
    acl = acl_text(
        operators=[u for u in accounts if u.startswith(WORKER_PREFIX)],
        homeassistant=HA_USER if HA_USER in accounts else None,
    )
    # (a user's own lines are read before the patterns: a deny here wins over pb/%u/...)
    deny = [f"user {r.device}\ntopic deny #\n" for r in registered if r.revoked is not None]
    _replace(files.acl, "\n".join(deny) + ("\n" if deny else "") + acl)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    if path.exists():
        shutil.copymode(path, tmp)
    tmp.replace(path)


class BrokerRunner:
    """Mosquitto run from a fleet folder, reloaded when the registry changes.
    `say`: where each change is told (the command line prints it)."""

    def __init__(
        self, fleet: FleetBroker, store: Store, say: Callable[[str], None] = print, poll_s: float = 1.0
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.say = say
        self.poll_s = poll_s
        self.process = MosquittoProcess(
            fleet.files.conf, fleet.port, fleet.files.conf.parent / "mosquitto.log"
        )
        self.reloads = 0
        self._generation = Registry(store).generation()
        self._seen = {r.device: r.revoked for r in Registry(store).all()}

    def start(self) -> None:
        """Raises BrokerError if Mosquitto does not start."""
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def check(self) -> bool:
        """Reload the broker if the registry changed since the last look;
        whether it did."""
        registry = Registry(self.store)
        generation = registry.generation()
        if generation == self._generation:
            return False
        registered = registry.all()
        refresh(self.fleet.files, registered, _accounts(self.fleet.files))
        proc = self.process.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGHUP)
        self._generation = generation
        self.reloads += 1
        now = {r.device: r.revoked for r in registered}
        for dev, revoked in sorted(now.items()):
            if dev not in self._seen:
                self.say(f"{dev}: registered, let in" if revoked is None else f"{dev}: registered, revoked")
            elif (revoked is None) != (self._seen[dev] is None):
                self.say(f"{dev}: revoked, cut off" if revoked is not None else f"{dev}: restored, let in")
        self._seen = now
        return True

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Watch the registry until stop() is true or Mosquitto ends; the
        broker is stopped on the way out. Raises BrokerError if it died."""
        from .errors import BrokerError

        self.start()
        try:
            while not stop():
                time.sleep(self.poll_s)
                try:
                    self.check()
                except Exception:  # (the database busy, a file not written: the next look tries again)
                    log.exception("could not apply the registry's change to the broker")
                proc = self.process.proc
                if proc is not None and proc.poll() is not None:
                    tail = self.process.log.read_text()[-2000:] if self.process.log.exists() else ""
                    raise BrokerError(f"mosquitto ended (exit {proc.returncode}): {tail}")
        finally:
            self.stop()
