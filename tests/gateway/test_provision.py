"""Provisioning a device's filesystem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.pb.config import check as check_config
from firmware.pb.errors import HalError
from gateway.broker import BrokerUrl
from gateway.ca import create_ca, read_ca
from gateway.errors import ConfigError
from gateway.provision import CA_FILE, provision_into

BROKER = BrokerUrl("127.0.0.1", 1883)


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_a_complete_device(tmp_path: Path) -> None:
    p = provision_into(tmp_path / "th-1", "thermostat", "th-1", BROKER)
    got = files(p.path)
    assert {"boot.py", "main.py", "config.json", "boards/thermostat-v1.json", "hal/sensors.json"} <= got
    assert {"pb/runtime.py", "pb/net/mqtt.py", "pb/hal/host.py", "pb/hal/esp32.py"} <= got
    assert {"features/thermostat/manifest.json", "features/thermostat/__init__.py"} <= got
    assert not any(f.startswith("features/vent") for f in got)
    assert "__init__.py" not in got  # the CPython package marker stays behind
    # what only the gateway and the tests use stays behind: a board never loads it
    assert not any(f.startswith("pb/peer/") for f in got)
    assert "pb/hal/partitions.py" not in got
    assert {"pb/ota/flash.py", "pb/ota/download.py", "pb/ota/install.py", "pb/ota/trust.py"} <= got
    config = json.loads((p.path / "config.json").read_text())
    assert config["device"] == "th-1" and config["model"] == "thermostat" and config["hal"] == "host"
    assert config["broker"] == {
        "host": "127.0.0.1",
        "port": 1883,
        "user": "th-1",
        "password": p.password,
        "keepalive": 30,
    }
    assert len(p.password) >= 20
    assert ((p.path / "config.json").stat().st_mode & 0o777) == 0o600


def test_compiled_modules(tmp_path: Path) -> None:
    p = provision_into(tmp_path / "sh-1", "shirt", "sh-1", BROKER, compile_mpy=True)
    got = files(p.path)
    assert "pb/runtime.mpy" in got and "pb/runtime.py" not in got
    assert "features/vent/__init__.mpy" in got
    assert "main.py" in got and "boot.py" in got  # the board runs these as source
    assert (p.path / "pb" / "runtime.mpy").read_bytes()[:1] == b"M"


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    provision_into(tmp_path / "d", "thermostat", "th-1", BROKER, password="one")
    with pytest.raises(ConfigError, match="not empty"):
        provision_into(tmp_path / "d", "shirt", "sh-1", BROKER)
    p = provision_into(tmp_path / "d", "shirt", "sh-1", BROKER, force=True)
    got = files(p.path)
    assert "features/vent/manifest.json" in got and not any(f.startswith("features/thermostat") for f in got)
    assert json.loads((p.path / "config.json").read_text())["device"] == "sh-1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "toaster"}, "unknown model 'toaster'"),
        ({"device": "Th 1"}, "device id 'Th 1'"),
        ({"device": "-x"}, "device id"),
        ({"features": ["jetpack"]}, "no feature 'jetpack'"),
        ({"board": "shirt-v1"}, "is a shirt, not a thermostat"),
        ({"broker": BrokerUrl("h", 8883, tls=True)}, "trusts only the CA it is given: .* --ca FILE"),
        ({"ca": b"0"}, "plain MQTT: use mqtts://"),
    ],
)
def test_bad_requests_say_why_and_write_nothing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"model": "thermostat", "device": "th-1", "broker": BROKER}
    args.update(kwargs)
    model, device, broker = args.pop("model"), args.pop("device"), args.pop("broker")
    with pytest.raises(ConfigError, match=message):
        provision_into(tmp_path / "d", model, device, broker, **args)  # type: ignore[arg-type]
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_a_device_on_mqtts_gets_the_ca_and_a_config_naming_it(tmp_path: Path) -> None:
    ca = create_ca(tmp_path / "ca")
    der = read_ca(ca.cert)
    p = provision_into(
        tmp_path / "th-1", "thermostat", "th-1", BrokerUrl("broker.lan", 8883, tls=True), ca=der
    )
    assert (p.path / CA_FILE).read_bytes() == der == ca.der.read_bytes()
    broker = json.loads((p.path / "config.json").read_text())["broker"]
    assert broker["cafile"] == CA_FILE and broker["host"] == "broker.lan" and broker["port"] == 8883
    check_config(json.loads((p.path / "config.json").read_text()))  # as the device's boot checks it


def test_a_shirt_is_provisioned_for_bluetooth_and_a_thermostat_carries_no_ble_code(tmp_path: Path) -> None:
    """The BLE link's modules go to a board whose board file has a radio
    (shirt-v1), not to the others; a thermostat asked for BLE is refused."""
    broker = BrokerUrl("127.0.0.1", 1883)
    provision_into(tmp_path / "sh", "shirt", "sh-1", broker, password="x", ble_link=True)
    assert json.loads((tmp_path / "sh" / "config.json").read_text())["link"] == {"ble": True}
    assert {p.name for p in (tmp_path / "sh" / "pb" / "net").glob("ble_*")} == {
        "ble_frag.py",
        "ble_link.py",
        "ble_radio.py",
    }
    provision_into(tmp_path / "th", "thermostat", "th-1", broker, password="x")
    assert not list((tmp_path / "th" / "pb" / "net").glob("ble_*"))
    with pytest.raises(ConfigError, match="has no Bluetooth LE radio"):
        provision_into(tmp_path / "th2", "thermostat", "th-2", broker, password="x", ble_link=True)


def test_a_serial_line_is_a_path_the_repl_or_an_esp32s_uart(tmp_path: Path) -> None:
    """What --serial-line takes: a path, repl (the board's REPL port), or an
    ESP32's UART and its pins (uartN:TX:RX); the link the device then makes
    asks its HAL for that UART."""
    from firmware.pb.hal.esp32 import Esp32Hal
    from firmware.pb.net.line import for_device
    from firmware.pb.net.serial_link import SerialLink

    broker = BrokerUrl("127.0.0.1", 1883)
    for port in ("/dev/ttyUSB0", "repl"):
        p = provision_into(
            tmp_path / port[-4:], "thermostat", "th-1", broker, password="x", serial_line=(port, 9600)
        )
        assert json.loads((p.path / "config.json").read_text())["link"] == {"serial": port, "baud": 9600}
    p = provision_into(
        tmp_path / "u",
        "thermostat",
        "th-2",
        broker,
        password="x",
        hal="esp32",
        serial_line=("uart2:17:16", 115200),
    )
    config = json.loads((p.path / "config.json").read_text())
    assert config["link"] == {"serial": "uart2", "baud": 115200, "tx": 17, "rx": 16}
    check_config(config)
    for bad in ("uart2", "uart2:17", "uart2:17:99", "ttyUSB0", "uartX:1:2"):
        with pytest.raises(ConfigError, match=r"give a path \(/dev/ttyUSB0\), repl .* uartN:TX:RX"):
            provision_into(
                tmp_path / "b",
                "thermostat",
                "th-3",
                broker,
                password="x",
                hal="esp32",
                serial_line=(bad, 9600),
            )
    refused = [
        ("uart0:1:3", "esp32", "uart0 is the ESP32's REPL UART: give repl"),
        ("/dev/ttyS1", "esp32", "an ESP32 has no paths for ports"),
        ("uart2:17:16", "host", "is an ESP32's UART: on a Linux board give its path"),
    ]
    for n, (port, hal, said) in enumerate(refused):
        with pytest.raises(ConfigError, match=said):
            provision_into(
                tmp_path / f"r{n}",
                "thermostat",
                "th-5",
                broker,
                password="x",
                hal=hal,
                serial_line=(port, 9600),
            )

    class Board(Esp32Hal):
        asked: list[dict[str, object]] = []

        def uart(self, link: dict[str, object]) -> object:
            self.asked.append(link)
            return "the board's UART"

    link = for_device(config, Board({"capabilities": {}}))
    assert isinstance(link, SerialLink) and link.port == "the board's UART"
    assert Board.asked == [config["link"]]
    with pytest.raises(HalError, match="a UART line needs uartN, tx and rx"):
        Esp32Hal({"capabilities": {}}).uart({"serial": "uart2"})


@settings(max_examples=200, deadline=None)
@given(
    port=st.one_of(
        st.text(max_size=40),
        st.text(min_size=120, max_size=140).map(lambda t: "/" + t),
        st.from_regex(r"uart[0-9]:[0-9]{1,3}:[0-9]{1,3}", fullmatch=True),
        st.sampled_from(
            ["repl", "/dev/ttyUSB0", "uart2:17:16", "uart2:17:16\n", "uart2:17:16:1", "uart٢:1:2"]
        ),
    ),
    hal=st.sampled_from(["host", "esp32"]),
    baud=st.one_of(st.sampled_from([115200, 50, 4_000_000]), st.integers(-(2**40), 2**40)),
)
def test_any_serial_line_makes_a_config_the_device_takes_or_a_clear_refusal(
    port: str, hal: str, baud: int
) -> None:
    """Whatever a maker types as --serial-line: a config.json the device's own
    check takes, or ConfigError; never a link the device cannot make."""
    from gateway.provision import board_for, make_config

    board = board_for("thermostat")
    try:
        config = make_config(
            "th-1", board, BrokerUrl("127.0.0.1", 1883), "pw", hal=hal, serial_line=(port, baud)
        )
    except ConfigError:
        return
    check_config(config)
    link = config["link"]
    serial = link["serial"]
    assert (
        serial == "repl"
        or (serial.startswith("/") and hal == "host")
        or (
            hal == "esp32"
            and serial in {f"uart{n}" for n in range(1, 10)}
            and 0 <= link["tx"] <= 48 >= link["rx"] >= 0
        )
    ), config
