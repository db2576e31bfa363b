"""The device's MQTT client (firmware/pb/net/mqtt_client.py) against a real
Mosquitto, through a real TCP proxy that fails the link on demand."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from firmware.pb.net import mqtt_client, tls
from firmware.pb.net.mqtt_client import MQTTClient

from ..support.mosquitto import GATEWAY_PASSWORD, Mosquitto
from ..support.mqtt import TestClient
from ..support.proxy import LinkProxy
from ..support.wait import async_wait_for

USER = "gateway"  # may write anywhere: these tests are about the link, not the ACL
# (each listener has an account of its own: one account is one connection)


def topic(name: str) -> str:
    return f"pb/t-{secrets.token_hex(3)}/{name}"


@pytest.fixture
async def proxy(mosquitto: Mosquitto) -> AsyncIterator[LinkProxy]:
    p = await LinkProxy(mosquitto.port).start()
    yield p
    await p.stop()


@contextlib.asynccontextmanager
async def running(client: MQTTClient) -> AsyncIterator[MQTTClient]:
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(task, 5)


def client_for(mosquitto: Mosquitto, port: int, **kw: Any) -> MQTTClient:
    """A client on an account of its own (one account is one connection)."""
    kw.setdefault("backoff_min_ms", 50)
    kw.setdefault("backoff_max_ms", 400)
    user, password = mosquitto.operator()
    return MQTTClient(f"c-{secrets.token_hex(4)}", "127.0.0.1", port, user, password, **kw)


def listener(mosquitto: Mosquitto, t: str) -> TestClient:
    c = TestClient(mosquitto, *mosquitto.operator())
    c.subscribe(t)
    return c


async def received(c: TestClient, n: int, timeout: float = 10) -> list[tuple[str, bytes, bool]]:
    got: list[tuple[str, bytes, bool]] = []

    def more() -> bool:
        got.extend(c.messages(0.05))
        return len(got) >= n

    await async_wait_for(more, timeout, what=f"{n} messages")
    return got


async def test_qos1_unacknowledged_is_resent_after_the_link_fails(
    mosquitto: Mosquitto, proxy: LinkProxy
) -> None:
    t = topic("telemetry")
    sub = listener(mosquitto, t)
    c = client_for(mosquitto, proxy.port, ack_timeout_ms=800, keepalive=30)
    async with running(c):
        await async_wait_for(lambda: c.up, 5)
        proxy.freeze()  # the PUBLISH goes nowhere, no PUBACK comes back
        c.publish(t, b"must arrive", qos=1)
        await asyncio.sleep(0.3)
        assert c.pending() == 1
        proxy.cut()
        proxy.thaw()
        got = await received(sub, 1)
        assert got[0][1] == b"must arrive"
        await async_wait_for(lambda: c.pending() == 0, 5, what="PUBACK after the resend")
        assert c.stats["retransmits"] >= 1 and c.stats["connects"] >= 2
    sub.close()


async def test_a_silent_link_is_detected_by_keepalive(mosquitto: Mosquitto, proxy: LinkProxy) -> None:
    downs: list[str] = []
    c = client_for(mosquitto, proxy.port, keepalive=1)
    c.on_down = downs.append
    async with running(c):
        await async_wait_for(lambda: c.up, 5)
        proxy.freeze()  # nothing closes: only the missing PINGRESP tells
        await async_wait_for(lambda: not c.up, 5, what="the client noticing the dead link")
        assert "no traffic" in downs[0]
        proxy.thaw()
        proxy.cut()
        await async_wait_for(lambda: c.up, 5, what="reconnect")


async def test_queue_is_bounded_counts_drops_and_keeps_qos1(mosquitto: Mosquitto) -> None:
    t = topic("telemetry")
    sub = listener(mosquitto, t)
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    dead = port.getsockname()[1]
    port.close()
    c = client_for(mosquitto, dead, queue_size=5)  # nothing listens: the client cannot connect
    async with running(c):
        assert c.publish(t, b"reply-1", qos=1)
        for i in range(10):
            c.publish(t, b"tel-%d" % i, qos=0)
        assert c.stats["dropped"] == 6
        assert c.pending() == 5
        assert [m[1] for m in c._queue] == [b"reply-1", b"tel-6", b"tel-7", b"tel-8", b"tel-9"]
        assert (c.last_error and "Errno" in c.last_error) or not c.up
    sub.close()


async def test_dns_is_resolved_once(
    mosquitto: Mosquitto, proxy: LinkProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = socket.getaddrinfo

    def counting(host: str, *a: Any, **k: Any) -> Any:
        calls.append(host)
        return real(host, *a, **k)

    monkeypatch.setattr(mqtt_client.socket, "getaddrinfo", counting)
    c = MQTTClient(
        "dns-once", "localhost", proxy.port, USER, GATEWAY_PASSWORD, backoff_min_ms=50, backoff_max_ms=100
    )
    async with running(c):
        await async_wait_for(lambda: c.up, 5)
        for n in (2, 3, 4):
            proxy.cut()
            await async_wait_for(lambda n=n: c.up and c.stats["connects"] == n, 5, what=f"connect {n}")
    assert c.stats["connects"] == 4
    assert calls.count("localhost") == 1


async def test_last_will_on_link_loss_not_on_close(mosquitto: Mosquitto, proxy: LinkProxy) -> None:
    will_topic = topic("state")
    sub = listener(mosquitto, will_topic)
    c = client_for(mosquitto, proxy.port, will=(will_topic, b"offline", 1, False))
    async with running(c):
        await async_wait_for(lambda: c.up, 5)
        proxy.cut()
        got = await received(sub, 1)
        assert got[0][1] == b"offline"
        await async_wait_for(lambda: c.up, 5)
    # close() sends DISCONNECT: the broker discards the will
    assert sub.messages(0.5) == []
    sub.close()


async def test_large_payloads_both_ways_and_oversized_inbound_skipped(mosquitto: Mosquitto) -> None:
    t_out, t_in = topic("event"), topic("cmd")
    sub = listener(mosquitto, t_out)
    inbox: list[bytes] = []
    c = client_for(mosquitto, mosquitto.port, max_packet=8192)
    c.subscribe(t_in, 1)
    c.on_message = lambda topic, payload, retain: inbox.append(payload)
    big = bytes(range(256)) * 24  # 6 KB
    async with running(c):
        await async_wait_for(lambda: c.up, 5)
        await asyncio.sleep(0.2)  # SUBACK
        c.publish(t_out, big, qos=1)
        got = await received(sub, 1)
        assert got[0][1] == big
        sub.publish(t_in, b"x" * 20000)  # larger than the client takes
        sub.publish(t_in, big)
        await async_wait_for(lambda: inbox, 5)
        assert inbox == [big]
        assert c.stats["skipped"] == 1 and c.up
    sub.close()


async def test_refused_credentials_back_off_and_never_raise(mosquitto: Mosquitto) -> None:
    c = MQTTClient(
        "bad-creds", "127.0.0.1", mosquitto.port, USER, "wrong", backoff_min_ms=50, backoff_max_ms=200
    )
    async with running(c):
        await async_wait_for(lambda: c.last_error, 5)
        await asyncio.sleep(0.6)
        assert "not authorized" in (c.last_error or "") or "bad user name" in (c.last_error or "")
        assert not c.up
    assert c.stats["connects"] == 0


async def test_a_ca_file_missing_reads_as_tls_and_is_retried_never_raised(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user, password = mosquitto.operator()
    c = tls.MQTTClient("c-tls", "127.0.0.1", mosquitto.port, user, password, ssl=str(tmp_path / "ca.der"))
    c.backoff_min_ms, c.backoff_max_ms = 50, 400
    said: list[str] = []

    def three() -> bool:
        said.extend(line for line in capsys.readouterr().out.splitlines() if "broker: " in line)
        return len(said) >= 3

    async with running(c):
        await async_wait_for(three, 5, what="three failed connects")
        assert not c.up
    assert all(line.startswith("pb[c-tls]: broker: MqttError: TLS: cannot load the CA ") for line in said), (
        said
    )
    assert all(re.search(r"; again in \d+ ms$", line) for line in said), said
    assert c.stats["connects"] == 0


def test_backoff_is_jittered_capped_and_grows() -> None:
    c = MQTTClient("x", "127.0.0.1", 1, backoff_min_ms=500, backoff_max_ms=30000)
    for attempt in range(20):
        cap = min(500 << attempt, 30000)
        delays = {c._backoff(attempt) for _ in range(50)}
        assert all(cap // 2 <= d <= cap for d in delays)
        assert len(delays) > 1


async def test_a_wait_cancelled_as_what_it_waits_for_ends_is_cancelled() -> None:
    # CPython 3.11's asyncio.wait_for returned the result and let the task run on: a virtual
    # device's link, cancelled at a test's end as its CONNACK came, waited for ever after
    from firmware.pb.compat import wait_for_ms

    fut = asyncio.get_running_loop().create_future()

    async def waiting() -> str:
        await wait_for_ms(fut, 1000)
        return "ran on"

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0)
    fut.set_result(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # and a wait that times out says so, having cancelled what it waited for
    slow = asyncio.create_task(asyncio.sleep(10))
    with pytest.raises(TimeoutError):
        await wait_for_ms(slow, 20)
    await asyncio.sleep(0)
    assert slow.cancelled()
