"""A NATS cluster of the tests' own (gateway/nats_cluster.py): three nodes on
loopback with JetStream and MQTT, configured from a gateway database's
registry as `permabeta broker cluster` configures one, started and killed by
the test."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import time
from pathlib import Path

from firmware.pb.net import mqtt
from gateway.broker import GATEWAY_USER, BrokerUrl
from gateway.broker_config import worker_user
from gateway.cli_registry import cluster_hash, password_hash
from gateway.nats_cluster import ClusterTls, Keys, NatsCluster, NatsNode, Node, cluster_tls, write
from gateway.registry import Registry
from gateway.store import Store

GATEWAY_PASSWORD = "cluster-gateway-secret"
SYSTEM_PASSWORD = "cluster-system-secret"
WORKERS = ("gw-a", "gw-b", "gw-c", "gw-d")


def _die_with_parent() -> None:  # (a test killed leaves no node behind)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
    os.setpgrp()


class TestCluster(NatsCluster):
    """Three nodes; the registry is store's (a gateway's database)."""

    __test__ = False

    def __init__(self, directory: Path, store: Store, size: int = 3, ca: Path | None = None) -> None:
        """ca: a CA folder (`broker ca`'s): TLS on every listener of the nodes."""
        directory.mkdir(parents=True, exist_ok=True)
        nodes = [Node.on(f"n{i}") for i in range(1, size + 1)]
        self.store = store
        self.hashed = cluster_hash(GATEWAY_PASSWORD)
        tls = cluster_tls(ca, directory, nodes) if ca is not None else None
        self.keys = Keys(cluster_hash(SYSTEM_PASSWORD), "cluster-route-secret", tls)
        self.operators = {GATEWAY_USER: self.hashed} | {worker_user(w): self.hashed for w in WORKERS}
        super().__init__(directory, nodes, (GATEWAY_USER, GATEWAY_PASSWORD), _die_with_parent, tls)
        self.write()

    def write(self) -> int:
        nodes = [n.node for n in self.nodes]
        return write(self.dir, nodes, Registry(self.store).all(), self.operators, self.keys)

    def apply(self) -> None:
        """The registry's change, to every running node (a reload)."""
        self.write()
        self.reload()

    def gateway_url(self, node: int = 0, worker: str | None = None) -> BrokerUrl:
        user = worker_user(worker) if worker else GATEWAY_USER
        return self.mqtt_url(node).with_credentials(user, GATEWAY_PASSWORD)

    def mqtt_url(self, node: int) -> BrokerUrl:
        n = self.nodes[node].node
        return BrokerUrl(n.host, n.mqtt_port, self.tls is not None)

    def register(self, dev: str, model: str = "thermostat", hashed: bool = True) -> str:
        """A device provisioned with a new password (its hash for the cluster
        with hashed), applied to the cluster: its password (let_in waits
        until the cluster takes it)."""
        password = secrets.token_urlsafe(12)
        Registry(self.store).register(
            dev,
            model,
            f"{model}-v1",
            password_hash(dev, password),
            time.time(),
            cluster_hash=cluster_hash(password) if hashed else None,
        )
        self.apply()
        return password

    def let_in(self, dev: str, password: str) -> None:
        """Until every node takes the device's password (a reload is not instant)."""
        deadline = time.monotonic() + 10
        for node in self.nodes:
            while connack(node, dev, password, f"{dev}-probe", self.tls) != 0:
                assert time.monotonic() < deadline, f"{dev} not let in after the reload"
                time.sleep(0.05)

    def node(self, i: int) -> NatsNode:
        return self.nodes[i]


def connack(
    node: NatsNode, user: str, password: str, client_id: str, tls: ClusterTls | None = None
) -> int | None:
    """The return code of a CONNECT to node's MQTT listener (None: the
    connection closed without a CONNACK); over TLS with tls."""
    n = node.node
    packet = mqtt.connect(client_id, 5, clean=True, user=user, password=password)
    with socket.create_connection((n.host, n.mqtt_port), timeout=5) as raw:
        s = tls.context().wrap_socket(raw, server_hostname=n.host) if tls else raw
        s.settimeout(10)
        s.sendall(packet)
        try:
            got = s.recv(4)
        except OSError:
            return None
        if len(got) < 4 or got[0] != 0x20:
            return None
        s.sendall(mqtt.disconnect())
        return got[3]
