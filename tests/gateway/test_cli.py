"""Command-line parsing of `permabeta devices send`."""

from __future__ import annotations

import pytest

from gateway.broker import BrokerUrl
from gateway.cli import parse_command
from gateway.errors import ConfigError, GatewayError


@pytest.mark.parametrize(
    ("words", "op", "args"),
    [
        (["ping"], "ping", {}),
        (["reboot"], "reboot", {}),
        (["config", "get"], "config.get", {}),
        (["config", "get", "vent"], "config.get", {"feature": "vent"}),
        (
            ["config", "set", "thermostat.setpoint=22.5", "thermostat.mode=off"],
            "config.set",
            {"feature": "thermostat", "values": {"setpoint": 22.5, "mode": "off"}},
        ),
        (
            ["config.set", 'thermostat.schedule=[["06:00", 21]]'],
            "config.set",
            {"feature": "thermostat", "values": {"schedule": [["06:00", 21]]}},
        ),
        (["feature", "disable", "vent"], "feature.disable", {"feature": "vent"}),
        (["feature.enable", "vent"], "feature.enable", {"feature": "vent"}),
        (["data.set", "key=price", "value=[1,2]"], "data.set", {"key": "price", "value": [1, 2]}),
    ],
)
def test_commands_parse(words: list[str], op: str, args: dict[str, object]) -> None:
    assert parse_command(words) == (op, args)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "no command"),
        (["config", "set", "setpoint=22"], "FEATURE.KEY=VALUE"),
        (["config", "set", "a.x=1", "b.y=2"], "one feature at a time"),
        (["feature", "enable"], "one feature name"),
        (["ping", "loud"], "KEY=VALUE"),
    ],
)
def test_bad_commands_say_why(words: list[str], message: str) -> None:
    with pytest.raises(GatewayError, match=message):
        parse_command(words)


def test_broker_urls() -> None:
    assert BrokerUrl.parse("mqtt://127.0.0.1:1884") == BrokerUrl("127.0.0.1", 1884)
    u = BrokerUrl.parse("mqtts://gw:p%40ss@broker.example")
    assert (u.host, u.port, u.tls, u.username, u.password) == ("broker.example", 8883, True, "gw", "p@ss")
    assert "p@ss" not in str(u) and u.url(secret=True) == "mqtts://gw:p%40ss@broker.example:8883"
    assert BrokerUrl.parse("localhost") == BrokerUrl("localhost", 1883)
    for bad in ("http://x", "mqtt://", "mqtt://h:port"):
        with pytest.raises(ConfigError):
            BrokerUrl.parse(bad)
