"""A busy board is not cut short by an update that asks it to wait
(docs/ota.md 4.3, Busy), on the real MicroPython unix port at 128 KB, where
a download goes to update mode by a reset: the thermostat heating holds the
reset back, the update says deferred, and it goes on once the room is warm
and the relay off. An offer that does not ask goes at once."""

from __future__ import annotations

import dataclasses
import time

import pytest

from ota import keys as ota_keys
from ota.release import Release

from ..support.mosquitto import Mosquitto
from ..support.ota_server import OtaServer
from ..support.wait import wait_for
from .conftest import MakeDevice, offer_of, ota_device, running_set

pytestmark = pytest.mark.slow


@pytest.mark.long
def test_a_heating_board_holds_an_idle_offer_back_until_its_relay_is_off(
    mosquitto: Mosquitto, make_device: MakeDevice, release2: Release, keys: ota_keys.Keys
) -> None:
    dev = ota_device(mosquitto, make_device, keys)  # (20 C: below its setpoint, it heats)
    wait_for(lambda: dev.actuators().get("relay") is True, 20, what="heating")
    srv = OtaServer(mosquitto, dev.id, dataclasses.replace(offer_of(release2, keys), idle=True))
    try:
        srv.offer()
        held = srv.wait_for(("deferred", "failed"), 30)
        assert held["state"] == "deferred", (held, dev.output()[-2000:])
        assert held["reason"] == "busy: thermostat is working (relay on)"
        time.sleep(3)
        assert "update mode" not in dev.output() and running_set(dev)[0] == 0  # held: no reset
        dev.set_sensors(temperature=25.0)  # warm: the relay goes off, the update goes on
        end = srv.wait_for(("committed", "failed", "rolled_back"), 120)
        assert end["state"] == "committed", (end, dev.output()[-2000:])
        assert running_set(dev)[:2] == (2, release2.sha256)
    finally:
        srv.close()
        dev.kill()
