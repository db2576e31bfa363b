"""A NATS cluster as a maker runs one from the command line: a device
provisioned with `permabeta provision --db`, `permabeta broker cluster --run`
from that database, the gateway run with the line it prints, and the device
on the MicroPython unix port (128 KB) through another node: listed, its
telemetry stored, a command answered; provisioned later, let in without a
restart; revoked, cut off."""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.broker import BrokerUrl
from gateway.nats_cluster import LAYOUT, Node
from gateway.registry import Registry
from gateway.store import Store

from ..support.mosquitto import connack
from ..support.processes import DeviceProcess, GatewayProcess
from ..support.wait import wait_for
from ..system.test_broker_lockdown import provision

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]


def test_a_maker_runs_the_fleet_on_a_cluster_from_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    # (the nodes' ports, free ones: `broker cluster` keeps what it finds in its folder)
    nodes = [Node.on(f"n{i}") for i in (1, 2, 3)]
    (tmp_path / "nats").mkdir()
    (tmp_path / "nats" / LAYOUT).write_text(json.dumps({"nodes": [n.__dict__ for n in nodes]}))
    mqtt = [n.mqtt_port for n in nodes]
    provision(tmp_path, db, "th-c1", "pw-" + secrets.token_urlsafe(12))
    log = tmp_path / "cluster.log"
    cmd = [sys.executable, "-m", "gateway.cli", "broker", "cluster", "--out", str(tmp_path / "nats")]
    cmd += ["--db", str(db), "--run"]
    with log.open("w") as out:
        broker = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    gw: GatewayProcess | None = None
    device: DeviceProcess | None = None
    try:
        wait_for(lambda: "nats-server running" in log.read_text() or broker.poll() is not None, 60)
        text = log.read_text()
        assert broker.poll() is None, text
        m = re.search(r"the gateway: permabeta gateway run --db \S+ --broker '(\S+)' --cluster (\S+)", text)
        assert m is not None, text
        url, cluster = BrokerUrl.parse(m.group(1)), m.group(2)
        assert len(cluster.split(",")) == 3 and f"MQTT 127.0.0.1:{mqtt[2]}" in text
        gw = GatewayProcess(url, db, tmp_path / "gw.log", ["--cluster", cluster]).start()
        # the device reaches the third node (its folder says where)
        folder = tmp_path / "th-c1"
        _point_at(folder, mqtt[2])
        device = DeviceProcess(folder).start()
        wait_for(lambda: gw is not None and any(d["id"] == "th-c1" and d["online"] for d in gw.devices()), 30)
        wait_for(lambda: gw is not None and gw.device("th-c1").get("last_telemetry"), 30, what="telemetry")
        reply = json.loads(gw.cli("devices", "send", "th-c1", "ping", "--json").stdout)
        assert reply["ok"], reply
        # a device provisioned now (through the running gateway) is let in; revoked, refused
        later = "pw-" + secrets.token_urlsafe(12)
        provision(tmp_path, db, "th-c2", later)
        wait_for(lambda: all(connack(n, "th-c2", later, "th-c2") == 0 for n in mqtt), 15, what="let in")
        gw.cli("devices", "revoke", "th-c2")
        wait_for(lambda: all(connack(n, "th-c2", later, "th-c2") in (4, 5) for n in mqtt), 15, what="refused")
        gw.cli("devices", "restore", "th-c2")
        wait_for(lambda: all(connack(n, "th-c2", later, "th-c2") == 0 for n in mqtt), 15, what="let in")
        # its account connecting as th-c1's client id takes th-c1's place for a moment, and
        # is revoked for it; th-c1 comes back and is heard again
        connack(mqtt[0], "th-c2", later, "th-c1")
        wait_for(lambda: "th-c2: connected as client id 'th-c1', not its own: revoked" in log.read_text(), 15)
        wait_for(lambda: connack(mqtt[0], "th-c2", later, "th-c2") in (4, 5), 15, what="the impostor refused")
        with Store(db) as store:
            got = Registry(store).get("th-c2")
            assert got is not None and got.revoked is not None
        seen = gw.device("th-c1")["last_seen"]
        wait_for(lambda: gw is not None and gw.device("th-c1")["last_seen"] > seen + 1, 30, what="th-c1 back")
        reply = json.loads(gw.cli("devices", "send", "th-c1", "ping", "--json").stdout)
        assert reply["ok"], reply
    finally:
        if device is not None:
            device.kill()
        if gw is not None:
            gw.stop()
        broker.send_signal(signal.SIGTERM)
        broker.wait(30)
    assert "nats-server stopped" in log.read_text()


def _point_at(folder: Path, port: int) -> None:
    """The provisioned device on that port, sending telemetry every second."""
    cfg = folder / "config.json"
    data = json.loads(cfg.read_text())
    data["broker"]["port"] = port
    data["telemetry_ms"] = 1000
    cfg.write_text(json.dumps(data))
