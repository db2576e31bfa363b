"""The broker's files as the gateway writes them (gateway/broker.py), on a
real Mosquitto."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import GATEWAY_USER, TlsListener, add_password, add_passwords, mosquitto_config
from gateway.errors import BrokerError

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


def test_a_tls_listener_beside_the_plain_one_or_instead_of_it(tmp_path: Path) -> None:
    tls = TlsListener(8883, tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    both = mosquitto_config(tmp_path / "both", 1883, tls=tls).conf.read_text().splitlines()
    assert both.index("listener 1883 127.0.0.1") < both.index("listener 8883 127.0.0.1")
    # a listener's settings follow its line: the client id is the user name on both
    assert both.count("use_username_as_clientid true") == 2
    after = both[both.index("listener 8883 127.0.0.1") :]
    for line in (f"cafile {tls.cafile}", f"certfile {tls.certfile}", f"keyfile {tls.keyfile}"):
        assert line in after
    assert "require_certificate false" in after and "tls_version tlsv1.2" in after
    only = mosquitto_config(tmp_path / "only", None, tls=tls).conf.read_text()
    assert "listener 1883" not in only and "listener 8883 127.0.0.1" in only
    with pytest.raises(BrokerError, match="needs a listener"):
        mosquitto_config(tmp_path / "none", None)


def test_what_a_fleet_says_while_the_gateway_is_away_waits_for_it(own_mosquitto: Mosquitto) -> None:
    """The gateway's persistent session keeps what devices say while it is
    away (or slower than a burst: a fleet's hellos and states at a broker's
    restart) far past Mosquitto's default 1000 messages; a limit in bytes
    bounds what one client can make the broker hold."""
    own_mosquitto.add_user("th-burst", "pw")
    gw = TestClient(own_mosquitto, GATEWAY_USER, GATEWAY_PASSWORD, client_id="gw", clean_session=False)
    gw.c.subscribe("pb/+/telemetry", 1)
    time.sleep(0.3)
    gw.close()
    dev = TestClient(own_mosquitto, "th-burst", "pw", client_id="th-burst")
    for seq in range(5000):
        info = dev.c.publish("pb/th-burst/telemetry", f'{{"seq":{seq}}}', qos=1)
    info.wait_for_publish(30)
    dev.close()
    gw = TestClient(own_mosquitto, GATEWAY_USER, GATEWAY_PASSWORD, client_id="gw", clean_session=False)
    got = 0
    with contextlib.suppress(queue.Empty):
        while got < 5000:
            gw.received.get(timeout=5)
            got += 1
    gw.close()
    assert got == 5000
    conf = own_mosquitto.files.conf.read_text()
    assert "max_queued_bytes 33554432" in conf
