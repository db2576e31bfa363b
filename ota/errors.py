"""The ota package's errors: one root, a few specific branches."""

from __future__ import annotations


class OtaError(Exception):
    """Root of every error the ota tools raise on purpose."""


class KeyStoreError(OtaError):
    """A keys folder cannot be created, read or used (missing key, wrong
    mode, keys that do not match root.json, refusal to overwrite)."""


class EnvelopeError(OtaError):
    """A signed document is malformed or exceeds what a device accepts
    (16384 bytes, 8 signatures)."""


class BuildError(OtaError):
    """A release cannot be built from the given features or model."""


class ReleaseError(OtaError):
    """A folder is not a well-formed release (no manifest, inconsistent
    manifest, missing blob). `code` is the trust code or 'missing_blob'."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class VerifyError(OtaError):
    """A release, root or statement fails verification: a security failure,
    never retried silently. `code` is the device's trust code
    (firmware/pb/errors.py TrustError: bad_signature, unknown_key, ...) or
    'missing_blob' (a blob file is absent). Blob content that is not what
    was signed is 'mismatch', as on the device."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
