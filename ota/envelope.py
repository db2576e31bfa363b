"""Signing envelopes (docs/ota.md 1.2) and the Ed25519 primitives behind them.

An envelope is ``{"signed": "<exact JSON text>", "signatures": [{keyid, sig}]}``;
signatures cover the UTF-8 bytes of ``signed`` and nothing else, so adding a
signature never re-serialises what was signed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware.pb.ota import trust

from .errors import EnvelopeError

VerifyFn = Callable[[bytes, bytes, bytes], bool]

MAX_ENVELOPE: int = trust.MAX_ENVELOPE
MAX_SIGNATURES: int = trust.MAX_SIGNATURES


# pb.ota.ed25519 refuses public keys that are not canonical encodings or are of
# small order (with one of those, some signatures "verify" for any message);
# OpenSSL accepts them. So that one signature has one verdict on the maker's
# machine and on the device, such keys are refused before OpenSSL sees them.
_P = 2**255 - 19


def _small_order_ys() -> frozenset[int]:
    """The y of the 8 points of small order: 1, -1, 0 (orders 1, 2, 4) and
    the y of the order-8 points, the roots of d*y^4 + 2*y^2 - 1 = 0."""
    d = -121665 * pow(121666, -1, _P) % _P
    sqrt_m1 = pow(2, (_P - 1) // 4, _P)

    def sqrt(a: int) -> int | None:
        r = pow(a, (_P + 3) // 8, _P)
        r = r if r * r % _P == a else r * sqrt_m1 % _P
        return r if r * r % _P == a else None

    ys = {0, 1, _P - 1}
    s = sqrt((1 + d) % _P)
    assert s is not None  # a property of the curve, not of input
    for y2 in ((-1 + s) * pow(d, -1, _P) % _P, (-1 - s) * pow(d, -1, _P) % _P):
        y = sqrt(y2)
        if y is not None:
            ys |= {y, _P - y}
    return frozenset(ys)


_SMALL_ORDER_Y = _small_order_ys()


def _acceptable_key(public_key: bytes) -> bool:
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    return len(public_key) == 32 and y < _P and y not in _SMALL_ORDER_Y


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 check with `cryptography`: the fast `verify` the tools inject
    into firmware.pb.ota.trust, with the verdicts of the device's pb.ota.ed25519."""
    if not _acceptable_key(bytes(public_key)):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of a private key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PrivateKey) -> str:
    """The key id of docs/ota.md 1: lowercase hex SHA-256 of the raw public key."""
    return str(trust.key_id(public_bytes(key)))


def canonical(body: Mapping[str, Any]) -> str:
    """The one serialisation the tools sign: sorted keys, no spaces."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _encode(signed: str, signatures: list[dict[str, str]]) -> bytes:
    if len(signatures) > MAX_SIGNATURES:
        raise EnvelopeError(f"{len(signatures)} signatures; a device accepts at most {MAX_SIGNATURES}")
    data = json.dumps({"signed": signed, "signatures": signatures}, separators=(",", ":")).encode()
    if len(data) > MAX_ENVELOPE:
        raise EnvelopeError(
            f"signed document of {len(data)} bytes exceeds the {MAX_ENVELOPE} a device accepts"
        )
    return data


def _signature(key: Ed25519PrivateKey, raw: bytes) -> dict[str, str]:
    return {"keyid": key_id(key), "sig": key.sign(raw).hex()}


def sign_envelope(body: Mapping[str, Any], keys: Iterable[Ed25519PrivateKey]) -> bytes:
    """The envelope bytes of body signed by each key (none: unsigned).
    Raises EnvelopeError if the envelope exceeds a device's limits."""
    signed = canonical(body)
    raw = signed.encode()
    return _encode(signed, [_signature(k, raw) for k in keys])


def add_signatures(envelope: bytes, keys: Iterable[Ed25519PrivateKey]) -> bytes:
    """The envelope with each key's signature added over its exact `signed`
    string (a key's earlier signature is replaced). Raises EnvelopeError."""
    try:
        env = json.loads(envelope)
    except ValueError as exc:
        raise EnvelopeError(f"not a signed document: {exc}") from exc
    if not isinstance(env, dict) or not isinstance(env.get("signed"), str):
        raise EnvelopeError("not a signed document: it lacks its 'signed' string")
    signed: str = env["signed"]
    old = env.get("signatures") or []
    if not isinstance(old, list):
        raise EnvelopeError("not a signed document: 'signatures' is not a list")
    raw = signed.encode()
    new = [_signature(k, raw) for k in keys]
    fresh = {s["keyid"] for s in new}
    kept = [s for s in old if not (isinstance(s, dict) and s.get("keyid") in fresh)]
    return _encode(signed, kept + new)
