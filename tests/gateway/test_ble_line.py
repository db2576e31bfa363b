"""The Bluetooth LE bridge's decisions without a radio (gateway/ble_line.py):
the garbage rule that drops a connection, and how a connection queues what
is sent to its device: by control or bulk by the message's kind, in values
of ATT_MTU - 3, within a bound. tests/ble/test_ble_bridge.py runs it through
bluezoo."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from firmware.pb.net.ble_frag import Joiner
from firmware.pb.net.frames import encode
from gateway import ble_line
from gateway.ble_line import MAX_OUT, BleLink, GarbageRule
from gateway.broker import BrokerUrl
from gateway.service import Gateway
from gateway.store import Store


def test_a_few_dropped_frames_are_borne() -> None:
    rule = GarbageRule()
    assert rule.judge(10, 2000, 1, now=0.0) is None
    assert rule.judge(50, 60_000, 4, now=30.0) is None


def test_more_than_fifty_dropped_frames_in_a_minute_drop_the_connection() -> None:
    rule = GarbageRule()
    assert rule.judge(0, 0, 0, now=0.0) is None
    assert rule.judge(51, 0, 0, now=59.0) == "51 frames dropped within 60 s"


def test_more_than_64_kb_of_garbage_in_a_minute_drops_the_connection() -> None:
    rule = GarbageRule()
    assert rule.judge(0, 65 * 1024, 0, now=1.0) == "66560 bytes of garbage within 60 s"


def test_the_fifth_refused_proof_drops_the_connection() -> None:
    rule = GarbageRule()
    assert rule.judge(0, 0, 4, now=0.0) is None
    assert rule.judge(0, 0, 5, now=3600.0) == "5 proofs refused"


def test_a_minute_counts_only_its_own_garbage() -> None:
    rule = GarbageRule()
    assert rule.judge(40, 60_000, 0, now=0.0) is None
    assert rule.judge(80, 120_000, 0, now=61.0) is None  # a new minute: 40 frames and 60000 bytes in it
    assert rule.judge(91, 120_000, 0, now=62.0) == "51 frames dropped within 60 s"


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with Store(tmp_path / "gw.db") as store:
        yield Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)


def _frames(values: list[bytes]) -> list[tuple[str, bytes]]:
    joiner = Joiner()
    return [frame for v in values for frame in joiner.feed(v)]


async def test_what_must_not_be_lost_goes_by_control_and_the_rest_by_bulk(gw: Gateway) -> None:
    link = BleLink(gw, BleakClient("00:00:5E:00:53:01"), "00:00:5E:00:53:01", GarbageRule())
    sent = [
        ("auth", b'{"v": 1}'),
        ("cmd", b"{}"),
        ("ota/offer", b"{}"),
        ("ota/chunk", bytes(300)),
        ("ota/time", b""),
    ]
    for kind, payload in sent:
        assert link.send_frame(kind, bytes(encode(kind, payload)))
    assert _frames(list(link.control.values)) == sent[:3]
    assert _frames(list(link.bulk.values)) == sent[3:]
    assert max(len(v) for v in [*link.control.values, *link.bulk.values]) == 20  # no MTU known: 23
    assert link.queued == sum(len(v) for v in [*link.control.values, *link.bulk.values])


async def test_a_connection_that_takes_nothing_drops_frames_past_its_bound(gw: Gateway) -> None:
    link = BleLink(gw, BleakClient("00:00:5E:00:53:01"), "00:00:5E:00:53:01", GarbageRule())
    frame = bytes(encode("ota/chunk", bytes(4096)))
    taken = sum(link.send_frame("ota/chunk", frame) for _ in range(100))
    assert taken < 100 and link.queued <= MAX_OUT and link.stats["dropped_out"] == 100 - taken
    assert link.send_frame("cmd", bytes(encode("cmd", b"{}")))  # a small one still fits
    link.hang_up("th-1 is revoked")
    assert not link.send_frame("cmd", bytes(encode("cmd", b"{}")))  # nothing once it is gone


async def test_a_bridge_whose_bus_went_away_stops_when_cancelled(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bleak's scanner, leaving on a system bus that has gone, raises OSError
    over the cancel that stops the gateway (SIGINT, SIGTERM): the bridge stops
    all the same instead of scanning again for ever."""
    import asyncio

    from gateway import ble_line

    class GoneBus:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        async def __aenter__(self) -> GoneBus:
            return self

        async def __aexit__(self, *exc: object) -> None:
            raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(ble_line, "BleakScanner", GoneBus)
    task = asyncio.create_task(ble_line.BleBridge(gw).run())
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()


async def test_addresses_seen_are_forgotten_once_stale(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peripheral changing its (random) address at will grew what the
    bridge held of addresses seen without bound (100,000: 57 MB). Those not
    seen for STALE_S that nothing dials, and bans past, are swept."""
    bridge = ble_line.BleBridge(gw)  # (not running: nothing is dialled)
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])
    adv = AdvertisementData(None, {}, {}, [ble_line.SERVICE_UUID], None, -50, ())
    peak = 0
    for i in range(20_000):
        now[0] += 0.01  # (a new address every 10 ms)
        bridge._seen(BLEDevice(f"AA:BB:CC:{i >> 16:02X}:{(i >> 8) & 255:02X}:{i & 255:02X}", None, None), adv)
        peak = max(peak, len(bridge._devices))
    bridge.banned["AA:BB:CC:00:00:01"] = now[0] - 1
    now[0] += ble_line.STALE_S + 1
    bridge._seen(BLEDevice("AA:BB:CC:FF:FF:FF", None, None), adv)
    # (those of the last two STALE_S at most: one sweep each STALE_S)
    assert peak <= 2 * ble_line.STALE_S / 0.01 + 2, peak
    assert list(bridge._devices) == ["AA:BB:CC:FF:FF:FF"] and bridge.banned == {}
