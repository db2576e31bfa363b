"""A NATS cluster with TLS on every listener (docs/security.md 7.10,
`permabeta broker cluster --ca`): devices on mqtts:// with the fleet's CA,
the gateway's MQTT side and its work queue over TLS, routes that take only
a node whose certificate the CA signed; nothing in plain text is taken."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.ca import CaFiles, ca_der, create_ca, server_cert
from gateway.nats_cluster import CLUSTER, ROUTE_USER, nats_server
from gateway.store import Store
from gateway.tls import client_context

from ..support.nats import TestCluster, connack
from ..support.wait import async_wait_for, wait_for
from .conftest import Devices, StartGateway

pytestmark = pytest.mark.cluster

ROUTE_PASSWORD = "cluster-route-secret"  # (tests/support/nats.py's)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    folder = tmp_path / "ca"
    create_ca(folder)
    server_cert(folder, ["localhost", "127.0.0.1"])
    return folder


@pytest.fixture
def cluster(tmp_path: Path, store: Store, ca: Path) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path / "nats", store, ca=ca)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _monitor(cluster: TestCluster, i: int, what: str) -> dict[str, Any]:
    """A node's monitoring answer (on its machine's loopback alone)."""
    n = cluster.nodes[i].node
    with urllib.request.urlopen(f"http://127.0.0.1:{n.http_port}/{what}", timeout=5) as r:
        got: dict[str, Any] = json.loads(r.read())
        return got


def _routes(cluster: TestCluster, i: int) -> list[dict[str, Any]]:
    return list(_monitor(cluster, i, "routez").get("routes") or [])


async def test_a_fleet_runs_on_a_cluster_with_tls_on_every_listener(
    cluster: TestCluster, start_gateway: StartGateway, devices: Devices, ca: Path
) -> None:
    assert all(u.startswith("tls://") for u in cluster.nats_urls)
    gw = await start_gateway(0, tls_context=client_context(cafile=CaFiles.of(ca).cert))
    dev = await devices.start(2, ca=ca_der(ca))
    # its hello (MQTT, over TLS on another node) and its telemetry (the work queue, NATS over TLS)
    await async_wait_for(lambda: gw.gw.is_online(dev.id), 20, what="online over TLS")
    await async_wait_for(lambda: gw.store.telemetry_count(dev.id) >= 2, 20, what="telemetry over TLS")
    reply = await gw.gw.send_command(dev.id, "ping", timeout=10)
    assert reply.get("ok") is True, reply
    # the routes between the nodes are up, and take TLS alone, verifying the other end
    for i in range(3):
        routes = _routes(cluster, i)
        assert len(routes) == 2, routes
        said = _monitor(cluster, i, "varz")
        assert said["tls_required"] and said["cluster"]["tls_required"] and said["cluster"]["tls_verify"]


def test_nothing_in_plain_text_is_taken(cluster: TestCluster) -> None:
    password = cluster.register("th-plain")
    cluster.let_in("th-plain", password)
    assert all(connack(node, "th-plain", password, "th-plain", cluster.tls) == 0 for node in cluster.nodes)
    for node in cluster.nodes:
        # MQTT without TLS: the connection ends before any CONNACK
        try:
            got = connack(node, "th-plain", password, "th-plain")
        except OSError:
            got = None
        assert got is None, f"a plain CONNECT was answered: {got}"
        # the node's certificate is the fleet CA's: a client that trusts only the system's refuses it
        n = node.node
        with (
            pytest.raises(ssl.SSLCertVerificationError),
            socket.create_connection((n.host, n.mqtt_port), timeout=5) as raw,
        ):
            ssl.create_default_context().wrap_socket(raw, server_hostname=n.host)


def test_a_plain_nats_client_is_refused(cluster: TestCluster) -> None:
    """On the NATS port a client that goes on in plain text after the server's INFO
    (which asks for TLS) gets no session: no PONG to its PING, the connection ends."""
    n = cluster.nodes[0].node
    connect = {"user": "gateway", "pass": cluster.account[1], "verbose": False, "pedantic": False}
    with socket.create_connection((n.host, n.client_port), timeout=5) as s:
        info = s.makefile("rb").readline()
        assert info.startswith(b"INFO ") and json.loads(info[5:])["tls_required"] is True
        s.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except OSError:
            pass
        assert b"PONG" not in got, got


def test_a_server_with_the_route_password_but_not_the_cas_certificate_cannot_join(
    cluster: TestCluster, tmp_path: Path, ca: Path
) -> None:
    """The route password alone (leaked, say) does not make a node: a server
    whose certificate another CA signed is refused at the TLS handshake."""
    other = tmp_path / "other-ca"
    create_ca(other)
    cert, key = server_cert(other, ["127.0.0.1"], client=True)
    both = tmp_path / "both.pem"
    both.write_bytes(CaFiles.of(other).cert.read_bytes() + CaFiles.of(ca).cert.read_bytes())
    target = cluster.nodes[0].node
    node_log = cluster.nodes[0].log
    seen = len(node_log.read_text())
    conf = {
        "server_name": "rogue",
        "listen": "127.0.0.1:-1",
        "cluster": {
            "name": CLUSTER,
            "listen": "127.0.0.1:-1",
            "routes": [f"nats-route://{ROUTE_USER}:{ROUTE_PASSWORD}@{target.host}:{target.route_port}"],
            # (it trusts the nodes' CA too: the refusal is the node's alone)
            "tls": {"cert_file": str(cert), "key_file": str(key), "ca_file": str(both)},
        },
    }
    path = tmp_path / "rogue.conf"
    path.write_text(json.dumps(conf))
    log = tmp_path / "rogue.log"
    with log.open("wb") as out:
        rogue = subprocess.Popen([nats_server(), "-c", str(path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        # the node refuses it at the handshake, and keeps its two routes alone
        def refused() -> bool:
            said = node_log.read_text()[seen:]
            return "TLS route handshake error" in said and "unknown authority" in said

        wait_for(refused, 15, what="the node refusing the route")
        time.sleep(1.0)
        names = {str(r.get("remote_name", r.get("remote_id"))) for r in _routes(cluster, 0)}
        assert len(names) == 2 and "rogue" not in names, names
    finally:
        rogue.terminate()
        rogue.wait(10)
