"""One device's credentials against a pool on the NATS cluster (docs/
security.md 7.10): what it may publish on its own subjects (messages up to
NATS's 1 MiB, garbage, a flood) stops no worker, keeps nothing of another
device from being stored, and is not given again and again by the work
queue: each bad message is refused once, with its reason."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from ..support.mqtt import TestClient
from ..support.nats import TestCluster
from ..support.wait import async_wait_for
from .conftest import Devices, StartGateway
from .test_cluster_access import telemetry

pytestmark = pytest.mark.cluster


def _attack(dev: str) -> list[tuple[str, bytes]]:
    """What the attacker publishes on its own topics, each kind of bad."""
    pad = "x" * (1024 * 1024 - 2048)
    nested = b'{"v":1,"dev":"' + dev.encode() + b'","seq":1,"sensors":' + b"[" * 5000 + b"]" * 5000 + b"}"
    return [
        (f"pb/{dev}/telemetry", telemetry(dev, 1)[:-1].encode() + b',"pad":"' + pad.encode() + b'"}'),
        (f"pb/{dev}/telemetry", b"\xff\xfe" * 40_000),  # (past the work queue's 64 KiB: not kept)
        (f"pb/{dev}/telemetry", b"\xc3\x28 not json"),
        (f"pb/{dev}/telemetry", nested),
        (f"pb/{dev}/telemetry", json.dumps({"v": 1, "dev": "th-someone-else", "seq": 2}).encode()),
        (f"pb/{dev}/event", b'{"v":1,"dev":"' + dev.encode() + b'","kind":' + b"1" * 400 + b"}"),
        (f"pb/{dev}/hello", json.dumps({"v": 1, "dev": dev, "pad": pad}).encode()),
        (f"pb/{dev}/state", b"[" * 100_000),
    ]


async def test_what_one_device_publishes_stops_no_worker_and_loses_no_other_devices_data(
    cluster: TestCluster, start_gateway: StartGateway, devices: Devices
) -> None:
    a = await start_gateway(0, "gw-a")
    b = await start_gateway(1, "gw-b")
    honest = await devices.start(2)
    await async_wait_for(lambda: a.store.telemetry_count(honest.id) >= 2, 20, what="honest telemetry")

    mallory = "th-mallory"
    password = cluster.register(mallory)
    await asyncio.to_thread(cluster.let_in, mallory, password)
    m = TestClient(cluster.mqtt_url(1), mallory, password, client_id=mallory)
    try:
        for qos in (0, 1):
            for topic, payload in _attack(mallory):
                m.publish(topic, payload, qos=qos)
        for seq in range(3000):  # a flood of its own telemetry, well formed
            m.publish(f"pb/{mallory}/telemetry", telemetry(mallory, 100 + seq), qos=0)
        before = a.store.telemetry_count(honest.id)
        # the honest device goes on being stored while the pool works through the flood
        await async_wait_for(
            lambda: a.store.telemetry_count(honest.id) >= before + 3, 30, what="honest telemetry after"
        )
    finally:
        m.close()

    for w in (a, b):
        assert not w.task.done(), w.task
    # the bad ones refused, each with its reason; none taken as another device's
    rejects = {**a.gw.rejects}
    for reason, n in b.gw.rejects.items():
        rejects[reason] = rejects.get(reason, 0) + n
    assert rejects.get("too_large", 0) >= 2 and rejects.get("bad_json", 0) >= 2, rejects
    assert a.store.telemetry_count("th-someone-else") == 0
    # the work queue is drained: nothing of the attack is given again and again
    import nats

    nc = await nats.connect(servers=cluster.nats_urls, user="gateway", password=cluster.account[1])
    try:
        js = nc.jetstream()

        async def drained() -> bool:
            info = await js.consumer_info("PB_DEVICES", "gateway")
            return info.num_pending == 0 and info.num_ack_pending == 0

        deadline = time.monotonic() + 30
        while not await drained():
            assert time.monotonic() < deadline, await js.consumer_info("PB_DEVICES", "gateway")
            await asyncio.sleep(0.5)
    finally:
        await nc.close()
    # its well-formed flood is its own rows alone, each once at most
    assert 0 < a.store.telemetry_count(mallory) <= 3000
    assert honest.device is not None and honest.device.client.up
