"""A real Home Assistant (hass.py) beside the project's Mosquitto, a gateway
in the test's loop and virtual devices of the simulator: the fixtures of
the simulator's and the gateway's tests, and Home Assistant's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# the simulator's virtual devices, the owners' API and a gateway in this loop
from ..gateway.conftest import start_gateway  # noqa: F401
from ..simulator.conftest import keys, make_device  # noqa: F401
from ..simulator.test_owners_say import owners  # noqa: F401
from .hass import HomeAssistant


@pytest.fixture
async def hass(tmp_path: Path) -> AsyncIterator[HomeAssistant]:
    """Home Assistant started and onboarded (its MQTT integration not yet set up)."""
    h = HomeAssistant(tmp_path / "homeassistant")
    try:
        await h.start()
        await h.onboard()
        yield h
    finally:
        await h.stop()
