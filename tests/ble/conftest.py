"""Bluetooth Low Energy without a radio: bleak (the gateway's side) and a
GATT peripheral (the simulated device's side) on bluezoo over a private
D-Bus system bus (tests/support/bluez.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.bluez import BluezStack


@pytest.fixture
def bluez(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BluezStack]:
    """A BluezStack of the test's own (bluezoo serves one connection per
    run), started; DBUS_SYSTEM_BUS_ADDRESS points at its bus for the test,
    so bleak and the peripheral both find it."""
    stack = BluezStack(tmp_path / "bluez").start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", stack.address)
    try:
        yield stack
    finally:
        stack.stop()
