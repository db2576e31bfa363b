"""The gateway's MQTT inbox (Gateway._inbox): each message is handled as
paho reads it, and what the broker kept for the gateway's persistent
session while it was away, given as soon as it connects, waits until the
gateway can answer it. On the session's real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from pathlib import Path

import pytest

from gateway.service import Gateway
from gateway.store import Store

from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .test_pool_workers import MakeDevice


def telemetry(dev: str, seq: int) -> str:
    msg = {"v": 1, "dev": dev, "seq": seq, "ts": time.time(), "sensors": {"temperature": 20.0}}
    return json.dumps(msg | {"actuators": {}, "features": {}})


async def _run(gw: Gateway) -> asyncio.Task[None]:
    task = asyncio.create_task(gw.run())
    await async_wait_for(gw.connected.is_set, 10, what="connected")
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_what_the_broker_kept_while_the_gateway_was_away_is_handled_once_it_can_answer(
    gw_db: Path | str, mosquitto: Mosquitto, ota_devices: MakeDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, client_id = mosquitto.gateway_url, f"gw-test-{secrets.token_hex(4)}"
    ready: list[bool] = []
    handle = Gateway.handle

    def watched(self: Gateway, topic: str, payload: bytes, retain: bool, carrier: str = "mqtt") -> None:
        if topic.endswith("/telemetry"):
            ready.append(self._client is not None and self.connected.is_set())
        handle(self, topic, payload, retain, carrier)

    monkeypatch.setattr(Gateway, "handle", watched)
    dev = ota_devices()
    with Store(gw_db) as store:
        gw = Gateway(url, store, client_id=client_id, api=None)
        task = await _run(gw)
        await asyncio.to_thread(dev.hello)
        await async_wait_for(lambda: gw.is_online(dev.id), 10, what="online")
        await _stop(task)
        # sent while the gateway is away: its session keeps them, and the broker gives them
        # as soon as it connects again, before its subscriptions are made anew
        for seq in range(1, 10):
            dev.client.publish(dev.topic("telemetry"), telemetry(dev.id, seq), qos=1)
        await asyncio.sleep(0.3)
        gw = Gateway(url, store, client_id=client_id, api=None)
        task = await _run(gw)
        await async_wait_for(lambda: store.telemetry_count(dev.id) == 9, 10, what="9 rows")
        await _stop(task)
    assert len(ready) == 9 and all(ready)
