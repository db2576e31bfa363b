"""A board whose line to the gateway is its own USB REPL port, the maker's
whole round, without a board: the real MicroPython unix port (128 KB heap)
behind a socat pty plays the board, its terminal the USB port. Provisioned
over that port with `--serial-line repl`, it starts and talks to `permabeta
gateway run --serial` on the same port; the command `repl open` gives the
port back to the REPL until the next reset, where `permabeta provision
--port` reaches it again (a new password); the REPL's end is the reset, and
the device is back on its line with the new key."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import serial

from ..conftest import unique_id
from ..support.mosquitto import Mosquitto
from ..support.processes import MICROPYTHON, SMALL_HEAP, GatewayProcess
from ..support.serial_board import SerialBoard
from ..support.wait import wait_for
from .test_serial_provision import provision as provision_over

pytestmark = [
    pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat"),
    pytest.mark.micropython,
    pytest.mark.slow,
]


def provision(
    board: SerialBoard, dev: str, password: str, db: Path, capsys: pytest.CaptureFixture[str]
) -> str:
    rc, out, err = provision_over(
        capsys, board, dev, "--serial-line", "repl", "--db", str(db), password=password
    )
    assert rc == 0, err
    return out


def power_on(board: SerialBoard) -> SerialBoard:
    """The board powered on: the unix port runs main.py in its flash, on its terminal."""
    board.unplug()
    on = SerialBoard(
        board.folder, program=f"{shlex.quote(str(MICROPYTHON))} -X heapsize={SMALL_HEAP} main.py"
    )
    return on.start()


@pytest.mark.long  # (slow: make long)
def test_a_board_on_its_repl_port_talks_to_the_gateway_and_gives_the_port_back_to_the_repl(
    tmp_path: Path, board: SerialBoard, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    dev, db = unique_id("th"), tmp_path / "gw.db"
    provision(board, dev, "the first one", db, capsys)
    assert json.loads((board.flash / "config.json").read_text())["link"] == {"serial": "repl", "baud": 115200}
    board = power_on(board)
    try:
        the_round(tmp_path, board, mosquitto, capsys, dev, db)
    finally:
        board.unplug()


def the_round(
    tmp_path: Path,
    board: SerialBoard,
    mosquitto: Mosquitto,
    capsys: pytest.CaptureFixture[str],
    dev: str,
    db: Path,
) -> None:
    def gateway() -> GatewayProcess:
        return GatewayProcess(
            mosquitto.gateway_url, db, tmp_path / "gw.log", ["--serial", board.port]
        ).start()

    gw = gateway()
    try:
        d = wait_for(
            lambda: (d := gw.device(dev))["online"] and d, 30, what="the board online on its REPL port"
        )
        assert d["carrier"] == f"serial:{board.port}"
        wait_for(lambda: gw.device(dev).get("last_telemetry"), 20, what="telemetry stored")
        assert json.loads(gw.cli("devices", "send", dev, "ping", "--json").stdout)["ok"] is True
        # the port back to the REPL, until the next reset
        said = json.loads(gw.cli("devices", "send", dev, "repl", "open", "--json").stdout)
        assert said["ok"] is True and said["result"] == {"repl": "open", "rebooting": True}, said
        wait_for(lambda: not gw.device(dev)["online"], 20, what="the board off its line")
    finally:
        gw.stop()  # (the maker takes the cable to a laptop)
    # provisioned again through the REPL: a new password
    out = provision(board, dev, "the second one", db, capsys)
    assert f"onto {board.port}" in out
    assert json.loads((board.flash / "config.json").read_text())["broker"]["password"] == "the second one"
    # the REPL's end (Ctrl-D) is the reset: the device is back on its line, with the new key
    with serial.Serial(board.port, 115200, timeout=1) as port:
        port.write(b"\r\x02\x04")  # (the friendly REPL, then its end)
    gw = gateway()
    try:
        wait_for(lambda: gw.device(dev)["online"], 30, what="the board back on its line")
        assert json.loads(gw.cli("devices", "send", dev, "ping", "--json").stdout)["ok"] is True
    finally:
        gw.stop()
