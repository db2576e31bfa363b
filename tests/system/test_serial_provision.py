"""Provisioning over USB serial without a board: the real MicroPython unix
port behind a socat pty takes the device's files through its raw REPL
(`permabeta provision --port`), then runs them, and the device appears at
the gateway."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main

from ..conftest import unique_id
from ..support.mosquitto import Mosquitto
from ..support.processes import DeviceProcess, GatewayProcess
from ..support.serial_board import SerialBoard
from ..support.wait import wait_for

pytestmark = [pytest.mark.micropython, pytest.mark.slow]

PASSWORD = "serial-secret-1"


def permabeta(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def provision(
    capsys: pytest.CaptureFixture[str],
    board: SerialBoard,
    dev: str,
    *more: str,
    broker: str = "mqtt://127.0.0.1:1883",
    password: str = PASSWORD,
) -> tuple[int, str, str]:
    return permabeta(
        capsys,
        "provision",
        "--port",
        board.port,
        "--model",
        "thermostat",
        "--id",
        dev,
        "--broker",
        broker,
        "--password",
        password,
        *more,
    )


def copied(out: str) -> tuple[int, int, int, int]:
    """(written, kept, removed, verified) from provision's report."""
    m = re.search(r"copied (no file|(\d+) files).*?, (\d+) already there, (\d+) removed; (\d+) verified", out)
    assert m, out
    return int(m.group(2) or 0), int(m.group(3)), int(m.group(4)), int(m.group(5))


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SerialBoard, str]]:
    """A board provisioned once, for the tests that only look at it."""
    b = SerialBoard(tmp_path_factory.mktemp("board")).start()
    dev = unique_id("th")
    args = ["--model", "thermostat", "--id", dev, "--broker", "mqtt://127.0.0.1:1883", "--password", PASSWORD]
    assert main(["provision", "--port", b.port, *args]) == 0
    yield b, dev
    b.unplug()


def test_a_board_provisioned_over_serial_runs_and_appears_at_the_gateway(
    capsys: pytest.CaptureFixture[str],
    board: SerialBoard,
    mosquitto: Mosquitto,
    gateway_process: GatewayProcess,
) -> None:
    dev = unique_id("th")
    rc, out, err = provision(capsys, board, dev, broker=mosquitto.url.url())
    assert rc == 0, err
    written, kept, removed, verified = copied(out)
    assert written == verified > 50 and kept == removed == 0
    assert f"onto {board.port}" in out and f"password '{PASSWORD}'" in out and "claim code" in out
    files = board.files()
    assert {"main.py", "boot.py", "loader.mpy", "config.json", "pb/runtime.mpy"} <= files
    assert "features/thermostat/__init__.mpy" in files and "provisioning.json" not in files
    config = json.loads((board.flash / "config.json").read_text())
    assert (config["device"], config["hal"], config["broker"]["port"]) == (dev, "host", mosquitto.port)
    board.unplug()
    # the board starts: the unix port runs main.py in the folder that played its flash
    mosquitto.add_user(dev, PASSWORD)
    device = DeviceProcess(board.flash).start()
    try:
        entry = wait_for(
            lambda: next((d for d in gateway_process.devices() if d["id"] == dev), None), 30, what="hello"
        )
        assert (entry["model"], entry["board"]) == ("thermostat", "thermostat-v1")
        assert entry["features"] == {"thermostat": "1.1.0"}
    finally:
        device.kill()


def test_provisioning_again_with_nothing_changed_moves_no_file(
    capsys: pytest.CaptureFixture[str], provisioned: tuple[SerialBoard, str]
) -> None:
    board, dev = provisioned
    before = {p: (board.flash / p).stat().st_mtime_ns for p in board.files()}
    rc, out, err = provision(capsys, board, dev)
    assert rc == 0, err
    written, kept, removed, verified = copied(out)
    assert (written, removed) == (0, 0) and kept == verified == len(before)
    assert "copied no file" in out
    assert {p: (board.flash / p).stat().st_mtime_ns for p in board.files()} == before


def test_inspect_shows_what_is_on_the_board(
    capsys: pytest.CaptureFixture[str], provisioned: tuple[SerialBoard, str]
) -> None:
    board, dev = provisioned
    rc, out, err = permabeta(capsys, "provision", "--port", board.port, "--inspect", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["config"] == {"device": dev, "model": "thermostat", "board": "thermostat-v1", "hal": "host"}
    assert info["factory"] == {"thermostat": "1.1.0"} and info["runtime"]
    assert (info["arch"], info["mpy_version"], info["platform"]) == ("x64", 6, "linux")
    assert info["mpy"] & 0xFF == 6  # (sys.implementation._mpy as the board says it)
    assert info["interrupted"] is False and info["pointer"] is None
    assert info["flash_free"] > 0 and 0 < info["mem_free"] < 128 * 1024
    assert PASSWORD not in out
    rc, out, _ = permabeta(capsys, "provision", "--port", board.port, "--inspect")
    assert rc == 0
    assert f"device {dev}: model thermostat, board thermostat-v1" in out
    assert "factory set: thermostat 1.1.0" in out and "provisioning: complete" in out
    assert "RAM:" in out and "flash:" in out and "x64" in out


@pytest.mark.long  # (slow: make long)
def test_a_link_lost_mid_copy_says_so_and_the_same_command_then_succeeds(
    capsys: pytest.CaptureFixture[str], board: SerialBoard
) -> None:
    dev = unique_id("th")
    (board.flash / "data").mkdir()
    (board.flash / "data" / "state.json").write_text('{"boot_count": 7}')  # the device's own
    stop = threading.Event()

    def pull_the_cable() -> None:
        while not stop.is_set():
            if len([f for f in board.files() if f.startswith("pb/")]) >= 8:
                board.unplug()
                return
            stop.wait(0.01)

    puller = threading.Thread(target=pull_the_cable, name="unplug")
    puller.start()
    try:
        rc, out, err = provision(capsys, board, dev)
    finally:
        stop.set()
        puller.join()
    assert rc == 1
    m = re.search(rf"the link to {re.escape(board.port)} was lost after (\d+) of (\d+) files", err)
    assert m and 0 < int(m.group(1)) < int(m.group(2)), err
    assert err.rstrip().endswith("files; run the same command again")
    assert "Traceback" not in err
    # a half-written device does not run: main.py went first and comes back last
    assert "provisioning.json" in board.files() and "main.py" not in board.files()

    board.start()
    rc, out, _ = permabeta(capsys, "provision", "--port", board.port, "--inspect")
    assert "provisioning: INTERRUPTED" in out
    rc, out, err = provision(capsys, board, dev)
    assert rc == 0, err
    written, kept, _, _ = copied(out)
    assert kept >= int(m.group(1)) - 1 and written > 0
    files = board.files()
    assert "provisioning.json" not in files and not any(f.endswith(".part") for f in files)
    assert json.loads((board.flash / "data" / "state.json").read_text()) == {"boot_count": 7}


def _installed_release(flash: Path) -> None:
    """The records an install leaves (pb/ota/flash.py): slot ota/a holds
    release 2.0 (counter 2) and the pointer names it, committed."""
    features = {"thermostat": {"version": "1.3.0"}, "eco": {"version": "0.2.0"}}
    body = {"model": "thermostat", "counter": 2, "version": "2.0", "features": features}
    (flash / "ota" / "a").mkdir(parents=True)
    (flash / "ota" / "a" / "manifest.json").write_text(
        json.dumps({"signed": json.dumps(body), "signatures": []})
    )
    pointer = {"set": "ota/a", "counter": 2, "manifest": "ab" * 32, "state": "committed"}
    (flash / "ota" / "active.json").write_text(json.dumps(pointer))
    (flash / "data" / "data.json").write_text('{"owner": "kept"}')


@pytest.mark.long  # (slow: make long)
def test_a_board_on_a_newer_release_is_not_taken_back_without_force(
    capsys: pytest.CaptureFixture[str], board: SerialBoard
) -> None:
    dev = unique_id("th")
    assert provision(capsys, board, dev)[0] == 0
    _installed_release(board.flash)
    rc, _, err = provision(capsys, board, dev)
    assert rc == 1 and "Traceback" not in err
    assert "runs release 2.0 (counter 2, committed: eco 0.2.0, thermostat 1.3.0)" in err
    assert "factory set provisioned (thermostat 1.1.0 on it now)" in err and "--force" in err
    assert (board.flash / "ota" / "active.json").exists()

    rc, _, err = provision(capsys, board, dev, "--force")
    assert rc == 0, err
    assert not (board.flash / "ota").exists() and not (board.flash / "data" / "data.json").exists()
    assert (board.flash / "data" / "streams.json").exists()  # the owner's choices, from their defaults


def test_a_board_holding_another_device_needs_force(
    capsys: pytest.CaptureFixture[str], provisioned: tuple[SerialBoard, str]
) -> None:
    board, dev = provisioned
    rc, _, err = provision(capsys, board, "th-other")
    assert rc == 1
    assert f"the board on {board.port} is device {dev} (thermostat); use --force" in err
