"""Brokers: URLs, the embedded broker, and Mosquitto configurations.

Production and tests run Mosquitto with per-device credentials and ACLs that
keep each device inside its own topic subtree (``mosquitto_config``). With no
broker given, the gateway starts an embedded amqtt broker on loopback so one
command runs the whole system on a laptop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .errors import BrokerError, ConfigError
from .homeassistant import BRIDGE, COMMAND_FILTER, DISCOVERY

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtt[s]://[user[:password]@]host[:port]``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Raises ConfigError for anything but an mqtt:// or mqtts:// URL."""
        if "://" not in url:
            url = "mqtt://" + url
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise ConfigError(f"broker URL {url!r}: scheme must be mqtt or mqtts")
        if not parts.hostname:
            raise ConfigError(f"broker URL {url!r} has no host")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise ConfigError(f"broker URL {url!r}: {exc}") from exc
        return cls(
            host=parts.hostname,
            port=port,
            tls=parts.scheme == "mqtts",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def with_credentials(self, username: str | None, password: str | None) -> BrokerUrl:
        return replace(self, username=username, password=password)

    def url(self, secret: bool = False) -> str:
        """The URL; the password shows only with secret=True."""
        auth = ""
        if self.username:
            auth = quote(self.username, safe="")
            if self.password:
                auth += ":" + (quote(self.password, safe="") if secret else "***")
            auth += "@"
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.url()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """An in-process amqtt broker on loopback, for demos and laptops.

    It speaks MQTT 3.1.1 only and allows anonymous clients, so it binds to
    loopback unless told otherwise; receivers must check the topic of every
    message (amqtt has been seen delivering retained messages too widely).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker: Any = None

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl(self.host, self.port)

    async def start(self) -> BrokerUrl:
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except Exception as exc:  # amqtt raises its own BrokerError and OSError
            raise BrokerError(f"embedded broker could not listen on {self.host}:{self.port}: {exc}") from exc
        log.debug("embedded broker on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._broker.shutdown(), 5)
            self._broker = None

    async def __aenter__(self) -> BrokerUrl:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ---- Mosquitto -----------------------------------------------------------

GATEWAY_USER = "gateway"

# What a device may do, relative to its own subtree (pb/<username>/...): each
# kind only in the direction the protocol gives it. A device that could write
# its own ota/offer or ota/chunk could feed itself an update the gateway never
# offered it, or its own ota/time a time it would have to refuse; one that
# could read its ota/req would see nothing it needs.
DEVICE_WRITES = ("hello", "state", "telemetry", "reply", "event", "ota/req", "ota/status")
DEVICE_READS = ("cmd", "ota/offer", "ota/chunk", "ota/root", "ota/time")


# Home Assistant's account (docs/protocol.md 14): it reads the discovery configs
# and the bridge's topics, and writes only the bridge's commands, which the
# gateway checks before any reaches a device. Its explicit deny comes first:
# the device patterns below would otherwise let any user, this one too, write
# pb/<its name>/hello and read pb/<its name>/cmd.
HA_USER = "homeassistant"
HA_TOPICS = (
    "topic deny pb/#",
    f"topic read {DISCOVERY}/#",
    f"topic read {BRIDGE}/#",
    f"topic write {COMMAND_FILTER}",
)
GATEWAY_TOPICS = ("pb/#", f"{DISCOVERY}/#", f"{BRIDGE}/#")  # the gateway's own: the devices and the bridge


def acl_text(
    gateway_user: str = GATEWAY_USER, operators: Sequence[str] = (), homeassistant: str | None = HA_USER
) -> str:
    """A Mosquitto ACL file: the gateway sees the whole tree, each device only
    its own subtree, and only in the direction the protocol gives it, Home
    Assistant's account (None: none) the bridge's topics. operators: further
    accounts with the gateway's rights (each its own)."""
    lines = []
    for user in (gateway_user, *operators):
        lines += [f"user {user}", *(f"topic readwrite {t}" for t in GATEWAY_TOPICS), ""]
    if homeassistant is not None:
        lines += [f"user {homeassistant}", *HA_TOPICS, ""]
    lines += [f"pattern write pb/%u/{t}" for t in DEVICE_WRITES]
    lines += [f"pattern read pb/%u/{t}" for t in DEVICE_READS]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TlsListener:
    """A Mosquitto listener for mqtts://: its port, the CA that signed the
    server certificate (gateway/ca.py makes all three), the certificate and
    its key. Clients need no certificate of their own (they log in with a
    password, as on the plain listener); TLS 1.2 at least."""

    port: int
    cafile: Path
    certfile: Path
    keyfile: Path

    def lines(self, host: str) -> list[str]:
        return [
            f"listener {self.port} {host}",
            "use_username_as_clientid true",
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            "require_certificate false",
            "tls_version tlsv1.2",
        ]


@dataclass(frozen=True)
class MosquittoFiles:
    conf: Path
    passwords: Path
    acl: Path


def mosquitto_binary() -> str:
    """The mosquitto executable. Raises BrokerError if it is not installed."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise BrokerError("mosquitto not found: install the mosquitto package")
    return exe


def spawn(argv: list[str], log: Path, preexec_fn: Any = None) -> subprocess.Popen[bytes]:
    """A server run in the background, its output appended to log."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn
        )


def end(proc: subprocess.Popen[bytes] | None, wait_s: float) -> None:
    """Stop a server (SIGTERM), killed if it has not ended within wait_s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MosquittoProcess:
    """Mosquitto run from a configuration file, listening on loopback at
    port. start() returns once it accepts connections; restart() is the
    broker-restart fault of tests and the simulator. preexec_fn: run in the
    child before exec (limits, death with the parent)."""

    def __init__(self, conf: Path, port: int, log: Path, preexec_fn: Any = None) -> None:
        self.conf = conf
        self.port = port
        self.log = log
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Raises BrokerError if it does not listen within 10 s."""
        self.proc = spawn([mosquitto_binary(), "-c", str(self.conf)], self.log, self.preexec_fn)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BrokerError(f"mosquitto did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        end(self.proc, 5)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


def password_line(username: str, password: str, iterations: int = 101) -> str:
    """One line of a Mosquitto (2.x) password file: PBKDF2-SHA512 with a
    random salt, as mosquitto_passwd writes it, without running it."""
    import base64
    import hashlib
    import os

    if ":" in username or "\n" in username:
        raise BrokerError(f"user name {username!r} cannot be in a password file")
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    b64 = base64.b64encode
    return f"{username}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def add_passwords(passwords: Path, users: dict[str, str]) -> None:
    """Add or replace many users in a Mosquitto password file at once, in
    one step (a fleet's worth: mosquitto_passwd would run once per user and
    rewrite the file in place each time)."""
    lines = passwords.read_text().splitlines() if passwords.exists() else []
    kept = [line for line in lines if line.split(":", 1)[0] not in users]
    kept += [password_line(u, p) for u, p in users.items()]
    tmp = passwords.with_name(passwords.name + ".tmp")
    tmp.write_text("\n".join(kept) + "\n")
    tmp.chmod(0o600)
    if passwords.exists():
        shutil.copymode(passwords, tmp)
        with contextlib.suppress(OSError):
            st = passwords.stat()
            os.chown(tmp, st.st_uid, st.st_gid)
    tmp.replace(passwords)


def add_password(passwords: Path, username: str, password: str) -> None:
    """Add or replace one user in a Mosquitto password file (hashed). The
    file is replaced in one step: a broker reloading it meanwhile (SIGHUP)
    reads the old users or the new, never a part, which would disconnect
    every client whose user it did not see."""
    add_passwords(passwords, {username: password})


MAX_QUEUED = 100_000  # messages waiting for one client
MAX_QUEUED_BYTES = 32 * 1024 * 1024  # ... and their bytes


def mosquitto_config(
    directory: Path,
    port: int | None,
    host: str = "127.0.0.1",
    users: dict[str, str] | None = None,
    persistence: bool = False,
    max_packet: int = 65536,
    run_as: str = "mosquitto",
    extra: str = "",
    operators: Sequence[str] = (),
    tls: TlsListener | None = None,
) -> MosquittoFiles:
    """Write mosquitto.conf, a password file and an ACL file into directory.

    port: the plain MQTT listener's (None: none); tls: a TLS listener beside
    it or instead of it, on the same host. Mosquitto reads the certificate
    and its key as the user run_as.

    users maps user name to password; the gateway's user is GATEWAY_USER,
    Home Assistant's HA_USER (give it a password to let Home Assistant in:
    docs/protocol.md 14), and every other user is a device whose user name
    is its device id. Started
    as root, Mosquitto switches to the user run_as, who must be able to read
    the files. operators: users of users with the gateway's rights besides
    GATEWAY_USER (a second gateway worker, a monitor), each its own account.

    Every client's id is its user name (use_username_as_clientid, which
    Mosquitto 2.0 honours only as a listener setting, after the listener
    line): a device cannot connect as another device's client id or the
    gateway's, which would disconnect it, fire its last will or take its
    persistent session. So each account is one connection: a second
    connection with the same user name replaces the first.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = MosquittoFiles(directory / "mosquitto.conf", directory / "passwords", directory / "acl")
    files.passwords.write_text("")
    files.passwords.chmod(0o600)
    add_passwords(files.passwords, users or {})
    files.acl.write_text(acl_text(operators=operators))
    if port is None and tls is None:
        raise BrokerError("a Mosquitto configuration needs a listener: a port, TLS or both")
    lines = ["per_listener_settings false"]
    if port is not None:
        lines += [f"listener {port} {host}", "use_username_as_clientid true"]
    if tls is not None:
        lines += tls.lines(host)
    lines += [
        "allow_anonymous false",
        f"password_file {files.passwords}",
        f"acl_file {files.acl}",
        f"max_packet_size {max_packet}",
        f"user {run_as}",
        # what waits for a client (beyond the 20 in flight): the gateway's persistent
        # session while it is away, and a whole fleet's hellos and states when it
        # comes back (a thousand would drop the rest); and a bound in bytes
        # (security.md 7.9: what it does not bound)
        f"max_queued_messages {MAX_QUEUED}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        # small messages back and forth (update chunks): no Nagle delay
        "set_tcp_nodelay true",
        f"persistence {'true' if persistence else 'false'}",
    ]
    if persistence:
        lines.append(f"persistence_location {directory}/")
    lines += ["log_dest stderr", "log_type error", "log_type warning", "log_type notice"]
    if extra:
        lines.append(extra)
    files.conf.write_text("\n".join(lines) + "\n")
    return files
