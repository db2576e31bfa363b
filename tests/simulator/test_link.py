"""The simulated link (simulator/link.py): its MQTT framing as pure code,
then the proxy between real clients (virtual devices, or plain MQTT clients
where no device is needed) and the session's Mosquitto, with its faults."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.pb.net import mqtt
from simulator.device import VirtualDevice
from simulator.link import (
    Framer,
    FramingError,
    Link,
    LinkProfile,
    Packet,
    Publish,
    client_id,
    encode,
)

from ..conftest import unique_id
from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import MakeDevice, Rig

# ---- framing: pure ------------------------------------------------------------

_publishes = st.builds(
    lambda topic, payload, qos, retain, dup, pid: Publish(
        topic, payload, qos, retain, dup and qos > 0, pid if qos else 0
    ).encode(),
    st.binary(min_size=1, max_size=40),
    st.binary(max_size=300),
    st.integers(0, 1),
    st.booleans(),
    st.booleans(),
    st.integers(1, 65535),
)
_others = st.builds(
    lambda kind, body: encode(kind << 4 | (2 if kind in (8, 10) else 0), body),
    st.sampled_from([2, 4, 8, 9, 10, 11, 12, 13, 14]),
    st.binary(max_size=200),
)
# long enough for a two- and three-byte remaining length
_large = st.integers(100, 20000).map(lambda n: Publish(b"pb/x/ota/chunk", bytes(n)).encode())
_streams = st.lists(st.one_of(_publishes, _others, _large), min_size=1, max_size=12)


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    at = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(at)]


@settings(max_examples=150, deadline=None)
@given(_streams, st.lists(st.integers(0, 50000), max_size=20))
def test_any_split_of_a_stream_parses_to_the_same_packets(packets: list[Packet], cuts: list[int]) -> None:
    stream = b"".join(p.raw for p in packets)
    framer = Framer()
    got = [x for piece in _split(stream, cuts) for x in framer.feed(piece)]
    assert got == packets
    assert framer.at_boundary
    for p in packets:
        assert encode(p.raw[0], p.body).raw == p.raw
        if p.type == mqtt.PUBLISH:
            assert Publish.parse(p).encode().raw == p.raw


@settings(max_examples=150, deadline=None)
@given(_streams, st.lists(st.integers(0, 50000), max_size=20), st.data())
def test_parsing_switched_on_and_off_between_reads_loses_and_moves_nothing(
    packets: list[Packet], cuts: list[int], data: st.DataObject
) -> None:
    """What a proxy relies on: parsed packets and passed-on runs, joined,
    are the stream; every packet it does parse is a whole one of the stream."""
    stream = b"".join(p.raw for p in packets)
    starts = {}
    at = 0
    for p in packets:
        starts[at] = p
        at += len(p.raw)
    framer = Framer()
    out = []
    for piece in _split(stream, cuts):
        out += framer.feed(piece, parse=data.draw(st.booleans()))
    assert b"".join(x if isinstance(x, bytes) else x.raw for x in out) == stream
    at = 0
    for x in out:
        if isinstance(x, Packet):
            assert starts.get(at) == x
            at += len(x.raw)
        else:
            at += len(x)


def test_a_packet_over_the_limit_is_passed_on_unparsed() -> None:
    big = Publish(b"t", bytes(5000)).encode().raw
    framer = Framer(max_size=1000)
    out = framer.feed(big[:100]) + framer.feed(big[100:] + mqtt.pingreq())
    assert b"".join(x if isinstance(x, bytes) else x.raw for x in out) == big + mqtt.pingreq()
    assert out[-1] == Packet(mqtt.pingreq(), 2)
    assert not any(isinstance(x, Packet) and x.type == mqtt.PUBLISH for x in out)


def test_a_remaining_length_over_four_bytes_is_a_framing_error() -> None:
    with pytest.raises(FramingError):
        Framer().feed(b"\x30\xff\xff\xff\xff\x01")


def test_client_id_and_topic_are_read_from_the_device_s_own_encoding() -> None:
    connect = mqtt.connect("th-7", 30, True, "th-7", b"pw", ("pb/th-7/state", b"{}", 1, True))
    (packet,) = Framer().feed(connect)
    assert isinstance(packet, Packet) and client_id(packet) == "th-7"
    (pub,) = Framer().feed(mqtt.publish_header("pb/th-7/ota/chunk", 3, 1, False, False, 9) + b"abc")
    assert isinstance(pub, Packet) and pub.topic() == b"pb/th-7/ota/chunk"
    assert Publish.parse(pub) == Publish(b"pb/th-7/ota/chunk", b"abc", 1, False, False, 9)
    with pytest.raises(FramingError):
        client_id(pub)


def test_a_profile_refuses_impossible_values() -> None:
    p = LinkProfile()
    with pytest.raises(ValueError):
        p.corrupt = 1.5
    with pytest.raises(ValueError):
        p.down_latency_ms = -1
    with pytest.raises(ValueError):
        LinkProfile(drop_chunk=2)


# ---- the proxy, with plain MQTT clients -----------------------------------------


@pytest.fixture
async def link(mosquitto: Mosquitto) -> AsyncIterator[Link]:
    async with Link.to(mosquitto.url, seed=7) as lk:
        yield lk


def _device_user(mosquitto: Mosquitto) -> tuple[str, str]:
    dev, password = unique_id("lk"), secrets.token_urlsafe(12)
    mosquitto.add_user(dev, password)
    return dev, password


def _through(link: Link, dev: str, password: str) -> aiomqtt.Client:
    """A client connecting through the link as the device."""
    return aiomqtt.Client(
        "127.0.0.1",
        link.port,
        identifier=dev,
        username=dev,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V311,
    )


def _direct(mosquitto: Mosquitto) -> aiomqtt.Client:
    """An account with the gateway's rights, straight to the broker."""
    user, password = mosquitto.operator()
    return aiomqtt.Client(
        "127.0.0.1",
        mosquitto.port,
        identifier=f"lk-gw-{secrets.token_hex(4)}",
        username=user,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V311,
    )


async def _collect(
    client: aiomqtt.Client, until: str, timeout: float = 5, end: bytes = b"end"
) -> list[tuple[str, bytes, int]]:
    """(topic, payload, qos) of every message up to the payload `end` on
    topic `until` (a topic the device's ACL lets it read)."""
    got: list[tuple[str, bytes, int]] = []
    async with asyncio.timeout(timeout):
        async for m in client.messages:
            if m.topic.value == until and m.payload == end:
                return got
            assert isinstance(m.payload, bytes)
            got.append((m.topic.value, m.payload, m.qos))
    raise AssertionError("the message stream ended")


_N = 12  # chunks (even: with reorder every one is released by the next)


async def _chunks_and_others(
    link: Link, mosquitto: Mosquitto, dev: str, password: str, qos: int
) -> tuple[list[tuple[str, bytes, int]], dict[str, list[bytes]]]:
    """Publish _N messages on each of the chunk topic and three near it, to
    a subscriber behind the link; what it received, and what was sent."""
    topics = [f"pb/{dev}/ota/chunk", f"pb/{dev}/ota/offer", f"pb/{dev}/cmd"]
    sent: dict[str, list[bytes]] = {t: [] for t in topics}
    end = f"pb/{dev}/ota/offer"
    async with _through(link, dev, password) as sub, _direct(mosquitto) as pub:
        await sub.subscribe([(f"pb/{dev}/ota/#", qos), (f"pb/{dev}/cmd", qos)])
        receiving = asyncio.create_task(_collect(sub, end))
        for i in range(_N):
            for t in topics:
                payload = f"{t}#{i:03d}:".encode() * 3
                sent[t].append(payload)
                await pub.publish(t, payload, qos=qos)
        await pub.publish(end, b"end", qos=qos)
        return await receiving, sent


def _on(got: list[tuple[str, bytes, int]], topic: str) -> list[bytes]:
    return [p for t, p, _ in got if t == topic]


def _others_untouched(got: list[tuple[str, bytes, int]], sent: dict[str, list[bytes]], dev: str) -> None:
    for t, payloads in sent.items():
        if t != f"pb/{dev}/ota/chunk":
            assert _on(got, t) == payloads, t


@pytest.mark.parametrize("qos", [0, 1])
async def test_corrupt_flips_one_byte_of_every_chunk_and_nothing_else(
    link: Link, mosquitto: Mosquitto, qos: int
) -> None:
    dev, password = _device_user(mosquitto)
    link.profile(dev).corrupt = 1.0
    got, sent = await _chunks_and_others(link, mosquitto, dev, password, qos)
    _others_untouched(got, sent, dev)
    chunks = _on(got, f"pb/{dev}/ota/chunk")
    assert len(chunks) == _N
    for a, b in zip(chunks, sent[f"pb/{dev}/ota/chunk"], strict=True):
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1
    s = link.stats(dev)
    assert (s.chunks, s.chunks_corrupted, s.chunks_duplicated, s.chunks_dropped) == (_N, _N, 0, 0)


@pytest.mark.parametrize("qos", [0, 1])
async def test_duplicate_delivers_every_chunk_twice_and_nothing_else(
    link: Link, mosquitto: Mosquitto, qos: int
) -> None:
    dev, password = _device_user(mosquitto)
    link.profile(dev).duplicate = 1.0
    got, sent = await _chunks_and_others(link, mosquitto, dev, password, qos)
    _others_untouched(got, sent, dev)
    assert _on(got, f"pb/{dev}/ota/chunk") == [p for p in sent[f"pb/{dev}/ota/chunk"] for _ in (1, 2)]
    assert link.stats(dev).chunks_duplicated == _N


async def test_reorder_swaps_each_chunk_with_the_next_and_nothing_else(
    link: Link, mosquitto: Mosquitto
) -> None:
    dev, password = _device_user(mosquitto)
    link.profile(dev).reorder = 1.0
    got, sent = await _chunks_and_others(link, mosquitto, dev, password, 0)
    _others_untouched(got, sent, dev)
    c = sent[f"pb/{dev}/ota/chunk"]
    assert _on(got, f"pb/{dev}/ota/chunk") == [c[i ^ 1] for i in range(_N)]
    assert link.stats(dev).chunks_reordered == _N // 2


async def test_drop_chunk_swallows_every_chunk_and_nothing_else(link: Link, mosquitto: Mosquitto) -> None:
    dev, password = _device_user(mosquitto)
    link.profile(dev).drop_chunk = 1.0
    got, sent = await _chunks_and_others(link, mosquitto, dev, password, 1)
    _others_untouched(got, sent, dev)
    assert _on(got, f"pb/{dev}/ota/chunk") == []
    assert link.stats(dev).chunks_dropped == _N


async def test_the_same_seed_makes_the_same_choices(mosquitto: Mosquitto) -> None:
    dev, password = _device_user(mosquitto)
    runs, faults = [], []
    for _ in range(2):
        async with Link.to(mosquitto.url, seed=42) as lk:
            p = lk.profile(dev)
            p.corrupt = p.duplicate = p.reorder = p.drop_chunk = 0.3
            got, _ = await _chunks_and_others(lk, mosquitto, dev, password, 0)
            runs.append(_on(got, f"pb/{dev}/ota/chunk"))
            st = lk.stats(dev)
            faults.append((st.chunks_dropped, st.chunks_corrupted, st.chunks_duplicated, st.chunks_reordered))
    # (the device's id, new each run of the tests, is part of the seed: which
    # faults come is drawn anew, but 48 draws at 0.3 all missing is 4e-8)
    assert runs[0] == runs[1] and faults[0] == faults[1] and sum(faults[0]) > 0


async def _delay(send: Callable[[bytes], Awaitable[None]], receiver: aiomqtt.Client, n: int = 3) -> float:
    """The median time a message takes from send to receiver."""
    times = []
    for i in range(n):
        t0 = time.monotonic()
        await send(b"%d" % i)
        async with asyncio.timeout(5):
            async for _ in receiver.messages:
                break
        times.append(time.monotonic() - t0)
    return sorted(times)[n // 2]


async def test_latency_delays_each_direction_by_about_its_amount(link: Link, mosquitto: Mosquitto) -> None:
    dev, password = _device_user(mosquitto)
    async with _through(link, dev, password) as device, _direct(mosquitto) as gateway:
        await device.subscribe(f"pb/{dev}/cmd", qos=0)
        await gateway.subscribe(f"pb/{dev}/telemetry", qos=0)

        async def down(b: bytes) -> None:
            await gateway.publish(f"pb/{dev}/cmd", b)

        async def up(b: bytes) -> None:
            await device.publish(f"pb/{dev}/telemetry", b)

        base_down, base_up = await _delay(down, device), await _delay(up, gateway)
        assert base_down < 0.1 and base_up < 0.1
        link.profile(dev).down_latency_ms = 300
        assert 0.25 < await _delay(down, device) - base_down < 0.6
        link.profile(dev).down_latency_ms = 0
        link.profile(dev).up_latency_ms = 200
        assert 0.15 < await _delay(up, gateway) - base_up < 0.5


async def test_jitter_never_reorders_the_stream(link: Link, mosquitto: Mosquitto) -> None:
    dev, password = _device_user(mosquitto)
    link.profile(dev).set_latency(50, jitter_ms=50)
    async with _through(link, dev, password) as device, _direct(mosquitto) as gateway:
        await device.subscribe([(f"pb/{dev}/cmd", 1), (f"pb/{dev}/ota/offer", 1)])
        receiving = asyncio.create_task(_collect(device, f"pb/{dev}/ota/offer"))
        for i in range(30):
            await gateway.publish(f"pb/{dev}/cmd", b"%d" % i, qos=0)
            await asyncio.sleep(0.005)
        await gateway.publish(f"pb/{dev}/ota/offer", b"end", qos=0)
        got = await receiving
    assert [p for _, p, _ in got] == [b"%d" % i for i in range(30)]


async def test_a_clean_disconnect_through_a_slow_link_is_not_a_lost_link(
    link: Link, mosquitto: Mosquitto
) -> None:
    """The DISCONNECT still in the link's delay line reaches the broker
    before the connection closes: no last will. A drop does publish it."""
    dev, password = _device_user(mosquitto)
    link.profile(dev).set_latency(150)
    will = aiomqtt.Will(f"pb/{dev}/state", b"lost", qos=1)
    async with _direct(mosquitto) as gateway:
        await gateway.subscribe(f"pb/{dev}/state", qos=1)
        async with aiomqtt.Client(
            "127.0.0.1", link.port, identifier=dev, username=dev, password=password, will=will
        ):
            await async_wait_for(lambda: link.connected(dev) == 1, 5, what="connected")
        await async_wait_for(lambda: link.connected(dev) == 0, 5, what="the connection closed")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                async for m in gateway.messages:
                    raise AssertionError(f"will published after a clean disconnect: {m.payload!r}")
        with contextlib.suppress(aiomqtt.MqttError):  # it finds its connection gone
            async with aiomqtt.Client(
                "127.0.0.1", link.port, identifier=dev, username=dev, password=password, will=will
            ):
                await async_wait_for(lambda: link.connected(dev) == 1, 5, what="connected")
                assert link.drop(dev) == 1
                async with asyncio.timeout(5):
                    async for m in gateway.messages:
                        assert m.payload == b"lost"
                        break
    s = link.stats(dev)
    assert (s.connections, s.drops, s.cut, s.refused) == (2, 1, 1, 0)


# ---- the proxy, with virtual devices ------------------------------------------------

MakeLinked = Callable[..., Awaitable[VirtualDevice]]


@pytest.fixture
def make_linked(make_device: MakeDevice, link: Link) -> MakeLinked:
    """make_linked(dev_id=None, **VirtualDevice options): a thermostat whose
    broker is the link, booted and connected. A fixed dev_id (unique in the
    session) makes the link's choices for it the same on every run."""

    async def make(dev_id: str | None = None, **options: Any) -> VirtualDevice:
        return await make_device("thermostat", dev_id=dev_id or unique_id("lk"), via=link.url, **options)

    return make


async def test_a_device_through_the_link_reaches_the_broker(
    link: Link, mosquitto: Mosquitto, make_linked: MakeLinked
) -> None:
    dev = await make_linked()
    async with _direct(mosquitto) as gateway:
        await gateway.subscribe(f"pb/{dev.id}/telemetry", qos=1)
        async with asyncio.timeout(5):
            async for m in gateway.messages:
                assert isinstance(m.payload, bytes)
                assert json.loads(m.payload)["dev"] == dev.id
                break
    s = link.stats(dev.id)
    assert s.connections == 1 and s.bytes_up > 0 and s.bytes_down > 0 and link.connected(dev.id) == 1


async def test_a_drop_publishes_the_will_and_the_device_comes_back_after_the_outage(
    rig: Rig, link: Link, make_linked: MakeLinked
) -> None:
    changes: list[tuple[str, str | None, float]] = []
    rig.gw.listeners.append(
        lambda kind, dev, msg: (
            changes.append((kind, msg.get("reason"), time.monotonic()))
            if kind in ("online", "offline")
            else None
        )
    )
    dev = await make_linked()
    await async_wait_for(lambda: rig.gw.is_online(dev.id), 10, what="online at the gateway")
    assert link.drop(dev.id, 1.5) == 1
    t_drop = time.monotonic()
    await async_wait_for(lambda: not rig.gw.is_online(dev.id), 5, what="the will")
    assert ("offline", "lost") in [(k, r) for k, r, _ in changes]
    await async_wait_for(lambda: rig.gw.is_online(dev.id), 15, what="back online")
    back = [t for k, _, t in changes if k == "online"][-1]
    assert back - t_drop >= 1.5
    s = link.stats(dev.id)
    assert (s.drops, s.cut, s.connections) == (1, 1, 2)
    assert s.refused >= 1  # the device tried during the outage, with its own backoff


async def test_random_drops_come_at_the_configured_rate_and_the_device_recovers(
    rig: Rig, link: Link, make_linked: MakeLinked
) -> None:
    dev = await make_linked()
    p = link.profile(dev.id)
    p.drop_s = 0.2
    p.drops_per_hour = 3 * 3600  # about three a second
    await async_wait_for(lambda: link.stats(dev.id).drops >= 2, 5, what="random drops")
    p.drops_per_hour = 0
    await async_wait_for(lambda: dev.device is not None and dev.device.client.up, 15, what="reconnected")
    await async_wait_for(lambda: rig.gw.is_online(dev.id), 5, what="online again")


# fast retries: every chunk the link loses costs a request timeout
_OTA_CONFIG = {"ota_chunk": 512, "ota_timeout_ms": 400}


async def test_an_update_completes_through_a_duplicating_reordering_lossy_link(
    rig: Rig, link: Link, make_linked: MakeLinked, eco_release: Path
) -> None:
    dev = await make_linked(dev_id="lk-ota-lossy", config=_OTA_CONFIG)
    p = link.profile(dev.id)
    p.duplicate, p.reorder, p.drop_chunk = 0.2, 0.2, 0.1
    u = await rig.update(dev, rig.publish(eco_release), timeout=30)
    assert u.state == "committed", u
    s = link.stats(dev.id)
    assert s.chunks >= 8
    assert s.chunks_duplicated + s.chunks_reordered + s.chunks_dropped > 0, s
    await async_wait_for(lambda: dev.running() == ["eco", "thermostat"], 5, what="eco running")


@pytest.mark.long  # (slow: make long)
async def test_corrupted_chunks_are_asked_again_and_nothing_corrupted_is_installed(
    rig: Rig, link: Link, make_linked: MakeLinked, eco_release: Path
) -> None:
    """Every chunk carries a CRC-32: one corrupted on the link is dropped and
    its bytes asked for again, and the update commits; a link that corrupts
    every chunk stalls the update, and nothing corrupted is ever installed."""
    dev = await make_linked(dev_id="lk-ota-corrupt", config={**_OTA_CONFIG, "ota_tries": 3})
    link.profile(dev.id).corrupt = 1.0
    release = rig.publish(eco_release)
    u = await rig.update(dev, release, timeout=30)
    assert u.state == "failed" and u.reason is not None, u
    assert u.reason.startswith("stalled"), u.reason
    assert dev.running() == ["thermostat"] and dev.pointer() is None
    assert link.stats(dev.id).chunks_corrupted > 0
    link.profile(dev.id).corrupt = 0.3
    corrupted = link.stats(dev.id).chunks_corrupted
    u = await rig.update(dev, release, timeout=60)
    assert u.state == "committed", u
    assert link.stats(dev.id).chunks_corrupted > corrupted
