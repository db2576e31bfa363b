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

from ..support.cli import permabeta, run_cli
from ..support.mosquitto import connack
from ..support.processes import DeviceProcess, GatewayProcess
from ..support.wait import wait_for
from ..system.test_broker_lockdown import provision

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]


def test_a_maker_runs_the_fleet_on_a_cluster_from_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    nodes = _layout(tmp_path)
    mqtt = [n.mqtt_port for n in nodes]
    provision(tmp_path, db, "th-c1", "pw-" + secrets.token_urlsafe(12))
    broker, log = _run_cluster(tmp_path, db)
    gw: GatewayProcess | None = None
    device: DeviceProcess | None = None
    try:
        text = log.read_text()
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
        _stop(device, gw, broker)
    assert "nats-server stopped" in log.read_text()


def test_a_maker_runs_the_cluster_with_tls_on_every_listener_from_the_command_line(tmp_path: Path) -> None:
    """`broker ca`, then `broker cluster --ca`: a device provisioned for mqtts:// with the
    CA's DER, on the MicroPython unix port (mbedTLS against the nodes' TLS), through
    another node than the gateway's, which runs with the line printed (MQTT over TLS,
    the work queue on tls://)."""
    db = tmp_path / "gw.db"
    nodes = _layout(tmp_path)
    ca = tmp_path / "ca"
    made = run_cli("broker", "ca", "--out", str(ca))
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "th-t1"
    out = permabeta(
        db,
        *("provision", "--model", "thermostat", "--id", "th-t1", "--into", str(folder), "--source"),
        *("--broker", f"mqtts://127.0.0.1:{nodes[2].mqtt_port}", "--ca", str(ca / "ca.der")),
    )
    assert out.returncode == 0, out.stderr
    broker, log = _run_cluster(tmp_path, db, "--ca", str(ca))
    gw: GatewayProcess | None = None
    device: DeviceProcess | None = None
    try:
        text = log.read_text()
        m = re.search(
            r"the gateway: permabeta gateway run --db \S+ --broker '(\S+)' --ca (\S+) --cluster (\S+)", text
        )
        assert m is not None, text
        url, pem, cluster = BrokerUrl.parse(m.group(1)), m.group(2), m.group(3)
        assert url.tls and all(u.startswith("tls://") for u in cluster.split(",")), text
        assert f"--broker mqtts://HOST:{nodes[0].mqtt_port} --ca {ca / 'ca.der'}" in text
        gw = GatewayProcess(url, db, tmp_path / "gw.log", ["--ca", pem, "--cluster", cluster]).start()
        _point_at(folder, nodes[2].mqtt_port)
        device = DeviceProcess(folder).start()
        wait_for(lambda: gw is not None and any(d["id"] == "th-t1" and d["online"] for d in gw.devices()), 30)
        wait_for(lambda: gw is not None and gw.device("th-t1").get("last_telemetry"), 30, what="telemetry")
        reply = json.loads(gw.cli("devices", "send", "th-t1", "ping", "--json").stdout)
        assert reply["ok"], reply
        # nothing of it in plain text: a CONNECT without TLS gets no CONNACK
        with pytest.raises((RuntimeError, OSError)):
            connack(nodes[2].mqtt_port, "th-t1", "x", "th-t1")
    finally:
        _stop(device, gw, broker)
    assert "nats-server stopped" in log.read_text()


def _layout(tmp_path: Path) -> list[Node]:
    """Three nodes on free ports, in the folder `broker cluster` keeps its layout in (it
    takes what it finds there)."""
    nodes = [Node.on(f"n{i}") for i in (1, 2, 3)]
    (tmp_path / "nats").mkdir()
    (tmp_path / "nats" / LAYOUT).write_text(json.dumps({"nodes": [n.__dict__ for n in nodes]}))
    return nodes


def _run_cluster(tmp_path: Path, db: Path, *options: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`permabeta broker cluster --run` on that folder and db, once its nodes run; its log."""
    log = tmp_path / "cluster.log"
    cmd = [sys.executable, "-m", "gateway.cli", "broker", "cluster", "--out", str(tmp_path / "nats")]
    cmd += ["--db", str(db), *options, "--run"]
    with log.open("w") as out:
        broker = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "nats-server running" in log.read_text() or broker.poll() is not None, 60)
        assert broker.poll() is None, log.read_text()
    except BaseException:
        _stop(None, None, broker)
        raise
    return broker, log


def _stop(device: DeviceProcess | None, gw: GatewayProcess | None, broker: subprocess.Popen[bytes]) -> None:
    if device is not None:
        device.kill()
    if gw is not None:
        gw.stop()
    broker.send_signal(signal.SIGTERM)
    broker.wait(30)


def _point_at(folder: Path, port: int) -> None:
    """The provisioned device on that port, sending telemetry every second."""
    cfg = folder / "config.json"
    data = json.loads(cfg.read_text())
    data["broker"]["port"] = port
    data["telemetry_ms"] = 1000
    cfg.write_text(json.dumps(data))
