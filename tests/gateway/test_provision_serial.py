"""What a provisioning over serial changes on a board (pure: the plan from
the hashes the board reported), and what it refuses."""

from __future__ import annotations

import pytest

from firmware.pb.ota import flash
from gateway.errors import ConfigError
from gateway.provision_serial import MARK, check_board, plan, sha256

WANT = [
    ("boot.py", b"boot"),
    ("pb/runtime.mpy", b"runtime 2"),
    ("main.py", b"main 2"),
    ("features/thermostat/__init__.mpy", b"thermostat"),
    ("config.json", b"{}"),
    ("data/streams.json", b"{choices}"),
    ("ota/root.json", b"root 1"),
]


def held(**extra: bytes) -> dict[str, str]:
    return {p: sha256(d) for p, d in {**dict(WANT), **extra}.items()}


def test_a_board_holding_the_device_moves_nothing() -> None:
    p = plan(WANT, held())
    assert p.empty and p.kept == len(WANT)


def test_only_changed_files_move_and_main_comes_back_last() -> None:
    have = held()
    have["pb/runtime.mpy"] = sha256(b"runtime 1")
    have["main.py"] = sha256(b"main 1")
    p = plan(WANT, have)
    assert [path for path, _ in p.write] == ["pb/runtime.mpy", "main.py"]
    assert p.kept == len(WANT) - 2 and p.remove == ()
    # main.py unchanged: it goes back last all the same (the copy took it off first)
    have["main.py"] = sha256(b"main 2")
    p = plan(WANT, have)
    assert [path for path, _ in p.write] == ["pb/runtime.mpy", "main.py"] and p.kept == len(WANT) - 2


def test_files_the_device_no_longer_has_go_but_never_its_own_data() -> None:
    have = held(
        **{
            "pb/old.mpy": b"x",  # a module the runtime dropped
            "pb/runtime.py": b"x",  # the source form, where .mpy now goes
            "features/vent/__init__.mpy": b"x",  # a feature not provisioned any more
            "loader.py": b"x",
            "pb/store.mpy.part": b"half",  # a copy cut short
            "data/state.json": b"{}",  # the runtime's records, the owner's data
            "data/data.json": b"{}",
            "ota/active.json": b"{}",  # the update path's state
            "ota/root.1.json": b"root 1",
            "hal/sensors.json": b"{}",
        }
    )
    p = plan(WANT, have)
    assert p.remove == (
        "features/vent/__init__.mpy",
        "loader.py",
        "pb/old.mpy",
        "pb/runtime.py",
        "pb/store.mpy.part",
    )


def test_the_owners_choices_are_written_once() -> None:
    have = held()
    have["data/streams.json"] = sha256(b"{the owner's own}")
    assert plan(WANT, have).empty
    del have["data/streams.json"]
    assert [path for path, _ in plan(WANT, have).write] == ["data/streams.json", "main.py"]


def test_a_root_the_board_trusts_already_is_not_sent_again() -> None:
    have = held()
    del have["ota/root.json"]  # taken at its first boot...
    have["ota/root.1.json"] = sha256(b"root 1")  # ...as the root of version 1
    assert plan(WANT, have).empty
    have["ota/root.1.json"] = sha256(b"root 0")
    assert [path for path, _ in plan(WANT, have).write] == ["ota/root.json", "main.py"]


def _info(**extra: object) -> dict[str, object]:
    return {"config": {"device": "th-1", "model": "thermostat"}, "factory": {"thermostat": "1.1.0"}, **extra}


def test_another_device_on_the_board_needs_force() -> None:
    with pytest.raises(
        ConfigError, match=r"is device th-1 \(thermostat\); use --force to provision it as th-2"
    ):
        check_board(_info(), "th-2", "/dev/ttyUSB0", force=False)
    check_board(_info(), "th-2", "/dev/ttyUSB0", force=True)
    check_board(_info(), "th-1", "/dev/ttyUSB0", force=False)
    check_board({}, "th-1", "/dev/ttyUSB0", force=False)  # a blank board


def test_a_release_installed_is_not_taken_back_to_the_factory_set() -> None:
    info = _info(
        pointer={"set": "ota/b", "counter": 3, "state": "trial"},
        set={"version": "3.1", "counter": 3, "features": {"thermostat": "1.4.0"}},
    )
    with pytest.raises(ConfigError) as exc:
        check_board(info, "th-1", "/dev/ttyUSB0", force=False)
    assert "runs release 3.1 (counter 3, on trial: thermostat 1.4.0), newer than the factory set" in str(
        exc.value
    )
    assert "(thermostat 1.1.0 on it now); use --force to reset it" in str(exc.value)
    check_board(info, "th-1", "/dev/ttyUSB0", force=True)
    check_board(_info(pointer={"set": "features", "counter": 0}), "th-1", "/dev/ttyUSB0", force=False)


def test_the_marker_is_the_one_the_firmware_names() -> None:
    assert MARK == flash.PROVISIONING
