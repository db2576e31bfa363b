"""Compiling for a board: the architecture it reports, and whether it loads
what mpy-cross makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ota.errors import BuildError
from ota.mpy import ARCHS, board_arch, check_loads, compile_module

STORE = Path(__file__).resolve().parents[2] / "firmware" / "pb" / "store.py"
UNIX_X64 = 0xB06  # the unix port on x86-64: .mpy v6.3, arch 2
ESP32 = 6 | 3 << 8 | 10 << 10  # xtensawin


def test_the_board_arch_is_read_from_its_mpy_word() -> None:
    assert board_arch(UNIX_X64) == "x64"
    assert board_arch(ESP32) == "xtensawin"
    assert board_arch(6) is None  # bytecode only
    assert ARCHS.index("rv32imc") == 11
    with pytest.raises(BuildError, match="unknown to mpy-cross"):
        board_arch(6 | 15 << 10)


def test_compiling_for_a_board_keeps_bytecode_the_same_as_a_release() -> None:
    release = compile_module(STORE, "pb/store.py")
    assert compile_module(STORE, "pb/store.py", "xtensawin") == release
    check_loads(release, ESP32)
    check_loads(release, UNIX_X64)


def test_a_board_of_another_mpy_version_is_refused() -> None:
    data = compile_module(STORE, "pb/store.py")
    with pytest.raises(BuildError, match="the board loads version 5: use the mpy-cross"):
        check_loads(data, 5 | 10 << 10)
    with pytest.raises(BuildError, match=r"not a \.mpy"):
        check_loads(b"print(1)", ESP32)


def test_native_code_runs_only_on_its_arch(tmp_path: Path) -> None:
    src = tmp_path / "fast.py"
    src.write_text("@micropython.native\ndef f(x):\n    return x + 1\n")
    data = compile_module(src, "fast.py", "x64")
    check_loads(data, UNIX_X64)
    with pytest.raises(BuildError, match="native code for x64 does not run"):
        check_loads(data, ESP32)
