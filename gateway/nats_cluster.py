"""A NATS cluster as the fleet's broker (docs/makers.md, "A NATS cluster";
docs/security.md 7.10): nodes that each take MQTT from devices, with
JetStream on, routed to each other, configured from the registry.

Devices and the gateway's MQTT side are unchanged: each node's MQTT listener
speaks 3.1.1 with QoS 1, retained messages, last wills and persistent
sessions across the cluster. What a shared subscription gives one worker of
a pool on Mosquitto (telemetry, events, Home Assistant's commands: `$share`
subscriptions are accepted there but deliver nothing) a pool takes here from
a JetStream work queue (`STREAM`), with one durable consumer the workers
share (gateway/nats_inbox.py): each message to one worker, acknowledged once
handled, kept while no worker is up.

Each node's configuration is JSON (which NATS reads): every name and hash in
it is quoted by the encoder, never pasted. Accounts (docs/security.md 7.10):
the gateway's and each pool worker's (every right: JetStream's API too), Home
Assistant's if it has a password (the bridge's topics, as on Mosquitto), and
each registered device that was provisioned with a hash for the cluster,
allowed its own subjects in the protocol's direction, over MQTT alone. A
revoked device's account is locked: at the reload NATS closes its
connection and refuses the next one. Only the MQTT listeners face devices:
NATS clients, routes (with a password of the cluster's) and monitoring are
on the cluster's own host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .broker import DEVICE_READS, DEVICE_WRITES, HA_USER, end, spawn
from .errors import BrokerError, ConfigError
from .homeassistant import BRIDGE, COMMAND_FILTER, DISCOVERY
from .registry import Registered

CLUSTER = "permabeta"
STREAM = "PB_DEVICES"  # the work queue of what one worker handles
CONSUMER = "gateway"  # its one durable consumer, shared by the workers
# what a device says that one worker of the pool handles (the rest reaches every
# worker through its MQTT subscriptions: gateway/service.py cluster_subscriptions)
SHARED = ("pb/+/telemetry", "pb/+/event", COMMAND_FILTER)
# where NATS's MQTT side delivers a client's QoS 1 subscriptions (its JetStream consumer's
# subject, a random name under this): each client must be let to subscribe to it
MQTT_DELIVERY = "$MQTT.sub.>"
# a device's account speaks MQTT only: on a NATS connection the subscription to MQTT_DELIVERY it
# must be given would let it read what is delivered to every other device
MQTT_ONLY = ["MQTT"]
SWEEP_S = 30.0  # how often the guard looks at every connection (besides the events it reads)
SWEEP_WAIT_S = 1.0  # how long it waits for the nodes' answers
ACCOUNT = "PB"  # the fleet's: the gateway's, its workers', Home Assistant's and the devices' users
# (user names no device can have: a '.' is in no device id)
SYSTEM_ACCOUNT, SYSTEM_USER = "SYS", "system.guard"
ROUTE_USER = "cluster.route"  # the cluster's own events: who connects, as whom
MAX_PAYLOAD = 1024 * 1024  # NATS's own default: a retained message is stored with its envelope
MQTT_MAX_ACK_PENDING = 1024  # NATS's default (see node_config)
TLS_TIMEOUT_S = 5.0  # a TLS handshake's (NATS's own 0.5 s is short for a board)
NODE_CERT, NODE_KEY = "node.pem", "node.key"  # the nodes' own certificate, in the cluster's folder
RENEW_S = 30 * 86400  # the nodes' certificate is made again this long before its end


def subject(topic: str) -> str:
    """The NATS subject of an MQTT topic filter (what NATS's MQTT side uses:
    levels joined by '.', `+` is `*`, a last `#` is `>`). Topics here hold
    no '.', and no empty level."""
    levels = topic.split("/")
    out = ["*" if lv == "+" else ">" if lv == "#" else lv for lv in levels]
    return ".".join(out)


def topic(subj: str) -> str:
    """The MQTT topic of a NATS subject a device's message came on."""
    return subj.replace(".", "/")


def device_permissions(dev: str) -> dict[str, Any]:
    """What a device may do, as Mosquitto's ACL patterns give it (gateway/
    broker.py DEVICE_WRITES, DEVICE_READS): publish its own kinds, subscribe
    to what the gateway sends it; and the subjects NATS's MQTT side delivers
    a QoS 1 subscription through (its JetStream consumer's)."""
    return {
        "publish": {"allow": [subject(f"pb/{dev}/{k}") for k in DEVICE_WRITES]},
        "subscribe": {"allow": [subject(f"pb/{dev}/{k}") for k in DEVICE_READS] + [MQTT_DELIVERY]},
    }


def ha_permissions() -> dict[str, Any]:
    """Home Assistant's account: the discovery configs and the bridge's
    topics to read, the bridge's commands to write (gateway/broker.py
    HA_TOPICS). (A `#` filter is its level's subject and the subjects
    below it.)"""
    read = [DISCOVERY, subject(f"{DISCOVERY}/#"), BRIDGE, subject(f"{BRIDGE}/#"), MQTT_DELIVERY]
    return {"publish": {"allow": [subject(COMMAND_FILTER)]}, "subscribe": {"allow": read}}


def users(
    registered: Sequence[Registered], operators: dict[str, str], locked: frozenset[str] = frozenset()
) -> tuple[list[dict[str, Any]], int]:
    """The cluster's accounts: operators (user -> bcrypt hash: the gateway,
    a pool's workers, Home Assistant) and each registered device with a hash
    for the cluster. A revoked device's account (and each in locked) is
    locked: no password opens it (one nobody knows: at the reload NATS closes
    its connection, checked again) and it may subscribe to nothing. It is
    kept, with its rights to publish: NATS 2.9.10 crashes at a reload that
    drops the account, or its right, of a retained message's publisher
    (mqttCheckPubRetainedPerms), and every device retains its hello. Also
    how many registered devices are left out for want of a hash."""
    out: list[dict[str, Any]] = []
    for user, hashed in operators.items():
        entry: dict[str, Any] = {"user": user, "password": hashed}
        if user == HA_USER:
            entry |= {"permissions": ha_permissions(), "allowed_connection_types": MQTT_ONLY}
        out.append(entry)
    unhashed = 0
    for r in registered:
        if r.cluster_hash is None:
            unhashed += r.revoked is None
            continue
        perms = device_permissions(r.device)
        password = r.cluster_hash
        if r.revoked is not None or r.device in locked:
            perms["subscribe"] = {"deny": [">"]}
            password = _locked_hash()
        out.append(
            {
                "user": r.device,
                "password": password,
                "permissions": perms,
                "allowed_connection_types": MQTT_ONLY,
            }
        )
    return out, unhashed


def _locked_hash() -> str:
    """A bcrypt hash of a password nobody is told."""
    import secrets

    return _bcrypt(secrets.token_urlsafe(32))


@dataclass(frozen=True)
class Node:
    """One node of the cluster: its NATS clients, routes to the other nodes
    and monitoring on host (none of them for devices: loopback, or a network
    of the nodes' own), its MQTT listener on mqtt_host (host if empty)."""

    name: str
    host: str
    client_port: int
    route_port: int
    mqtt_port: int
    http_port: int
    mqtt_host: str = ""

    @property
    def mqtt_on(self) -> str:
        return self.mqtt_host or self.host

    @property
    def mqtt_near(self) -> str:
        """Where this machine reaches its MQTT listener."""
        return "127.0.0.1" if self.mqtt_on in ("0.0.0.0", "::", "") else self.mqtt_on

    @classmethod
    def on(cls, name: str, host: str = "127.0.0.1") -> Node:
        """A node on free ports of host, below the range the system takes its
        outgoing connections' ports from (a route dialled out from another node
        could otherwise hold one before this node listens)."""
        client, route, mqtt, http = _free_ports(host, 4)
        return cls(name, host, client, route, mqtt, http)

    @property
    def nats_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"


def node_config(
    node: Node, nodes: Sequence[Node], store: Path, accounts: list[dict[str, Any]], keys: Keys
) -> dict[str, Any]:
    """One node's configuration: JetStream in store, routes to the others
    (each node proves itself to the others with keys.route), MQTT beside
    NATS; the fleet's accounts in ACCOUNT, and the system account, whose
    SYSTEM_USER (keys.system: the bcrypt hash of its password) reads who
    connects as whom (NATS tells nothing of its global account's
    connections: the fleet has an account of its own). A cluster of one
    node has no routes (JetStream alone)."""
    conf: dict[str, Any] = {
        "server_name": node.name,
        "listen": f"{node.host}:{node.client_port}",
        # (monitoring answers without a password, and its connz shows MQTT passwords: this
        # machine's loopback alone, whatever the host the nodes reach each other on)
        "http": f"127.0.0.1:{node.http_port}",
        "max_payload": MAX_PAYLOAD,
        "jetstream": {"store_dir": str(store)},
        # (its sessions, retained messages and QoS 1 messages kept on up to three nodes: one lost
        # loses none of them)
        "mqtt": {
            "listen": f"{node.mqtt_on}:{node.mqtt_port}",
            "stream_replicas": replicas(len(nodes)),
            # NATS 2.9 takes a reload's MQTT options as changed when they hold TLS (a new TLS
            # configuration each time), and then sets every session's max_ack_pending to the
            # configuration's, 0 if it says none: no QoS 1 message was delivered after a device was
            # registered. Said, it stays what it was (NATS's own default)
            "max_ack_pending": MQTT_MAX_ACK_PENDING,
        },
        "accounts": {
            ACCOUNT: {"jetstream": "enabled", "users": accounts},
            SYSTEM_ACCOUNT: {"users": [{"user": SYSTEM_USER, "password": keys.system}]},
        },
        "system_account": SYSTEM_ACCOUNT,
    }
    if len(nodes) > 1:
        auth = f"{ROUTE_USER}:{keys.route}@"
        conf["cluster"] = {
            "name": CLUSTER,
            "listen": f"{node.host}:{node.route_port}",
            "authorization": {"user": ROUTE_USER, "password": keys.route},
            "routes": [f"nats-route://{auth}{n.host}:{n.route_port}" for n in nodes if n.name != node.name],
        }
    tls = keys.tls
    if tls is not None:
        ca = str(tls.ca)
        node_tls = {"cert_file": str(tls.node_cert), "key_file": str(tls.node_key), "ca_file": ca}
        conf["tls"] = node_tls | {"timeout": TLS_TIMEOUT_S}
        conf["mqtt"]["tls"] = {
            "cert_file": str(tls.mqtt_cert),
            "key_file": str(tls.mqtt_key),
            "timeout": TLS_TIMEOUT_S,
        }
        if "cluster" in conf:
            # (both ends show a certificate of the CA's: a server that is not a node cannot join)
            conf["cluster"]["tls"] = node_tls | {"verify": True, "timeout": TLS_TIMEOUT_S}
    return conf


def replicas(nodes: int) -> int:
    """How many nodes keep each stream: three, or all of a smaller cluster."""
    return min(3, nodes)


@dataclass(frozen=True)
class ClusterTls:
    """TLS on every listener of the nodes (docs/security.md 7.10), from the
    fleet's CA (`permabeta broker ca`): the MQTT listeners take devices with
    the broker's server certificate (mqtt_cert, mqtt_key: the one Mosquitto's
    TLS listener has); the routes and the NATS clients' port with the nodes'
    own (node_cert, node_key: a server's and a client's), and a route is
    taken only from a node whose certificate the CA signed. Paths (PEM)."""

    ca: Path
    mqtt_cert: Path
    mqtt_key: Path
    node_cert: Path
    node_key: Path

    def context(self) -> ssl.SSLContext:
        """A client's context that trusts the fleet's CA alone (the gateway's and the guard's)."""
        return ssl.create_default_context(cafile=str(self.ca))


def cluster_tls(ca_dir: Path, out: Path, nodes: Sequence[Node], *, now: float | None = None) -> ClusterTls:
    """TLS for the cluster in out from the CA folder `broker ca` wrote
    (its CA and the broker's server certificate, which the MQTT listeners
    show devices): the nodes' own certificate is made in out, signed by the
    CA, for the hosts the nodes reach each other on, and made again when
    those change or it nears its end. Raises ConfigError naming what is missing."""
    from .ca import CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, cert_hosts, server_cert

    need = [ca_dir / CA_CERT, ca_dir / SERVER_CERT, ca_dir / SERVER_KEY]
    missing = [f.name for f in need if not f.is_file()]
    if missing:
        hint = f"make them with `permabeta broker ca --out {ca_dir}`"
        raise ConfigError(f"{ca_dir} lacks {', '.join(missing)} for the cluster's TLS: {hint}")
    if any(n.host in ("0.0.0.0", "::", "") for n in nodes):
        raise ConfigError("with TLS, --cluster-host is the address the nodes reach each other at, not any")
    hosts = list(dict.fromkeys([n.host for n in nodes] + ["127.0.0.1"]))
    cert, key = out / NODE_CERT, out / NODE_KEY
    fits = cert_hosts(cert) == hosts and _lasts(cert, now, RENEW_S) and _signed_by(cert, ca_dir / CA_CERT)
    if not (key.is_file() and fits):
        if not (ca_dir / CA_KEY).is_file():
            raise ConfigError(
                f"the nodes' certificate ({cert}) is to be made (again: new hosts, another CA, or near its "
                f"end), and {ca_dir / CA_KEY} is not there: bring the CA's key back for this run"
            )
        server_cert(ca_dir, hosts, out, now=now, client=True, files=(NODE_CERT, NODE_KEY))
    ca, mqtt_cert, mqtt_key = (f.resolve() for f in need)
    return ClusterTls(ca, mqtt_cert, mqtt_key, cert.resolve(), key.resolve())


def _signed_by(cert: Path, ca: Path) -> bool:
    """Whether the certificate (PEM) was signed by the CA's (PEM)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        x509.load_pem_x509_certificate(cert.read_bytes()).verify_directly_issued_by(
            x509.load_pem_x509_certificate(ca.read_bytes())
        )
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    return True


def _lasts(cert: Path, now: float | None, seconds: float) -> bool:
    """Whether the certificate (PEM) is still good seconds from now."""
    import datetime

    from cryptography import x509

    try:
        end = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return False
    t = time.time() if now is None else now
    return end > datetime.datetime.fromtimestamp(t + seconds, datetime.UTC)


@dataclass(frozen=True)
class Keys:
    """What the nodes' configurations hold besides the accounts: the system
    account's password (bcrypt), the password the nodes' routes prove
    themselves with to each other (as is: each node dials the others with
    it), and TLS on their listeners (none: plain, on a network of their own)."""

    system: str
    route: str
    tls: ClusterTls | None = None


def write(
    directory: Path,
    nodes: Sequence[Node],
    registered: Sequence[Registered],
    operators: dict[str, str],
    keys: Keys,
    locked: frozenset[str] = frozenset(),
) -> int:
    """Write each node's configuration into directory/NAME.conf (replaced
    in one step: a reload reads the old or the new), its JetStream under
    directory/NAME/; the devices in locked with their accounts locked. The
    number of registered devices left out for want of a hash for the cluster."""
    accounts, unhashed = users(registered, operators, locked)
    written = []
    for node in nodes:
        conf = node_config(node, nodes, directory / node.name, accounts, keys)
        path = directory / f"{node.name}.conf"
        tmp = path.with_name(path.name + ".tmp")
        # (NATS reads no unicode escape: every character as it is)
        tmp.write_text(json.dumps(conf, indent=1, ensure_ascii=False) + "\n")
        tmp.chmod(0o600)
        written.append((tmp, path))
    for tmp, _ in written[:1]:  # (all alike but their names and ports)
        _checked(tmp)
    for tmp, path in written:
        tmp.replace(path)
    return unhashed


def _checked(conf: Path) -> None:
    """Raises BrokerError if nats-server would not read conf (it says why)."""
    try:
        exe = nats_server()
    except BrokerError:
        return  # (written for nodes run elsewhere)
    got = subprocess.run([exe, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    if got.returncode != 0:
        said = (got.stderr or got.stdout)[-500:]
        raise BrokerError(f"nats-server would not read the configuration: {said}")


def nats_server() -> str:
    """The nats-server executable. Raises BrokerError if it is not installed."""
    for exe in ("/usr/bin/nats-server", "/usr/sbin/nats-server", "/usr/local/bin/nats-server"):
        if Path(exe).exists():
            return exe
    raise BrokerError("nats-server not found: install the nats-server package")


class NatsNode:
    """One node run from its configuration; start() returns once it serves
    MQTT (JetStream and the cluster ready)."""

    def __init__(self, node: Node, conf: Path, log: Path, preexec_fn: Any = None) -> None:
        self.node = node
        self.conf = conf
        self.log = log
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        self.proc = spawn([nats_server(), "-c", str(self.conf)], self.log, self.preexec_fn)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """Whether it serves clients with JetStream current (its /healthz)."""
        url = f"http://127.0.0.1:{self.node.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def loaded_at(self) -> str | None:
        """When it last read its configuration (its /varz), None if it does not answer."""
        url = f"http://127.0.0.1:{self.node.http_port}/varz"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(json.loads(r.read())["config_load_time"])
        except (OSError, ValueError, KeyError):
            return None

    def reload(self, timeout: float = 5.0) -> bool:
        """Make it read its configuration again; whether it did within
        timeout (a node that is not running reads it when it starts)."""
        if not self.running():
            return True
        assert self.proc is not None
        before = self.loaded_at()
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.loaded_at()
            if now is not None and now != before:
                return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """Ended at once (SIGKILL): what it had not written is lost, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        end(self.proc, 10)
        self.proc = None


class NatsCluster:
    """A cluster of NATS nodes on this machine, from a folder written by
    `write` (the tests', and `permabeta broker cluster` for one machine)."""

    def __init__(
        self,
        directory: Path,
        nodes: Sequence[Node],
        account: tuple[str, str],
        preexec_fn: Any = None,
        tls: ClusterTls | None = None,
    ) -> None:
        """account: a user and password of the cluster's (the gateway's) its
        readiness is checked with: an MQTT connection accepted on each node.
        tls: what the nodes' configurations say of TLS (written by `write`)."""
        self.dir = directory
        self.account = account
        self.tls = tls
        self.nodes = [
            NatsNode(n, directory / f"{n.name}.conf", directory / f"{n.name}.log", preexec_fn) for n in nodes
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Start every node that is not running and wait until each is
        healthy. Raises BrokerError."""
        for n in self.nodes:
            if not n.running():
                n.spawn()
        self.wait(timeout)

    def wait(self, timeout: float = 60.0, nodes: Sequence[NatsNode] | None = None) -> None:
        """Until every running node (or these) is healthy. Raises BrokerError."""
        deadline = time.monotonic() + timeout
        waiting = [n for n in (nodes or self.nodes) if n.running()]
        while waiting:
            for n in list(waiting):
                if not n.running():
                    raise BrokerError(f"nats-server {n.node.name} ended: {_tail(n.log)}")
                if n.healthy() and _serves_mqtt(n.node, *self.account, self.tls):
                    waiting.remove(n)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(n.node.name for n in waiting)
                raise BrokerError(
                    f"nats-server {names} not ready within {timeout:g}s: {_tail(waiting[0].log)}"
                )
            if waiting:
                time.sleep(0.1)

    def reload(self) -> None:
        """Every running node reads its configuration again. Raises
        BrokerError naming those that did not within seconds."""
        late = [n.node.name for n in self.nodes if not n.reload()]
        if late:
            raise BrokerError(f"nats-server {', '.join(late)} did not read its configuration again")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    @property
    def nats_urls(self) -> list[str]:
        """(tls:// where the nodes take NATS clients over TLS alone)"""
        urls = [n.node.nats_url for n in self.nodes]
        return [u.replace("nats://", "tls://", 1) for u in urls] if self.tls else urls


def _serves_mqtt(node: Node, user: str, password: str, tls: ClusterTls | None = None) -> bool:
    """Whether the node's MQTT side accepts a connection (its first, in an
    account, makes the streams MQTT keeps its sessions and messages in)."""
    from firmware.pb.net import mqtt

    packet = mqtt.connect(f"ready-{node.name}", 5, clean=True, user=user, password=password)
    with (
        contextlib.suppress(OSError),
        socket.create_connection((node.mqtt_near, node.mqtt_port), timeout=2) as raw,
    ):
        s: socket.socket = raw
        if tls is not None:
            ctx = tls.context()
            ctx.check_hostname = False  # (the certificate names the hosts devices use; the CA is checked)
            s = ctx.wrap_socket(raw)
        s.settimeout(10)
        s.sendall(packet)
        got = s.recv(4)
        return got == b"\x20\x02\x00\x00"
    return False


def _free_ports(host: str, count: int) -> list[int]:
    import random

    low = 20000
    with contextlib.suppress(OSError, ValueError):
        low = min(low, int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]))
    out: list[int] = []
    while len(out) < count:
        port = random.randrange(low // 2, low)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        if port not in out:
            out.append(port)
    return out


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


# ---- a cluster on this machine, from the registry (`permabeta broker cluster`) -----------

LAYOUT = "cluster.json"  # the nodes' names and ports, kept between runs


def layout(
    directory: Path, count: int, host: str, mqtt_port: int, cluster_host: str = "127.0.0.1"
) -> list[Node]:
    """The cluster's nodes: those kept in directory, else count new ones,
    node i's MQTT listener on host at mqtt_port + i, its NATS client port on
    4222 + i, its routes on 6222 + i and its monitoring on 8222 + i (NATS's
    own defaults, one up per node) on cluster_host, kept."""
    path = directory / LAYOUT
    if path.exists():
        try:
            return [Node(**n) for n in json.loads(path.read_text())["nodes"]]
        except (ValueError, TypeError, KeyError) as exc:
            raise BrokerError(f"{path}: not a cluster's layout ({exc}); remove it to make a new one") from exc
    if count != 1 and not 3 <= count <= 9:
        # (two nodes are no quorum: either one lost stops JetStream)
        raise BrokerError(f"a cluster of 3 to 9 nodes (or 1, for a trial), not {count}")
    nodes = [
        Node(f"n{i + 1}", cluster_host, 4222 + i, 6222 + i, mqtt_port + i, 8222 + i, host)
        for i in range(count)
    ]
    path.write_text(json.dumps({"nodes": [n.__dict__ for n in nodes]}, indent=1) + "\n")
    return nodes


class ClusterRunner:
    """The cluster's nodes run on this machine, their accounts written again
    and reloaded whenever the registry changes (as gateway/broker_config.py
    BrokerRunner does for Mosquitto), and a device's account that connects
    with a client id not its own revoked (ClientIdGuard). system: the system
    account's password; route: the routes'. say: where each change is told."""

    def __init__(
        self,
        cluster: NatsCluster,
        store: Any,
        operators: dict[str, str],
        system: str,
        route: str,
        say: Any = print,
        poll_s: float = 0.2,
        revoke: Callable[[str], None] | None = None,
    ) -> None:
        """revoke(device): how an impostor's account is revoked (the command
        line asks the gateway running on the database, which refuses it at
        once too); by default in the registry alone."""
        import queue

        from .registry import Registry

        self.cluster = cluster
        self.registry = Registry(store)
        self.operators = operators
        self.system = system
        self.keys = Keys(_bcrypt(system), route, cluster.tls)
        self.say = say
        self.poll_s = poll_s
        self._generation = -1
        self.unhashed = 0
        self.devices: frozenset[str] = frozenset()  # (read by the guard's thread)
        self.impostors: queue.Queue[tuple[str, str]] = queue.Queue()
        self._pending: dict[str, str] = {}  # impostor -> the client id it took, until revoked
        self.revoke = revoke or (lambda dev: self.registry.revoke(dev, time.time()) and None)

    def write(self, locked: frozenset[str] = frozenset()) -> bool:
        """Write the nodes' configurations if the registry changed (or some
        devices' accounts are to be locked for a moment); whether it did.
        Raises BrokerError if NATS would not read them (the old stay)."""
        generation = self.registry.generation()
        if generation == self._generation and not locked:
            return False
        nodes = [n.node for n in self.cluster.nodes]
        registered = self.registry.all()
        unhashed = write(self.cluster.dir, nodes, registered, self.operators, self.keys, locked)
        self.devices = frozenset(r.device for r in registered)
        if unhashed and unhashed != self.unhashed:
            self.say(
                f"{unhashed} registered device(s) have no password hash for the cluster: "
                "provision them again to let them in"
            )
        self.unhashed, self._generation = unhashed, generation
        return True

    def check(self) -> None:
        """Revoke each impostor told of since the last look (one whose
        revocation failed is tried again at the next), and give the device
        whose place it took a new connection; apply the registry's changes."""
        while not self.impostors.empty():
            user, client_id = self.impostors.get_nowait()
            self._pending.setdefault(user, client_id)
        displaced: set[str] = set()
        for user, client_id in list(self._pending.items()):
            got = self.registry.get(user)
            if got is not None and got.revoked is None:
                self.revoke(user)
                self.say(f"{user}: connected as client id {client_id!r}, not its own: revoked")
            del self._pending[user]
            if client_id in self.devices and client_id != user:
                displaced.add(client_id)
        if displaced:
            # (the session NATS 2.9 left it after the impostor's may not deliver to it: its
            # account locked for a moment closes its connection, and it connects afresh)
            self.write(frozenset(displaced))
            self.cluster.reload()
            self._generation = -1
            for dev in sorted(displaced):
                self.say(f"{dev}: its connection made anew (an impostor took its place)")
        if self.write():
            self.cluster.reload()
            self.say("the registry changed: the cluster's accounts reloaded")

    def run(self, stop: Any = lambda: False) -> None:
        """Start the nodes and watch the registry until stop() is true; a
        node that ends is started again, and the guard if it ended; the
        nodes are stopped on the way out. Raises BrokerError if they do not
        start."""
        import logging

        self.write()
        self.cluster.start()
        guard = ClientIdGuard(
            self.cluster.nats_urls,
            self.system,
            lambda user: user in self.devices,
            lambda user, cid: self.impostors.put((user, cid)),
            self.cluster.tls.context() if self.cluster.tls else None,
        )
        loop = _Loop(guard.run)
        try:
            while not stop():
                time.sleep(self.poll_s)
                try:
                    self.check()
                except Exception:  # (the database busy, a file not written: the next look tries again)
                    logging.getLogger(__name__).exception("could not apply the registry's change")
                for n in self.cluster.nodes:
                    if not n.running():  # (the others serve meanwhile; it takes its streams back)
                        code = n.proc.returncode if n.proc is not None else None
                        self.say(f"nats-server {n.node.name} ended (exit {code}): started again")
                        n.spawn()
                if not loop.alive():
                    self.say("the client-id guard ended: started again")
                    loop = _Loop(guard.run)
        finally:
            loop.stop()
            self.cluster.stop()


class _Loop:
    """An asyncio loop in a thread of its own, running make() until stop()."""

    def __init__(self, make: Callable[[], Any]) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self.task: Any = None
        self.thread = threading.Thread(target=self._run, args=(make,), name="client-id-guard", daemon=True)
        self.thread.start()

    def _run(self, make: Callable[[], Any]) -> None:
        import asyncio
        import logging

        self.task = self.loop.create_task(make())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except Exception:  # (told, and the runner starts it again)
            logging.getLogger(__name__).exception("the client-id guard failed")

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(5)


def _bcrypt(password: str) -> str:
    from .cli_registry import cluster_hash

    return cluster_hash(password)


# ---- the client id bound to the user name ---------------------------------------------------


def impostor(event: bytes, is_device: Callable[[str], bool]) -> str | None:
    """The user of a connect event (the cluster's `$SYS.ACCOUNT.*.CONNECT`)
    whose MQTT client id is not its user name, where that user is a device
    (is_device says); None for any other event, whatever
    its form. NATS 2.9 lets a client choose its MQTT client id, and a second
    connection with one takes the first's place (and may wipe its session):
    a device's account that connects as another id is not the device."""
    try:
        client = json.loads(event)["client"]
        user, client_id = client.get("user"), client.get("client_id")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not isinstance(user, str) or not is_device(user):
        return None
    if client.get("client_type") != "mqtt" or client_id == user:
        return None
    return user


class ClientIdGuard:
    """Reads the cluster's connect events (as SYSTEM_USER) and tells
    refuse(user, client_id) of each device's account that connected with a
    client id not its own; and, since an event sent while it was not
    listening is not sent again, looks at every connection the nodes have
    (their CONNZ) whenever it (re)subscribes and every SWEEP_S. Runs until
    cancelled; a cluster out of reach is tried again."""

    def __init__(
        self,
        servers: Sequence[str],
        password: str,
        is_device: Callable[[str], bool],
        refuse: Callable[[str, str], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """tls: the context of the nodes' NATS port, if it takes TLS alone."""
        self.servers = list(servers)
        self.tls = tls
        self.password = password
        self.is_device = is_device
        self.refuse = refuse
        self.ready = False
        self.sweeps = 0

    async def run(self) -> None:
        import asyncio
        import logging

        import nats
        from nats.errors import Error as NatsError

        log = logging.getLogger(__name__)
        while True:
            nc: Any = None
            try:
                nc = await nats.connect(
                    servers=self.servers,
                    user=SYSTEM_USER,
                    password=self.password,
                    name="permabeta-client-id-guard",
                    tls=self.tls,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    reconnected_cb=self._swept_soon,
                )

                async def told(msg: Any) -> None:
                    user = impostor(msg.data, self.is_device)
                    if user is not None:
                        client_id = json.loads(msg.data)["client"].get("client_id")
                        self.refuse(user, str(client_id)[:64])

                await nc.subscribe(f"$SYS.ACCOUNT.{ACCOUNT}.CONNECT", cb=told)
                await nc.flush()
                self.ready = True
                while True:
                    await self.sweep(nc)
                    self._sweep_now = asyncio.Event()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(SWEEP_S):
                            await self._sweep_now.wait()
            except (NatsError, OSError, ValueError) as exc:
                log.warning("client-id guard: %s; again in 1s", exc)
                await asyncio.sleep(1.0)
            finally:
                self.ready = False
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await nc.close()

    async def _swept_soon(self) -> None:
        event = getattr(self, "_sweep_now", None)
        if event is not None:
            event.set()

    async def sweep(self, nc: Any) -> None:
        """Every node's connections of the fleet's account, each checked as
        its connect event would be."""
        import asyncio

        inbox = nc.new_inbox()
        answers: list[bytes] = []

        async def kept(m: Any) -> None:
            answers.append(m.data)

        sub = await nc.subscribe(inbox, cb=kept)
        try:
            # (every node answers; an account's own CONNZ subject lists nothing in 2.9)
            req = json.dumps({"account": ACCOUNT, "auth": True, "limit": 1_000_000}).encode()
            await nc.publish("$SYS.REQ.SERVER.PING.CONNZ", req, reply=inbox)
            await asyncio.sleep(SWEEP_WAIT_S)
        finally:
            await sub.unsubscribe()
        for data in answers:
            for user, client_id in connections(data):
                if self.is_device(user) and client_id != user:
                    self.refuse(user, client_id[:64])
        self.sweeps += 1


def connections(answer: bytes) -> list[tuple[str, str]]:
    """(authorized user, MQTT client id) of each MQTT connection in a node's
    answer to a CONNZ request, whatever the answer's form."""
    try:
        conns = json.loads(answer)["data"]["connections"]
    except (ValueError, TypeError, KeyError):
        return []
    out = []
    for c in conns if isinstance(conns, list) else ():
        if isinstance(c, dict):
            user, client_id = c.get("authorized_user"), c.get("mqtt_client")
            if isinstance(user, str) and isinstance(client_id, str):
                out.append((user, client_id))
    return out
