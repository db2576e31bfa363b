"""A board whose clock starts at 2000-01-01 (docs/ota.md 2.3, security.md
3.5), on the real MicroPython unix port at 128 KB: once SNTP has set its
clock it refuses an expired freshness statement, and it never accepts one
that had expired by the gateway's signed time it holds, even with its own
clock still at 2000. The gateway's time reaches it at its hello and sets
its clock at the next boot."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ota import keys as ota_keys
from ota.release import Release

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.ota_server import OtaServer
from ..support.processes import DeviceProcess, GatewayProcess
from ..support.sntp import SntpServer, ntp_reply
from ..support.wait import wait_for
from .conftest import assert_on_factory, offer_of, ota_device

pytestmark = pytest.mark.slow

Y2000 = 946684800.0  # 2000-01-01 in Unix time


def at_2000(dev: DeviceProcess) -> None:
    """The board's real-time clock at 2000-01-01, as after a power-on."""
    (dev.path / "hal").mkdir(exist_ok=True)
    (dev.path / "hal" / "clock").write_text(str(int(Y2000 - time.time())))


def clock_of(dev: DeviceProcess) -> float:
    """The device's clock now, as its host backend keeps it."""
    return time.time() + int((dev.path / "hal" / "clock").read_text())


def floor_of(dev: DeviceProcess) -> int:
    path = dev.path / "ota" / "trust.json"
    return int(json.loads(path.read_text()).get("time", 0)) if path.exists() else 0


def started(dev: DeviceProcess) -> DeviceProcess:
    dev.start()
    wait_for(lambda: "booted" in dev.output(), 15, what="device boot")
    return dev


def test_a_board_at_2000_refuses_an_expired_statement_once_sntp_set_its_clock(
    mosquitto: Mosquitto, make_device: MakeDevice, release2: Release, keys: ota_keys.Keys
) -> None:
    sntp = SntpServer(lambda req: ntp_reply(req, time.time()))
    try:
        dev = ota_device(mosquitto, make_device, keys, start=False, ntp=sntp.address)
        at_2000(dev)
        started(dev)
        wait_for(lambda: abs(clock_of(dev) - time.time()) < 5, 15, what="the clock set by SNTP")
        assert sntp.requests
    finally:
        sntp.close()
    srv = OtaServer(mosquitto, dev.id, offer_of(release2, keys, ttl=600, now=time.time() - 3600))
    try:
        srv.offer()
        st = srv.wait_for(("failed", "committed"), 60)
    finally:
        srv.close()
    assert st["state"] == "failed" and st["reason"].startswith("freeze:"), st
    time.sleep(0.5)
    assert_on_factory(dev)


def test_a_board_at_2000_never_accepts_a_statement_expired_by_the_gateways_signed_time(
    mosquitto: Mosquitto, make_device: MakeDevice, release2: Release, keys: ota_keys.Keys
) -> None:
    dev = ota_device(mosquitto, make_device, keys, start=False)
    at_2000(dev)
    started(dev)
    signed_at = time.time()
    # expired 50 minutes before the gateway's time; by the board's clock, 26 years ahead
    srv = OtaServer(mosquitto, dev.id, offer_of(release2, keys, ttl=600, now=signed_at - 3600))
    try:
        srv.send_time(ota_keys.time_statement(keys, dev.id, signed_at))
        # kept, and verified where the checking code runs (at once, or before the download)
        wait_for(lambda: (dev.path / "ota" / "time.json").exists() or floor_of(dev) > 0, 10, what="the time")
        srv.offer()
        st = srv.wait_for(("failed", "committed"), 90)
    finally:
        srv.close()
    assert st["state"] == "failed" and st["reason"].startswith("freeze:"), (st, srv.seen)
    assert floor_of(dev) == int(signed_at * 1000)  # verified by the check before the download
    assert not (dev.path / "ota" / "time.json").exists()
    time.sleep(0.5)
    assert_on_factory(dev)


def test_the_gateways_time_at_hello_sets_a_board_clock_at_its_next_boot(
    mosquitto: Mosquitto,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    ota_gateway: GatewayProcess,
    attacker: ota_keys.Keys,
    tmp_path: Path,
) -> None:
    dev = ota_device(mosquitto, make_device, keys, start=False)
    at_2000(dev)
    before = time.time()
    started(dev)
    wait_for(lambda: (dev.path / "ota" / "time.json").exists(), 15, what="the gateway's time statement")
    dev.kill()  # a power cut: the statement waits on flash
    assert floor_of(dev) == 0
    started(dev)
    wait_for(lambda: floor_of(dev) > 0, 15, what="the floor")
    assert before * 1000 - 1 <= floor_of(dev) <= time.time() * 1000
    assert abs(clock_of(dev) - time.time()) < 30  # the boot set the clock to the floor
    floor = floor_of(dev)
    # a forged statement and a lower genuine one: neither moves it
    dev.kill()
    for statement in (
        ota_keys.time_statement(attacker, dev.id, time.time() + 86400),
        ota_keys.time_statement(keys, dev.id, before - 86400),
    ):
        (dev.path / "ota" / "time.json").write_bytes(statement)
        (dev.path / "hal" / "clock").write_text(str(int(Y2000 - time.time())))
        started(dev)
        # the boot checked it, and set the clock to the floor it kept
        wait_for(lambda: clock_of(dev) > Y2000 + 86400, 15, what="the boot's time check")
        dev.kill()
        assert floor_of(dev) == floor
