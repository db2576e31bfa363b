"""The permabeta gateway: device registry, telemetry, commands, OTA, API."""

__version__ = "0.1.0"
