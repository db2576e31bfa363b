"""The gateway's errors: one root, a few specific branches."""


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A setting, URL or file given to the gateway is unusable."""


class BrokerError(GatewayError):
    """The MQTT broker could not be started or reached."""


class StoreError(GatewayError):
    """The gateway's database could not be opened or is not ours."""


class DeviceNotFoundError(GatewayError):
    """No device with that id is registered."""


class DeviceOfflineError(GatewayError):
    """The device is offline, so a command would not reach it."""


class CommandTimeoutError(GatewayError):
    """The device did not answer a command in time."""


class ApiError(GatewayError):
    """The gateway's API refused a request or could not be reached."""
