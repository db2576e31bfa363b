"""The broker's files as the gateway writes them (gateway/broker.py), on a
real Mosquitto."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from gateway.broker import GATEWAY_USER, add_password, add_passwords

from ..support.mosquitto import GATEWAY_PASSWORD, Mosquitto
from ..support.mqtt import TestClient


def test_adding_users_while_the_broker_reloads_disconnects_no_one(own_mosquitto: Mosquitto) -> None:
    # Mosquitto checks every connected client against the password file it
    # reloads: one read half-written would disconnect those it did not see
    # (a fleet's worth of users makes each rewrite, and each read, long)
    add_passwords(own_mosquitto.files.passwords, {f"th-{i:04d}": "x" for i in range(3000)})
    own_mosquitto.add_user("dev-00", "secret-0")
    gw = TestClient(own_mosquitto, GATEWAY_USER, GATEWAY_PASSWORD)  # (the one client on this broker)
    drops: list[Any] = []
    gw.c.on_disconnect = lambda *args: drops.append(args)
    assert own_mosquitto.proc is not None
    pid = own_mosquitto.proc.pid
    stop = threading.Event()

    def reload() -> None:
        while not stop.is_set():
            os.kill(pid, signal.SIGHUP)
            time.sleep(0.001)

    hup = threading.Thread(target=reload)
    hup.start()
    try:
        for i in range(1, 31):
            add_password(own_mosquitto.files.passwords, f"dev-{i:02d}", f"secret-{i}")
    finally:
        stop.set()
        hup.join()
    os.kill(pid, signal.SIGHUP)
    time.sleep(0.3)
    assert drops == []
    # because the file is replaced, not rewritten: what a reader opened stays whole
    passwords = own_mosquitto.files.passwords
    text = passwords.read_text()
    with passwords.open() as opened:
        add_password(passwords, "dev-31", "secret-31")
        assert opened.read() == text
    assert "dev-31:" in passwords.read_text()
    assert own_mosquitto.try_connect("dev-30", "secret-30") == 0
    assert own_mosquitto.try_connect("dev-30", "secret-29") != 0
    gw.close()
