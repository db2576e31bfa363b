"""The shipped features: eco's pre-heating, the thermostat's setpoint shift,
the vent's curve and its flap that does not swing between two steps."""

from __future__ import annotations

import json
import shutil
from itertools import pairwise
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from firmware.features.eco import boost_for
from firmware.features.vent import REVERSE, moves, opening, shape
from firmware.pb.hal.host import HostHal
from firmware.pb.runtime import Device
from firmware.pb.store import Store
from gateway.broker import BrokerUrl
from gateway.paths import firmware_dir
from gateway.provision import board_for, make_config
from simulator.loader import import_feature

PRICES = [30] * 24
for _h in (1, 2, 3, 4, 5, 13):
    PRICES[_h] = 10  # six cheap hours


def test_eco_boosts_in_the_cheapest_hours_only() -> None:
    assert boost_for(PRICES, 2, 6, 1.5) == (1.5, 10, True)
    assert boost_for(PRICES, 13, 6, 1.5) == (1.5, 10, True)
    assert boost_for(PRICES, 18, 6, 1.5) == (0, 30, False)
    assert boost_for(PRICES, 18, 0, 1.5) == (0, 30, False)
    assert boost_for(None, 2, 6, 1.5) == (0, None, False)  # no prices: no boost
    assert boost_for([1] * 23, 2, 6, 1.5) == (0, None, False)
    assert boost_for([True] * 24, 2, 6, 1.5) == (0, None, False)


def test_vent_curve_is_linear_between_points_and_clamped() -> None:
    pts = ((0.0, 0.0), (0.3, 0.6), (1.0, 1.0))
    assert shape(0.0, pts) == 0.0 and shape(1.0, pts) == 1.0
    assert abs(shape(0.15, pts) - 0.3) < 1e-9 and abs(shape(0.65, pts) - 0.8) < 1e-9
    cfg = {"open_at": 65, "close_at": 55, "full_at": 80, "min_opening": 20}
    assert opening(60, False, cfg) == (False, 0)
    assert opening(66, False, cfg, pts)[1] > opening(66, False, cfg)[1]  # the steeper curve opens sooner
    assert opening(90, True, cfg, pts) == (True, 100)


def test_vent_flap_turns_back_only_for_a_real_change() -> None:
    assert moves(0, 25, 0) and moves(40, 0, 5)  # opening from closed, closing: always
    assert moves(40, 41, 3) and moves(41, 40, -1)  # on in the way it went
    assert not moves(41, 40, 1) and not moves(40, 41, -2)  # back by one step: no
    assert moves(41, 41 - REVERSE, 1) and not moves(40, 40, 1)


def _flap(readings: list[float], cfg: dict[str, float]) -> tuple[list[int], list[int]]:
    """(where the flap stands, where the curve asks it to be) after each reading."""
    venting, now, way = False, 0, 0
    flap, asked = [], []
    for h in readings:
        venting, pct = opening(h, venting, cfg)
        if moves(now, pct, way):
            now, way = pct, pct - now
        flap.append(now)
        asked.append(pct)
    return flap, asked


def test_a_reading_wavering_at_a_step_edge_moves_the_flap_once() -> None:
    cfg = {"open_at": 65, "close_at": 55, "full_at": 80, "min_opening": 20}
    edge = 55 + 25 * 19.5 / 80  # where the curve's 39 % becomes 40 %
    flap, asked = _flap([66.0] + [edge + (0.01 if i % 2 else -0.01) for i in range(40)], cfg)
    assert sum(a != b for a, b in pairwise(asked)) >= 39  # the curve alone swings
    assert sum(a != b for a, b in pairwise(flap)) == 1  # the flap settles


@given(st.lists(st.floats(40.0, 95.0), min_size=1, max_size=60))
def test_the_flap_is_never_more_than_a_step_from_the_curve(readings: list[float]) -> None:
    cfg = {"open_at": 65, "close_at": 55, "full_at": 80, "min_opening": 20}
    flap, asked = _flap(readings, cfg)
    for now, pct in zip(flap, asked, strict=True):
        assert abs(now - pct) < REVERSE and (now == 0) == (pct == 0)


def thermostat_with_eco(tmp_path: Path) -> Device:
    board = board_for("thermostat")
    for name in ("thermostat", "eco"):
        shutil.copytree(firmware_dir() / "features" / name, tmp_path / "features" / name)
    config = make_config("th-1", board, BrokerUrl("127.0.0.1", 1), "pw")
    config["utc_offset_min"] = 0
    hal = HostHal(board, str(tmp_path))
    return Device(
        config,
        hal,
        Store(str(tmp_path / "data")),
        str(tmp_path / "features"),
        importer=import_feature,
        log=lambda d, m: None,
    )


def test_eco_preheats_through_the_thermostat_in_cheap_hours(tmp_path: Path) -> None:
    dev = thermostat_with_eco(tmp_path)
    hour = {"h": 18}
    dev.features.utc_offset_min = 0
    dev.now = lambda: 1795392000 + hour["h"] * 3600  # type: ignore[method-assign]  # a midnight, UTC
    dev.boot()
    assert set(dev.features.running) == {"eco", "thermostat"}

    def sense(t: float) -> None:
        (tmp_path / "hal" / "sensors.json").write_text(json.dumps({"temperature": t, "humidity": 40}))
        dev.sample()

    sense(21.5)  # above setpoint 21 + hysteresis 0.3? no: inside the band, heater stays off
    assert dev.actuators["relay"] is False
    assert dev.execute("data.set", {"key": "prices", "value": PRICES})["ok"]
    sense(21.5)
    assert dev.actuators["relay"] is False  # 18:00 is dear: no boost
    assert dev.features.reports["eco"] == {"boost": 0, "price": 30, "cheap": False}
    hour["h"] = 3
    sense(21.5)
    # 03:00 is cheap: the setpoint rises by the band (1.0), so 21.5 is too cold
    assert dev.features.reports["eco"] == {"boost": 1.0, "price": 10, "cheap": True}
    assert dev.features.reports["thermostat"]["setpoint"] == 22.0
    assert dev.actuators["relay"] is True
    # turning eco off puts the setpoint back
    assert dev.execute("feature.disable", {"feature": "eco"})["ok"]
    sense(21.5)
    assert dev.features.reports["thermostat"]["setpoint"] == 21.0
    assert dev.features.reports["thermostat"]["offset"] == 0
