"""A pool of gateway workers on the NATS cluster: the work queue gives each
telemetry message to one worker, and what a worker took but had not
acknowledged when it ended goes to another (at least once); hellos, states
and replies reach every worker through MQTT, each worker on its own node."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest

from ..support.mqtt import TestClient
from ..support.nats import TestCluster
from ..support.wait import async_wait_for
from .conftest import StartGateway, Worker

pytestmark = pytest.mark.cluster

N = 600


def hello(dev: str) -> str:
    msg = {"v": 1, "dev": dev, "model": "thermostat", "board": "thermostat-v1", "runtime": "0.1.0"}
    msg |= {"platform": "test", "api": 1, "features": {}, "caps": ["relay", "temperature"]}
    msg |= {"heap_free": 50000, "boot_count": 1, "reset_cause": "power_on", "keepalive": 30}
    return json.dumps(msg | {"telemetry_s": 10, "ota": {"counter": 0, "manifest": None, "state": "factory"}})


def telemetry(dev: str, seq: int) -> str:
    msg = {"v": 1, "dev": dev, "seq": seq, "ts": time.time(), "sensors": {"temperature": 20.0}}
    return json.dumps(msg | {"actuators": {}, "features": {}})


def stored(workers: list[Worker], dev: str) -> Counter[int]:
    rows = workers[0].store.telemetry(dev, limit=10 * N)
    return Counter(r.seq for r in rows if r.seq is not None)


async def test_a_pool_splits_the_work_queue_and_a_worker_stopped_loses_nothing(
    cluster: TestCluster, start_gateway: StartGateway
) -> None:
    a = await start_gateway(node=0, worker="gw-a")
    b = await start_gateway(node=1, worker="gw-b")
    await async_wait_for(
        lambda: a.gw.pool.members == b.gw.pool.members == ["gw-a", "gw-b"], 10, what="a pool"
    )
    dev = "th-pool1"
    password = cluster.register(dev)
    await asyncio.to_thread(cluster.let_in, dev, password)
    d = TestClient(cluster.mqtt_url(2), dev, password, client_id=dev)
    d.publish(f"pb/{dev}/hello", hello(dev), qos=1, retain=True)
    d.publish(f"pb/{dev}/state", '{"v":1,"dev":"th-pool1","state":"online"}', qos=1, retain=True)
    # (both workers hear the hello, each on its own node)
    await async_wait_for(lambda: a.gw.is_online(dev) and b.gw.is_online(dev), 10, what="online at both")
    for seq in range(N // 2):
        d.publish(f"pb/{dev}/telemetry", telemetry(dev, seq), qos=1)
    await async_wait_for(lambda: len(stored([a], dev)) == N // 2, 20, what="the first half stored")
    assert a.gw.cluster is not None and b.gw.cluster is not None
    assert a.gw.cluster.taken > 0 and b.gw.cluster.taken > 0, (a.gw.cluster.taken, b.gw.cluster.taken)
    assert max(stored([a], dev).values()) == 1  # (each once)
    # one worker ends; the other takes all that comes, and what the first had not acknowledged
    await a.stop()
    for seq in range(N // 2, N):
        d.publish(f"pb/{dev}/telemetry", telemetry(dev, seq), qos=1)
    await async_wait_for(lambda: set(stored([a], dev)) == set(range(N)), 30, what="everything stored")
    d.close()


async def test_what_the_database_did_not_take_is_given_again(
    cluster: TestCluster, start_gateway: StartGateway
) -> None:
    w = await start_gateway(node=0)
    dev = "th-db1"
    password = cluster.register(dev)
    await asyncio.to_thread(cluster.let_in, dev, password)
    d = TestClient(cluster.mqtt_url(1), dev, password, client_id=dev)
    d.publish(f"pb/{dev}/hello", hello(dev), qos=1, retain=True)
    await async_wait_for(lambda: w.store.device(dev) is not None, 10, what="hello")
    real = w.store.add_telemetry
    refused: list[int] = []

    def out_of_reach(rows: Any) -> Any:
        if len(refused) < 3:  # (the database down for three batches)
            refused.append(len(rows))
            raise OSError("the database is out of reach")
        return real(rows)

    w.store.add_telemetry = out_of_reach  # type: ignore[method-assign]
    for seq in range(50):
        d.publish(f"pb/{dev}/telemetry", telemetry(dev, seq), qos=1)
    await async_wait_for(lambda: set(stored([w], dev)) == set(range(50)), 30, what="every row, in the end")
    assert len(refused) == 3 and max(stored([w], dev).values()) == 1
    d.close()
