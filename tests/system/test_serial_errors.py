"""The clear errors of the serial commands, where no board can answer: a
port that is not there, one another program holds, one that never answers
as a MicroPython REPL or as an ESP chip (a pty to cat, or to a program that
reads nothing). Each is one line, never a traceback, and comes quickly."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from gateway.cli import main

from ..support.serial_board import SerialBoard

PROVISION = ("--model", "thermostat", "--id", "th-1", "--broker", "mqtt://127.0.0.1:1883")


def permabeta(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """stderr of a command that fails."""
    assert main(list(args)) == 1
    err = capsys.readouterr().err
    assert err.startswith("permabeta: ") and "Traceback" not in err
    return err


@pytest.fixture(params=["cat", "sleep 600"], ids=["echoes", "silent"])
def mute(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SerialBoard]:
    """A pty behind which no MicroPython and no ESP chip answers."""
    b = SerialBoard(tmp_path / "mute", program=str(request.param)).start()
    yield b
    b.unplug()


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[str]:
    """A port another program holds (as a serial monitor does)."""
    b = SerialBoard(tmp_path / "busy", program="cat").start()
    with serial.Serial(b.port, exclusive=True):
        yield b.port
    b.unplug()


@pytest.mark.parametrize("command", [("provision", *PROVISION), ("provision", "--inspect"), ("flash",)])
def test_a_missing_port_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: tuple[str]
) -> None:
    err = permabeta(capsys, *command, "--port", str(tmp_path / "ttyUSB9"))
    assert f"no serial port {tmp_path / 'ttyUSB9'} (is the board plugged in? ports seen:" in err


@pytest.mark.parametrize("command", [("provision", *PROVISION), ("provision", "--inspect"), ("flash",)])
def test_a_busy_port_is_named(capsys: pytest.CaptureFixture[str], busy: str, command: tuple[str]) -> None:
    err = permabeta(capsys, *command, "--port", busy)
    assert f"{busy} is busy: another program holds it" in err


@pytest.mark.parametrize("command", [("provision", "--inspect"), ("flash",)])
def test_a_port_a_lockless_monitor_holds_is_named_with_it(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: tuple[str],
) -> None:
    """A serial monitor that takes no lock (screen, cat < PORT) is not refused
    by pyserial's exclusive open: both would read the board's answers. On a
    real serial port (here a pty taken as one) its holder is named."""
    b = SerialBoard(tmp_path / "held", program="cat").start()
    monitor = subprocess.Popen(["sleep", "600"], stdin=open(b.port, "rb"))  # noqa: SIM115
    try:
        monkeypatch.setattr("gateway.board._is_pty", lambda port: False)
        err = permabeta(capsys, *command, "--port", b.port)
        # (the emulator's socat and cat hold this pty too: a real port's holder is the monitor alone)
        assert f"{b.port} is busy: " in err and f"sleep (process {monitor.pid})" in err
        assert f"{b.port} is busy: another program" not in err
    finally:
        monitor.kill()
        monitor.wait()
        b.unplug()


def test_a_port_with_no_repl_times_out_clearly(capsys: pytest.CaptureFixture[str], mute: SerialBoard) -> None:
    start = time.monotonic()
    err = permabeta(capsys, "provision", "--port", mute.port, *PROVISION, "--timeout", "1")
    assert f"{mute.port} did not answer as a MicroPython REPL within 1 s" in err
    assert f"permabeta flash --port {mute.port}" in err
    assert time.monotonic() - start < 10
    err = permabeta(capsys, "provision", "--port", mute.port, "--inspect", "--timeout", "1")
    assert "did not answer as a MicroPython REPL" in err
    assert not list(mute.flash.iterdir())


def test_flashing_a_port_with_no_esp_chip_says_so(
    capsys: pytest.CaptureFixture[str], mute: SerialBoard
) -> None:
    start = time.monotonic()
    err = permabeta(capsys, "flash", "--port", mute.port, "--connect-timeout", "1")
    assert f"no ESP32-class chip answered on {mute.port} within 1 s" in err
    assert "download mode" in err
    assert time.monotonic() - start < 15


def test_provision_names_what_it_lacks(capsys: pytest.CaptureFixture[str], mute: SerialBoard) -> None:
    err = permabeta(capsys, "provision", "--port", mute.port, "--model", "thermostat")
    assert "provision needs --id, --broker (only --port PORT --inspect needs none)" in err
    err = permabeta(capsys, "provision", "--into", str(mute.folder / "d"), "--inspect")
    assert "--inspect reads a board: give its --port" in err
