"""The fleet's broker, locked down by a command (gateway/broker_config.py,
docs/security.md 11), on a real Mosquitto run from what `permabeta broker
config` writes: devices registered at provisioning get in from their first
connection, with their own passwords only; anonymous clients, wrong
passwords and revoked devices are refused; a revoked device still connected
is cut off within seconds (nothing it publishes passes, nothing reaches it)
and is let back in by `devices restore`; `permabeta broker run` applies
each change made with the command line while it runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.broker import free_port
from gateway.broker_config import BrokerRunner, write
from gateway.errors import ConfigError
from gateway.registry import Registry
from gateway.store import Store

from ..support.cli import permabeta, run_cli
from ..support.mosquitto import connack
from ..support.mqtt import TestClient
from ..support.wait import wait_for

pytestmark = pytest.mark.slow

ACCEPTED, BAD_PASSWORD, NOT_AUTHORISED = 0, 4, 5


def provision(tmp: Path, db: Path | str, dev: str, password: str) -> None:
    """`permabeta provision` as a maker runs it, registering the device in db (no gateway runs there)."""
    out = permabeta(
        db,
        "provision",
        "--model",
        "thermostat",
        "--id",
        dev,
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--into",
        str(tmp / dev),
        "--password",
        password,
        "--source",
    )
    assert out.returncode == 0, out.stderr
    assert "registered with" in out.stdout
    assert not isinstance(db, Path) or password not in db.read_bytes().decode("latin-1")


class Port:
    def __init__(self, port: int) -> None:
        self.port = port


Fleet = tuple[BrokerRunner, Path, Port]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    db = tmp_path / "gw.db"
    provision(tmp_path, db, "th-1", "pw-one-" + "x" * 12)
    provision(tmp_path, db, "th-2", "pw-two-" + "y" * 12)
    port = free_port()
    store = Store(db)
    runner = BrokerRunner(write(tmp_path / "broker", store, "127.0.0.1", port), store, say=lambda _: None)
    runner.start()
    try:
        yield runner, db, Port(port)
    finally:
        runner.stop()
        store.close()


def test_only_registered_devices_get_in_with_their_own_password(
    fleet: tuple[BrokerRunner, Path, Port],
) -> None:
    runner, _, port = fleet
    p = port.port
    assert connack(p, "th-1", "pw-one-" + "x" * 12) == ACCEPTED
    assert connack(p, "th-2", "pw-two-" + "y" * 12) == ACCEPTED
    assert connack(p, None, None) == NOT_AUTHORISED  # anonymous
    assert connack(p, "th-1", "pw-two-" + "y" * 12) in (BAD_PASSWORD, NOT_AUTHORISED)  # another's password
    assert connack(p, "th-3", "whatever") in (BAD_PASSWORD, NOT_AUTHORISED)  # never provisioned
    gw = runner.fleet.gateway_password
    assert connack(p, "gateway", gw) == ACCEPTED and connack(p, "gateway", gw + "x") != ACCEPTED
    # the folder keeps no device's password, and its secrets are the owner's alone
    folder = runner.fleet.files.conf.parent
    assert "pw-one" not in runner.fleet.files.passwords.read_text()
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct((folder / "gateway.password").stat().st_mode & 0o777) == "0o600"


def test_a_revoked_device_is_cut_off_within_seconds_and_restored(
    fleet: tuple[BrokerRunner, Path, Port],
) -> None:
    runner, db, port = fleet
    watcher = TestClient(port, "gateway", runner.fleet.gateway_password, client_id="gateway")
    watcher.subscribe("pb/#")
    one = TestClient(port, "th-1", "pw-one-" + "x" * 12, client_id="th-1")
    two = TestClient(port, "th-2", "pw-two-" + "y" * 12, client_id="th-2")
    one.subscribe("pb/th-1/cmd")
    try:
        one.publish("pb/th-1/telemetry", b"before")
        two.publish("pb/th-2/telemetry", b"before")
        got: set[str] = set()
        wait_for(
            lambda: got.update(t for t, _, _ in watcher.messages(0.2)) or len(got) == 2, 5, what="both passed"
        )
        assert got == {"pb/th-1/telemetry", "pb/th-2/telemetry"}

        with Store(db) as other:  # (as `devices revoke --db` does, from another process)
            Registry(other).revoke("th-1", time.time())
        assert runner.check()  # what `broker run` does within its second
        # cut off: Mosquitto checks its clients again at the reload and drops it
        # (and were it still connected, the ACL denies it every topic)
        wait_for(lambda: not one.c.is_connected(), 5, what="th-1 cut off")
        wait_for(lambda: _passes_only_th2(two, watcher), 5, what="th-2's traffic")
        assert connack(port.port, "th-1", "pw-one-" + "x" * 12) in (BAD_PASSWORD, NOT_AUTHORISED)
        assert connack(port.port, "th-2", "pw-two-" + "y" * 12) == ACCEPTED  # the others are untouched

        with Store(db) as other:
            Registry(other).restore("th-1")
        assert runner.check()
        assert connack(port.port, "th-1", "pw-one-" + "x" * 12) == ACCEPTED
    finally:
        for c in (one, two, watcher):
            c.close()


def _passes_only_th2(two: TestClient, watcher: TestClient) -> bool:
    watcher.messages(0.05)
    two.publish("pb/th-2/telemetry", b"after")
    got: set[str] = set()
    deadline = time.monotonic() + 3
    while "pb/th-2/telemetry" not in got and time.monotonic() < deadline:
        got.update(t for t, _, _ in watcher.messages(0.2))
    assert "pb/th-2/telemetry" in got  # the broker passes the others' traffic all along
    got.update(t for t, _, _ in watcher.messages(0.3))
    return "pb/th-1/telemetry" not in got


@pytest.mark.long  # (slow: make long)
def test_broker_run_applies_the_command_line_s_revocations(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    provision(tmp_path, db, "th-1", "pw-one-" + "x" * 12)
    port = free_port()
    out = tmp_path / "broker"
    at = f"127.0.0.1:{port}"
    config = run_cli("broker", "config", "--out", str(out), "--db", str(db), "--listen", at)
    assert config.returncode == 0, config.stderr
    assert "1 device(s) let in, 0 revoked" in config.stdout and "--broker 'mqtt://gateway:" in config.stdout
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "broker",
            "run",
            "--out",
            str(out),
            "--db",
            str(db),
            "--listen",
            at,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _accepts(port), 10, what="broker run listening")
        assert connack(port, "th-1", "pw-one-" + "x" * 12) == ACCEPTED
        revoked = permabeta(db, "devices", "revoke", "th-1")
        assert revoked.returncode == 0, revoked.stderr
        assert "th-1: thermostat (thermostat-v1), revoked" in revoked.stdout
        wait_for(lambda: connack(port, "th-1", "pw-one-" + "x" * 12) != ACCEPTED, 5, what="th-1 refused")
        provision(tmp_path, db, "th-2", "pw-two-" + "y" * 12)  # a device provisioned while it runs
        wait_for(lambda: connack(port, "th-2", "pw-two-" + "y" * 12) == ACCEPTED, 5, what="th-2 let in")
        unknown = permabeta(db, "devices", "revoke", "th-9")
        assert unknown.returncode != 0 and "never registered" in unknown.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        said, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, said
    assert "th-1: revoked, cut off" in said and "th-2: registered, let in" in said
    assert "mosquitto stopped" in said
    assert not (out / "passwords.tmp").exists()


def _accepts(port: int) -> bool:
    try:
        return connack(port, None, None) == NOT_AUTHORISED
    except OSError:
        return False


def test_the_workers_of_a_pool_get_accounts_of_their_own_with_the_gateway_s_rights(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    provision(tmp_path, db, "th-1", "pw-one-" + "x" * 12)
    port = free_port()
    with Store(db) as store:
        with pytest.raises(ConfigError, match="device-style id"):
            write(tmp_path / "broker", store, "127.0.0.1", port, workers=["gw 1"])
        fleet = write(tmp_path / "broker", store, "127.0.0.1", port, workers=["gw-1", "gw-2"])
        again = write(tmp_path / "broker", store, "127.0.0.1", port, workers=["gw-1", "gw-2"])
        runner = BrokerRunner(again, store, say=lambda _: None)
        runner.start()
        try:
            assert again.workers == fleet.workers  # (kept from one writing to the next)
            one, two = fleet.workers["gw-1"], fleet.workers["gw-2"]
            assert connack(port, "gateway.gw-1", one) == ACCEPTED
            assert connack(port, "gateway.gw-1", two) in (BAD_PASSWORD, NOT_AUTHORISED)
            assert oct((fleet.files.conf.parent / "gateway.gw-1.password").stat().st_mode & 0o777) == "0o600"
            # the devices registered since keep the workers' accounts in the files rewritten
            provision(tmp_path, db, "th-2", "pw-two-" + "y" * 12)
            assert runner.check()  # what `broker run` does within its second
            assert connack(port, "th-2", "pw-two-" + "y" * 12) == ACCEPTED
            assert connack(port, "gateway.gw-1", one) == ACCEPTED
            # the gateway's rights, in the files rewritten too: a device's telemetry reaches it,
            # its commands the device
            worker = TestClient(Port(port), "gateway.gw-2", two)
            device = TestClient(Port(port), "th-1", "pw-one-" + "x" * 12)
            try:
                worker.subscribe("pb/+/telemetry")
                device.subscribe("pb/th-1/cmd")
                device.publish("pb/th-1/telemetry", b"{}")
                worker.publish("pb/th-1/cmd", b"{}")
                assert [m[0] for m in worker.messages(2)] == ["pb/th-1/telemetry"]
                assert [m[0] for m in device.messages(2)] == ["pb/th-1/cmd"]
            finally:
                worker.close()
                device.close()
        finally:
            runner.stop()
