"""The NATS cluster's configuration, as written (gateway/nats_cluster.py),
without a cluster: each device's account reaches its own subjects alone and
speaks MQTT only, a revoked device or one without a hash for the cluster has
none, only bcrypt hashes are recorded for it, and the connect events the
client-id guard reads give an impostor for nothing but a device's account
connected as another id, whatever their form."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli_registry import cluster_hash, password_hash
from gateway.nats_cluster import (
    ACCOUNT,
    MQTT_DELIVERY,
    SYSTEM_ACCOUNT,
    Keys,
    Node,
    connections,
    device_permissions,
    impostor,
    layout,
    subject,
    topic,
    users,
    write,
)
from gateway.registry import Registered, RegistryError, valid_cluster_hash

IDS = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)


def registered(dev: str, revoked: float | None = None, hashed: str | None = "") -> Registered:
    h = cluster_hash("pw") if hashed == "" else hashed
    return Registered(dev, "thermostat", "thermostat-v1", password_hash(dev, "pw"), 1.0, revoked, None, h)


@given(IDS)
def test_a_device_s_subjects_are_its_own_and_in_the_protocol_s_direction(dev: str) -> None:
    p = device_permissions(dev)
    pub, sub = p["publish"]["allow"], p["subscribe"]["allow"]
    assert all(s.startswith(f"pb.{dev}.") and "*" not in s and ">" not in s for s in pub)
    assert all(
        s.startswith(f"pb.{dev}.") and "*" not in s and ">" not in s for s in sub if s != MQTT_DELIVERY
    )
    assert f"pb.{dev}.telemetry" in pub and f"pb.{dev}.cmd" in sub and f"pb.{dev}.cmd" not in pub
    assert f"pb.{dev}.ota.chunk" in sub and f"pb.{dev}.ota.chunk" not in pub
    assert topic(subject(f"pb/{dev}/ota/status")) == f"pb/{dev}/ota/status"


def test_only_devices_let_in_have_an_account_and_each_speaks_mqtt_only(tmp_path: Path) -> None:
    regs = [registered("th-1"), registered("th-2", revoked=5.0), registered("th-3", hashed=None)]
    accounts, unhashed = users(regs, {"gateway": cluster_hash("g")})
    names = [a["user"] for a in accounts]
    assert names == ["gateway", "th-1", "th-2"] and unhashed == 1
    assert accounts[1]["allowed_connection_types"] == ["MQTT"] and "permissions" not in accounts[0]
    # the revoked: locked (no password it was given opens it, nothing to read), its rights to
    # publish kept (NATS 2.9.10 crashes at a reload that takes a retained message's publisher away)
    revoked = accounts[2]
    assert revoked["password"] != regs[1].cluster_hash and revoked["password"].startswith("$2b$")
    assert revoked["permissions"]["subscribe"] == {"deny": [">"]}
    assert revoked["permissions"]["publish"] == device_permissions("th-2")["publish"]
    assert users(regs[:1], {}, frozenset({"th-1"}))[0][0]["password"] != regs[0].cluster_hash
    nodes = [Node(f"n{i + 1}", "127.0.0.1", 4222 + i, 6222 + i, 1883 + i, 8222 + i) for i in range(3)]
    assert write(tmp_path, nodes, regs, {"gateway": cluster_hash("g")}, Keys(cluster_hash("s"), "r")) == 1
    conf = json.loads((tmp_path / "n2.conf").read_text())
    assert conf["server_name"] == "n2" and conf["mqtt"]["stream_replicas"] == 3
    routes = ["nats-route://cluster.route:r@127.0.0.1:6222", "nats-route://cluster.route:r@127.0.0.1:6224"]
    assert conf["cluster"]["routes"] == routes
    assert conf["cluster"]["authorization"] == {"user": "cluster.route", "password": "r"}
    # (NATS clients, routes and monitoring on the cluster's host; MQTT on the devices')
    assert conf["listen"].startswith("127.0.0.1:") and conf["http"].startswith("127.0.0.1:")
    assert [u["user"] for u in conf["accounts"][ACCOUNT]["users"]] == names
    assert (
        conf["system_account"] == SYSTEM_ACCOUNT
        and oct((tmp_path / "n2.conf").stat().st_mode & 0o777) == "0o600"
    )


def test_with_a_ca_every_listener_takes_tls_and_the_nodes_certificate_is_made_once(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from gateway.ca import create_ca, server_cert
    from gateway.errors import ConfigError
    from gateway.nats_cluster import MQTT_MAX_ACK_PENDING, NODE_CERT, cluster_tls

    ca = tmp_path / "ca"
    create_ca(ca)
    nodes = [Node(f"n{i + 1}", "127.0.0.1", 4222 + i, 6222 + i, 1883 + i, 8222 + i) for i in range(3)]
    with pytest.raises(ConfigError, match=r"lacks server\.pem, server\.key .*broker ca --out"):
        cluster_tls(ca, tmp_path, nodes)
    server_cert(ca)
    tls = cluster_tls(ca, tmp_path, nodes)
    cert = x509.load_pem_x509_certificate((tmp_path / NODE_CERT).read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert oct(tls.node_key.stat().st_mode & 0o777) == "0o600"
    # the same hosts: the same certificate; others: a new one for them
    made = tls.node_cert.read_bytes()
    assert cluster_tls(ca, tmp_path, nodes).node_cert.read_bytes() == made
    moved = [replace(n, host="10.0.0.7") for n in nodes]
    assert cluster_tls(ca, tmp_path, moved).node_cert.read_bytes() != made
    # a new CA (`broker ca --force`): a new certificate, of it (the nodes refuse the old one's routes)
    made = cluster_tls(ca, tmp_path, nodes).node_cert.read_bytes()
    create_ca(ca, force=True)
    server_cert(ca)
    assert cluster_tls(ca, tmp_path, nodes).node_cert.read_bytes() != made
    # the CA's key kept offline: what needs no new certificate runs; what does says what is missing
    (ca / "ca.key").rename(tmp_path / "ca.key.offline")
    tls = cluster_tls(ca, tmp_path, nodes)
    with pytest.raises(ConfigError, match=r"ca\.key is not there: bring the CA's key back"):
        cluster_tls(ca, tmp_path, moved)
    write(
        tmp_path,
        nodes,
        [registered("th-1")],
        {"gateway": cluster_hash("g")},
        Keys(cluster_hash("s"), "r", tls),
    )
    conf = json.loads((tmp_path / "n1.conf").read_text())
    assert conf["mqtt"]["tls"]["cert_file"] == str(tls.mqtt_cert)
    assert conf["tls"]["cert_file"] == str(tls.node_cert) and conf["tls"]["ca_file"] == str(tls.ca)
    assert conf["cluster"]["tls"]["verify"] is True and conf["cluster"]["tls"]["ca_file"] == str(tls.ca)
    # (a reload must leave MQTT's sessions the acknowledgements they had: see node_config)
    assert conf["mqtt"]["max_ack_pending"] == MQTT_MAX_ACK_PENDING


def test_a_cluster_s_layout_is_kept(tmp_path: Path) -> None:
    first = layout(tmp_path, 3, "0.0.0.0", 1883)
    assert [n.mqtt_port for n in first] == [1883, 1884, 1885]
    assert {n.host for n in first} == {"127.0.0.1"} and {n.mqtt_on for n in first} == {"0.0.0.0"}
    assert layout(tmp_path, 5, "10.0.0.1", 2000) == first  # (what the folder holds wins)
    for count in (2, 0, 10):
        with pytest.raises(Exception, match="3 to 9 nodes"):
            layout(tmp_path / str(count), count, "127.0.0.1", 1883)
    (tmp_path / "cluster.json").write_text("{")
    with pytest.raises(Exception, match="not a cluster's layout"):
        layout(tmp_path, 3, "127.0.0.1", 1883)


@given(st.text(max_size=80))
def test_only_a_bcrypt_hash_is_recorded_for_the_cluster(text: str) -> None:
    assert not valid_cluster_hash(text) or (text.startswith("$2") and len(text) == 60 and '"' not in text)


def test_what_provisioning_hashes_is_recorded(tmp_path: Path) -> None:
    from gateway.registry import Registry
    from gateway.store import Store

    with Store(tmp_path / "gw.db") as store:
        reg = Registry(store)
        h = cluster_hash("a password")
        assert valid_cluster_hash(h)
        got = reg.register(
            "th-9", "thermostat", "thermostat-v1", password_hash("th-9", "p"), time.time(), None, h
        )
        assert got.cluster_hash == h and got.as_dict()["cluster"] is True
        for bad in (h + "\n", h[:-1] + '"', "$7$" + h[3:], h.replace("$04$", "$12$")):
            with pytest.raises(RegistryError, match="bcrypt"):
                reg.register(
                    "th-9", "thermostat", "thermostat-v1", password_hash("th-9", "p"), 1.0, None, bad
                )


def event(user: object, client_id: object, kind: object = "mqtt") -> bytes:
    return json.dumps(
        {"type": "x", "client": {"user": user, "client_id": client_id, "client_type": kind}}
    ).encode()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["th-1", "mqtt"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
EVENTS = st.one_of(
    st.binary(max_size=200), st.builds(event, JSON, JSON, JSON), JSON.map(lambda v: json.dumps(v).encode())
)


def test_an_impostor_is_a_device_s_account_with_another_s_client_id() -> None:
    devices = {"th-1", "th-2"}.__contains__
    assert impostor(event("th-2", "th-1"), devices) == "th-2"
    assert impostor(event("th-2", "th-2"), devices) is None
    assert impostor(event("gateway", "pb-gateway"), devices) is None  # (not a device)
    assert impostor(event("th-2", None, "nats"), devices) is None  # (not MQTT: refused anyway)
    assert impostor(event(["th-2"], "th-1"), devices) is None


@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(event, JSON, JSON, JSON),
        JSON.map(lambda v: json.dumps(v).encode()),
    )
)
def test_no_event_s_form_stops_the_guard(data: bytes) -> None:
    got = impostor(data, {"th-1"}.__contains__)
    assert got is None or got == "th-1"


@given(JSON.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=100))
def test_no_connz_answer_s_form_stops_the_guard(data: bytes) -> None:
    assert all(isinstance(u, str) and isinstance(c, str) for u, c in connections(data))


def test_a_connz_answer_gives_each_mqtt_connection_s_user_and_client_id() -> None:
    conns = [
        {"authorized_user": "th-1", "mqtt_client": "th-2", "type": "mqtt"},
        {"authorized_user": "gateway", "type": "nats"},
        "not a connection",
    ]
    answer = json.dumps({"server": {}, "data": {"connections": conns}}).encode()
    assert connections(answer) == [("th-1", "th-2")]
