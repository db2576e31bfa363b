"""A shipped board's USB REPL (provision --close-repl): closed at every boot
by the ESP32 backend, opened until the next reset by the command repl.open."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from firmware.pb.config import check as check_config
from firmware.pb.errors import ConfigError
from gateway.broker import BrokerUrl
from gateway.provision import provision_into


def test_the_esp32_backend_closes_and_opens_its_repl(monkeypatch: pytest.MonkeyPatch) -> None:
    from firmware.pb.hal.esp32 import Esp32Hal

    calls: list[tuple[str, object]] = []
    micropython = types.ModuleType("micropython")
    micropython.kbd_intr = lambda c: calls.append(("kbd_intr", c))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "micropython", micropython)
    monkeypatch.setattr(os, "dupterm", lambda s, i: calls.append(("dupterm", (s, i))), raising=False)
    hal = Esp32Hal({"capabilities": {}}, "/")
    hal.set_repl(False)
    assert calls == [("kbd_intr", -1), ("dupterm", (None, 0))]  # Ctrl-C breaks into nothing
    calls.clear()
    hal.set_repl(True)
    assert calls == [("kbd_intr", 3)]


def test_provisioning_with_close_repl_says_so_in_the_config(tmp_path: Path) -> None:
    broker = BrokerUrl("127.0.0.1", 1883)
    provision_into(tmp_path / "shipped", "thermostat", "th-1", broker, close_repl=True)
    config = json.loads((tmp_path / "shipped" / "config.json").read_text())
    assert config["repl"] == "closed"
    check_config(config)
    provision_into(tmp_path / "open", "thermostat", "th-2", broker)
    assert "repl" not in json.loads((tmp_path / "open" / "config.json").read_text())
    with pytest.raises(ConfigError, match="'repl' must be one of closed"):
        check_config({**config, "repl": "open"})


def test_repl_open_on_a_device_whose_line_is_its_repl_port_waits_for_a_trial_to_end(tmp_path: Path) -> None:
    """The REPL's boot would not count as a trial boot (nor mark a trial
    image valid): during a trial the command is refused with busy, and no
    file is left for the boot loader."""
    from types import SimpleNamespace

    from firmware.pb.commands import execute

    opened: list[bool] = []
    dev = SimpleNamespace(
        id="th-1",
        config={"link": {"serial": "repl", "baud": 115200}},
        updates=SimpleNamespace(boot=SimpleNamespace(trial=True)),
        base=str(tmp_path),
        hal=SimpleNamespace(set_repl=opened.append),
        features=None,
    )
    reply = execute(dev, "repl.open", {}, "c1")
    assert reply["ok"] is False and reply["error"]["code"] == "busy", reply
    assert not (tmp_path / "repl").exists() and opened == []
    # on a device whose line is elsewhere, the REPL opens until the next reset, as ever
    dev.config = {"link": {"serial": "/dev/ttyUSB0"}}
    assert execute(dev, "repl.open", {}, "c2")["result"] == {"repl": "open"} and opened == [True]
