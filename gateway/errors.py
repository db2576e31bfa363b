"""The gateway's errors: one root, a few specific branches."""


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A setting, URL or file given to the gateway is unusable."""


class BrokerError(GatewayError):
    """The MQTT broker could not be started or reached."""


class BrokerCertificateError(BrokerError):
    """The broker presented a certificate the gateway does not trust (signed
    by another CA, or for another name): a security failure, never retried."""


class StoreError(GatewayError):
    """The gateway's database could not be opened or is not ours."""


class BoardError(GatewayError):
    """A board on a serial port cannot be reached, read or written (port
    missing or busy, no MicroPython answering, not an ESP32-class chip)."""


class BoardFullError(BoardError):
    """The board's flash has no room for what is written to it."""


class LinkLostError(BoardError):
    """The serial link to a board went away in the middle of an exchange."""


class DeviceNotFoundError(GatewayError):
    """No device with that id is registered."""


class DeviceOfflineError(GatewayError):
    """The device is offline, so a command would not reach it."""


class DeviceRevokedError(DeviceOfflineError):
    """The device is revoked: it is sent nothing, forced or not, until it
    is restored."""


class CommandTimeoutError(GatewayError):
    """The device did not answer a command in time."""


class MetricsError(GatewayError):
    """A feature's `metrics` declaration is malformed (docs/rollouts.md 5), or
    a metric was asked of a window that is not one. `feature`: the feature
    whose declaration is wrong, where one is."""

    code = "bad_metrics"

    def __init__(self, message: str, feature: str | None = None) -> None:
        super().__init__(message)
        self.feature = feature


class ApiError(GatewayError):
    """The gateway's API refused a request or could not be reached."""


class ApiRequestError(ApiError):
    """The API answered with an error: `code` and HTTP `status` as it said."""

    def __init__(self, message: str, code: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ApiCertificateError(ApiError):
    """The API's server presented a certificate the client was not told to
    trust (or not the one it was told): a security failure, never retried."""


class CohortError(GatewayError):
    """A cohort expression does not parse (docs/rollouts.md 3): the message says
    what is wrong and, as `column` (from 1; None for the text as a whole), where."""

    code = "bad_cohort"

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column


# ---- over-the-air updates ----------------------------------------------------


class OtaServiceError(GatewayError):
    """Root of the gateway's update errors; `code` is what the API answers."""

    code = "ota_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class OtaDisabledError(OtaServiceError):
    """The gateway was started without keys, so it cannot sign offers."""

    code = "ota_disabled"


class ReleaseNotFoundError(OtaServiceError):
    """No stored release matches a reference (or more than one does: code 'ambiguous')."""

    code = "unknown_release"


class ReleaseRefusedError(OtaServiceError):
    """A release failed verification or cannot be stored or read; `code` is
    the device's trust code (bad_signature, unknown_key, mismatch,
    bad_manifest, ...) or 'bad_archive', 'counter_taken', 'runtime_dropped',
    'missing_blob', 'storage'. A security failure: never retried."""

    code = "refused"


class UpdateNotFoundError(OtaServiceError):
    """No update with that id."""

    code = "unknown_update"


class UpdateRefusedError(OtaServiceError):
    """An update cannot start: wrong_model, rollback (the device runs that
    counter or a higher one)."""

    code = "refused"


class SettingsError(GatewayError):
    """A device setting that cannot be (docs/rollouts.md 2): what the API answers as 'bad_setting'."""

    code = "bad_setting"


class RolloutError(GatewayError):
    """A rollout that cannot be created or changed (docs/rollouts.md 4):
    `code` is what the API answers."""

    code = "bad_rollout"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class DecisionError(GatewayError):
    """An owner's decision on an update that cannot be (docs/rollouts.md 8.1):
    `code` is what the API answers (bad_decision, not_offered, too_late,
    no_revert)."""

    code = "bad_decision"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
