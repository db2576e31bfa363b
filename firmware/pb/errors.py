# The device runtime's errors: one root, a few specific branches.


class FirmwareError(Exception):
    """Root of every error the device runtime raises on purpose."""


class ProtocolError(FirmwareError):
    """A message or packet that does not follow the protocol.

    `code` is a short machine-readable reason (see docs/protocol.md, "Errors").
    """

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class MqttError(FirmwareError):
    """The MQTT link failed (refused, closed, timed out)."""


class StoreError(FirmwareError):
    """The on-flash store could not read or write a record."""


class FeatureError(FirmwareError):
    """A feature package is invalid, cannot start, or misbehaved."""


class ConfigError(FirmwareError):
    """A configuration value is unknown, of the wrong type or out of range."""


class HalError(FirmwareError):
    """A sensor or actuator could not be read or driven."""


class TrustError(FirmwareError):
    """A signed document is invalid, untrusted, stale or not for this device.
    Security failures are their own branch: never retried silently.

    `code` says which (docs/security.md): bad_envelope, bad_signature,
    unknown_key, bad_root, rollback, freeze, wrong_model, wrong_hardware,
    wrong_api, wrong_form, bad_path, bad_manifest, mismatch.
    """

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message
