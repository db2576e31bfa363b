"""Valid device messages for gateway tests, to be changed field by field."""

from __future__ import annotations

from typing import Any


def hello(dev: str, **over: Any) -> dict[str, Any]:
    """A thermostat's hello as the protocol's validation accepts it."""
    msg = {
        "v": 1,
        "dev": dev,
        "model": "thermostat",
        "board": "thermostat-v1",
        "runtime": "0.1.0",
        "api": 1,
        "features": {"thermostat": {"version": "1.0.0", "enabled": True, "running": True}},
        "caps": ["relay", "temperature"],
        "heap_free": 81232,
        "reset_cause": "power_on",
        "boot_count": 1,
        "keepalive": 30,
        "telemetry_s": 10.0,
    }
    return msg | over
