"""A real Mosquitto for tests: own config (passwords, ACLs) on a free
loopback port; users can be added while it runs; it can be restarted."""

from __future__ import annotations

import getpass
import os
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

from firmware.pb.net import mqtt
from gateway.broker import (
    GATEWAY_USER,
    BrokerUrl,
    MosquittoProcess,
    TlsListener,
    add_password,
    add_passwords,
    free_port,
    mosquitto_config,
)

GATEWAY_PASSWORD = "gateway-secret"
# Accounts with the gateway's rights, one for each gateway process or test
# client that watches or plays the gateway: a client's id is its user name,
# so two connections on one account would throw each other off.
OPERATORS = tuple(f"operator-{i}" for i in range(1024))


class Mosquitto(MosquittoProcess):
    """A broker of the tests' own: the product's configuration (passwords,
    ACLs) on a free loopback port; with tls, a TLS listener beside it."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        persistence: bool = False,
        tls: TlsListener | None = None,
    ) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.tls = tls
        self.files = mosquitto_config(
            directory,
            self.port,
            users={GATEWAY_USER: GATEWAY_PASSWORD, **dict.fromkeys(OPERATORS, GATEWAY_PASSWORD)},
            persistence=persistence,
            run_as=getpass.getuser(),
            operators=OPERATORS,
            tls=tls,
        )
        super().__init__(self.files.conf, self.port, directory / "mosquitto.log")
        self._users = threading.Lock()
        self._operators = iter(OPERATORS)

    @property
    def url(self) -> BrokerUrl:
        """The broker, without credentials (as a device is told)."""
        return BrokerUrl("127.0.0.1", self.port)

    @property
    def tls_url(self) -> BrokerUrl:
        """The TLS listener, without credentials (as a device is told)."""
        if self.tls is None:
            raise RuntimeError("this broker has no TLS listener")
        return BrokerUrl("127.0.0.1", self.tls.port, tls=True)

    def operator(self) -> tuple[str, str]:
        """(user, password) of an account with the gateway's rights that no
        other client of this broker has been given."""
        with self._users:
            user = next(self._operators, None)
        if user is None:
            raise RuntimeError(f"all {len(OPERATORS)} operator accounts are given out")
        return user, GATEWAY_PASSWORD

    @property
    def gateway_url(self) -> BrokerUrl:
        """Credentials for one gateway: an account of its own at every call."""
        return self.url.with_credentials(*self.operator())

    def add_user(self, username: str, password: str) -> None:
        """Add credentials; the running broker reloads them (SIGHUP), and this
        returns once they are accepted."""
        with self._users:  # one writer at a time: each rewrites the whole file
            add_password(self.files.passwords, username, password)
        self._reload_until_accepted(username, password)

    def _reload_until_accepted(self, username: str, password: str) -> None:
        # SIGHUP again every half second: a reload that read the file while
        # another thread was rewriting it did not see this user
        if self.proc is None or self.proc.poll() is not None:
            return
        deadline = time.monotonic() + 15
        next_hup = 0.0
        while True:
            if time.monotonic() >= next_hup:
                os.kill(self.proc.pid, signal.SIGHUP)
                next_hup = time.monotonic() + 0.5
                time.sleep(0.02)
            if self.try_connect(username, password) == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not accept the new user {username}")
            time.sleep(0.02)

    def add_users(self, users: dict[str, str]) -> None:
        """Add many credentials at once (one reload); returns once the last is accepted."""
        with self._users:
            add_passwords(self.files.passwords, users)
        if users:
            self._reload_until_accepted(*list(users.items())[-1])

    def try_connect(self, username: str | None, password: str | None, client_id: str = "") -> int:
        """CONNACK return code for a CONNECT with these credentials."""
        return connack(self.port, username, password, client_id)


def connack(
    port: int,
    username: str | None,
    password: str | None,
    client_id: str = "",
    context: ssl.SSLContext | None = None,
) -> int:
    """The CONNACK return code of a broker on loopback at port for a CONNECT
    with these credentials (0: accepted, 4: bad user name or password, 5: not
    authorised); with context, over TLS to 127.0.0.1."""
    client_id = client_id or f"probe-{time.monotonic_ns()}"
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        s = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        s.sendall(mqtt.connect(client_id, 10, True, username, password.encode() if password else None))
        data = s.recv(4)
        s.sendall(mqtt.disconnect())
    packets = mqtt.Decoder().feed(data)
    if not packets or packets[0][0] != mqtt.CONNACK:
        raise RuntimeError(f"no CONNACK from mosquitto: {data!r}")
    return int(packets[0][2])
