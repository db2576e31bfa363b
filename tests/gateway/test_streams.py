"""The gateway's side of the owners' data choices (docs/protocol.md 12):
a device that sends what its hello says it withholds does not get it
stored, and the streams a device is shown with come from its board and
its features' manifests."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.broker import BrokerUrl
from gateway.provision import board_for, initial_streams
from gateway.service import Gateway
from gateway.store import Store
from gateway.streams import ChoiceError, catalogue, check_choices

from .test_ingest import hello

SHIPPED = Path(__file__).resolve().parents[2] / "firmware" / "features"


def _telemetry(dev: str, seq: int) -> bytes:
    msg = {
        "v": 1,
        "dev": dev,
        "seq": seq,
        "ts": 1000.0 + seq,
        "sensors": {"temperature": 20.5, "humidity": 41.0},
        "actuators": {"relay": True},
        "features": {"thermostat": {"setpoint": 21.0, "heating": True}},
    }
    return json.dumps(msg).encode()


def test_what_a_device_says_it_withholds_is_not_stored_even_if_sent(tmp_path: Path) -> None:
    with Store(tmp_path / "gw.db") as store:
        gw = Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)
        withheld = {
            "sensors.humidity": "local",
            "features.thermostat.setpoint": "off",
            "actuators.relay": "local",
        }
        gw.handle("pb/th-1/hello", hello("th-1", streams=withheld), True)
        gw.handle("pb/th-1/telemetry", _telemetry("th-1", 1), False)
        gw.flush()
        (row,) = store.telemetry("th-1", 10)
        assert row.data["sensors"] == {"temperature": 20.5}
        assert row.data["actuators"] == {}
        assert row.data["features"] == {"thermostat": {"heating": True}}
        # shared again (a new hello says so): stored again
        gw.handle("pb/th-1/hello", hello("th-1", streams={}), True)
        gw.handle("pb/th-1/telemetry", _telemetry("th-1", 2), False)
        gw.flush()
        assert store.telemetry("th-1", 10)[-1].data["sensors"] == {"temperature": 20.5, "humidity": 41.0}


def test_a_hello_whose_choices_are_not_choices_is_rejected(tmp_path: Path) -> None:
    with Store(tmp_path / "gw.db") as store:
        gw = Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)
        for bad in ({"sensors.humidity": "share"}, {"sensors.humidity": 1}, ["sensors.humidity"]):
            gw.handle("pb/th-2/hello", hello("th-2", streams=bad), True)
        assert store.device("th-2") is None and sum(gw.rejects.values()) == 3


def test_every_shipped_stream_is_described_and_provisioned_with_its_default() -> None:
    for model in ("thermostat", "shirt"):
        board = board_for(model)
        manifests = {n: json.loads((SHIPPED / n / "manifest.json").read_text()) for n in board["features"]}
        streams = catalogue(board, manifests)
        assert all(s.doc != "Not described by its maker." for s in streams), model
        provisioned = json.loads(initial_streams(board, board["features"]))["choices"]
        assert provisioned == {s.path: s.default for s in streams if not s.needed}
    shirt = json.loads(initial_streams(board_for("shirt"), ["vent"]))["choices"]
    assert shirt["sensors.skin_temperature"] == "local" and shirt["sensors.humidity"] == "share"


def test_choices_are_checked_as_the_device_checks_them() -> None:
    streams = catalogue(board_for("thermostat"), {})
    assert check_choices(streams, {"sensors.humidity": "off"}) == {"sensors.humidity": "off"}
    for asked in (
        {"actuators.relay": "off"},
        {"hello": "local"},
        {"sensors.x": "local"},
        {},
        {"sensors.humidity": 1},
    ):
        try:
            check_choices(streams, asked)
        except ChoiceError:
            continue
        raise AssertionError(f"{asked} was taken")
