"""A pool of two `permabeta gateway run --worker` processes on one PostgreSQL
database, behind the fleet's Mosquitto as `permabeta broker config --worker`
writes it, as docs/makers.md says to run them: both join, the devices'
telemetry is stored once whichever worker took it, the command line reaches
the pool, and the leader killed with SIGKILL is replaced within seconds,
the command line still answered."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.broker import BrokerUrl, free_port
from gateway.broker_config import BrokerRunner, worker_user, write
from gateway.pool import TTL_S
from gateway.store import Store

from ..support import messages
from ..support.cli import permabeta
from ..support.mqtt import TestClient
from ..support.postgres import Postgres
from ..support.processes import GatewayProcess
from ..support.wait import wait_for
from .test_broker_lockdown import Port, provision

pytestmark = pytest.mark.slow

DEVICES = {f"th-p{i}": f"pw-{i}-" + "z" * 14 for i in range(4)}


@pytest.fixture
def fleet(tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setenv("PERMABETA_HOME", str(tmp_path / "home"))
    db = postgres.database()
    for dev, password in DEVICES.items():
        provision(tmp_path, db, dev, password)
    port = free_port()
    with Store(db) as store:
        config = write(tmp_path / "broker", store, "127.0.0.1", port, workers=["gw-1", "gw-2"])
        runner = BrokerRunner(config, store, say=lambda _: None)
        runner.start()
        try:
            yield db, port
        finally:
            runner.stop()


def _worker(tmp_path: Path, db: str, port: int, name: str) -> GatewayProcess:
    password = (tmp_path / "broker" / f"{worker_user(name)}.password").read_text().strip()
    broker = BrokerUrl("127.0.0.1", port, username=worker_user(name), password=password)
    return GatewayProcess(broker, db, tmp_path / f"{name}.log", ["--worker", name]).start()


def _leader(store: Store) -> str | None:
    row = store.db.execute(
        "SELECT holder FROM pool_leases WHERE name = 'leader' AND expires > ?", (time.time(),)
    ).fetchone()
    return None if row is None else str(row[0])


def test_two_worker_processes_share_the_fleet_and_the_leader_killed_is_replaced(
    tmp_path: Path, fleet: tuple[str, int]
) -> None:
    db, port = fleet
    workers = {name: _worker(tmp_path, db, port, name) for name in ("gw-1", "gw-2")}
    clients: list[TestClient] = []
    try:
        with Store(db) as store:
            wait_for(
                lambda: {w.name for w in _members(store)} == {"gw-1", "gw-2"} and _leader(store) is not None,
                10,
                what="a pool of two with a leader",
            )
            for dev, password in DEVICES.items():
                c = TestClient(Port(port), dev, password)
                clients.append(c)
                hello = messages.hello(dev, keepalive=30, telemetry_s=10)
                c.publish(f"pb/{dev}/hello", json.dumps(hello), retain=True)
                c.publish(f"pb/{dev}/state", json.dumps({"v": 1, "dev": dev, "state": "online"}), retain=True)
            for seq in range(1, 6):
                for c, dev in zip(clients, DEVICES, strict=True):
                    msg = {"v": 1, "dev": dev, "seq": seq, "ts": time.time(), "sensors": {}, "actuators": {}}
                    c.publish(f"pb/{dev}/telemetry", json.dumps(msg | {"features": {}}))
            wait_for(lambda: store.telemetry_count() == 20, 10, what="20 rows")
            # each row once, from both workers' shares
            time.sleep(1)
            assert store.telemetry_count() == 20
            listed = permabeta(db, "devices", "list", "--json")
            assert listed.returncode == 0 and {d["id"] for d in json.loads(listed.stdout)} == set(DEVICES)
            assert all(d["online"] for d in json.loads(listed.stdout))

            # the leader is killed: no goodbye, its lease runs out, the other takes it
            first = _leader(store)
            assert first is not None
            killed_at = time.monotonic()
            proc = workers[first].proc
            assert proc is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            second = "gw-2" if first == "gw-1" else "gw-1"
            wait_for(lambda: _leader(store) == second, TTL_S + 5, what=f"{second} leading")
            assert time.monotonic() - killed_at < TTL_S + 3
            # the command line reaches the pool through the worker left
            wait_for(lambda: _reaches(db), 5, what="the command line answered")
    finally:
        for c in clients:
            c.close()
        for w in workers.values():
            if w.proc is not None and w.proc.poll() is None:
                w.stop()


def _members(store: Store) -> list[object]:
    from gateway.pool import Pool

    return [w for w in Pool(store).workers() if w.seen > time.time() - TTL_S]


def _reaches(db: str) -> bool:
    done = permabeta(db, "devices", "send", next(iter(DEVICES)), "ping", "--timeout", "1")
    # (the device here is a test client, which does not answer: the gateway says so, not the CLI)
    return "did not answer" in done.stdout + done.stderr or done.returncode == 0
