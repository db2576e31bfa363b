"""One device's credentials on the NATS cluster (docs/security.md 7.10): it
reaches its own subjects only, in the protocol's direction, on every node;
it cannot read what NATS's MQTT side delivers to others; a password that is
not its own, a device never registered or registered without a hash for
the cluster is refused; a revoked one is cut off and refused."""

from __future__ import annotations

import json
import time

import pytest

from ..support.mqtt import TestClient
from ..support.nats import GATEWAY_PASSWORD, SYSTEM_PASSWORD, TestCluster, connack
from ..support.wait import async_wait_for, wait_for

pytestmark = pytest.mark.cluster

REFUSED = (4, 5)  # bad user name or password, not authorised


def telemetry(dev: str, seq: int) -> str:
    msg = {"v": 1, "dev": dev, "seq": seq, "ts": time.time(), "sensors": {"temperature": 20.0}}
    return json.dumps(msg | {"actuators": {}, "features": {}})


def test_a_device_reaches_its_own_subjects_only(cluster: TestCluster) -> None:
    a, b = "th-a1", "th-b1"
    pa, pb = cluster.register(a), cluster.register(b)
    cluster.let_in(a, pa)
    cluster.let_in(b, pb)
    gw = TestClient(cluster.gateway_url(0), "gateway", cluster.gateway_url(0).password, client_id="gw-watch")
    gw.subscribe("pb/#", qos=1)
    # the attacker on another node than the victim and the gateway
    mallory = TestClient(cluster.mqtt_url(1), a, pa, client_id=a)
    for t in ("pb/th-b1/cmd", "pb/+/cmd", "pb/#", "#", "$MQTT/sub/#", "$MQTT/#", "+/+/+"):
        mallory.subscribe(t, qos=1)
    victim = TestClient(cluster.mqtt_url(2), b, pb, client_id=b)
    victim.subscribe(f"pb/{b}/cmd", qos=1)
    time.sleep(0.5)
    # what it may not write: another's kinds, its own of the gateway's direction
    for t in (f"pb/{b}/telemetry", f"pb/{b}/hello", f"pb/{a}/ota/chunk", f"pb/{a}/cmd", "pbha/x/set/y"):
        mallory.publish(t, telemetry(b, 1), qos=1)
        mallory.publish(t, telemetry(b, 1), qos=0)
    mallory.publish(f"pb/{a}/telemetry", telemetry(a, 7), qos=0)  # (its own: passed on)
    # what is meant for the victim
    gw.publish(f"pb/{b}/cmd", b'{"v":1,"id":"c1","op":"ping"}', qos=1)
    assert [m[0] for m in victim.messages(2)] == [f"pb/{b}/cmd"]
    got = mallory.messages(1)
    assert got == [], got
    seen = {m[0] for m in gw.messages(1)}
    assert f"pb/{a}/telemetry" in seen, seen
    assert seen <= {f"pb/{a}/telemetry", f"pb/{b}/cmd"}, seen
    for c in (gw, mallory, victim):
        c.close()


def test_who_is_not_let_in_is_refused_on_every_node(cluster: TestCluster) -> None:
    pa = cluster.register("th-a2")
    pn = cluster.register("th-n2", hashed=False)  # (provisioned for Mosquitto only)
    cluster.let_in("th-a2", pa)
    for node in cluster.nodes:
        assert connack(node, "th-a2", pa + "x", "th-a2") in REFUSED
        assert connack(node, "th-z2", pa, "th-z2") in REFUSED  # (never registered)
        assert connack(node, "th-n2", pn, "th-n2") in REFUSED
        assert connack(node, "th-a2", pa, "th-a2") == 0


def test_a_revoked_device_is_cut_off_and_refused(cluster: TestCluster) -> None:
    from gateway.registry import Registry

    pa = cluster.register("th-r3")
    cluster.let_in("th-r3", pa)
    dev = TestClient(cluster.mqtt_url(1), "th-r3", pa, client_id="th-r3")
    # (a device retains its hello: a reload that took its account away would end NATS 2.9.10)
    dev.publish("pb/th-r3/hello", b"{}", qos=1, retain=True)
    dev.publish("pb/th-r3/state", b"{}", qos=1, retain=True)
    dev.c.reconnect_delay_set(60, 60)  # (it would otherwise come back: it is refused instead)
    gone: list[int] = []
    dev.c.on_disconnect = lambda *a: gone.append(1)
    Registry(cluster.store).revoke("th-r3", time.time())
    cluster.apply()
    wait_for(lambda: gone, 10, what="the revoked device disconnected")
    for node in cluster.nodes:
        assert connack(node, "th-r3", pa, "th-r3") in REFUSED
    dev.close()
    Registry(cluster.store).restore("th-r3")
    cluster.apply()
    cluster.let_in("th-r3", pa)
    assert all(n.running() for n in cluster.nodes)


async def test_a_device_s_account_speaks_mqtt_only(cluster: TestCluster) -> None:
    """On a NATS connection a device could subscribe to where NATS's MQTT side
    delivers every device's QoS 1 messages ($MQTT.sub.>, which its MQTT
    subscriptions need): its account is refused there."""
    import nats
    from nats.errors import Error as NatsError

    pa = cluster.register("th-a4")
    cluster.let_in("th-a4", pa)
    with pytest.raises((NatsError, OSError)):
        await nats.connect(
            servers=cluster.nats_urls, user="th-a4", password=pa, allow_reconnect=False, connect_timeout=3
        )
    # (the gateway's account may: it reads the work queue there)
    nc = await nats.connect(servers=cluster.nats_urls, user="gateway", password=GATEWAY_PASSWORD)
    await nc.close()


async def test_the_guard_finds_an_impostor_that_connected_before_it_listened(cluster: TestCluster) -> None:
    """A connect event sent while the guard was away is not sent again: it
    looks at every node's connections when it subscribes (and every while)."""
    import asyncio
    import socket

    from firmware.pb.net import mqtt
    from gateway.nats_cluster import ClientIdGuard

    pa = cluster.register("th-a5")
    cluster.register("th-b5")
    cluster.let_in("th-a5", pa)
    node = cluster.nodes[2].node
    with socket.create_connection((node.host, node.mqtt_port)) as s:
        s.sendall(mqtt.connect("th-b5", 30, clean=True, user="th-a5", password=pa))
        assert s.recv(4)[3] == 0
        told: list[tuple[str, str]] = []
        guard = ClientIdGuard(
            cluster.nats_urls,
            SYSTEM_PASSWORD,
            {"th-a5", "th-b5"}.__contains__,
            lambda u, c: told.append((u, c)),
        )
        task = asyncio.create_task(guard.run())
        try:
            await async_wait_for(lambda: ("th-a5", "th-b5") in told, 15, what="the impostor found")
            assert guard.sweeps >= 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
