"""The tools' Ed25519 check gives the device's verdict, signature by signature."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.pb.ota import trust
from ota.envelope import _SMALL_ORDER_Y, key_id, public_bytes, verify_signature

from .helpers import device_verify

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493


def _encodings(ys: list[int]) -> list[bytes]:
    return [(y | sign << 255).to_bytes(32, "little") for y in ys for sign in (0, 1)]


def _cases() -> list[tuple[str, bytes, bytes, bytes]]:
    key = Ed25519PrivateKey.generate()
    pub, msg = public_bytes(key), b"manifest bytes"
    sig = key.sign(msg)
    s = int.from_bytes(sig[32:], "little")
    flipped = bytearray(sig)
    flipped[5] ^= 0x10
    cases = [
        ("valid", pub, msg, sig),
        ("other message", pub, msg + b"!", sig),
        ("flipped bit", pub, msg, bytes(flipped)),
        ("non-canonical S", pub, msg, sig[:32] + (s + _L).to_bytes(32, "little")),
        ("other key", public_bytes(Ed25519PrivateKey.generate()), msg, sig),
        ("short signature", pub, msg, sig[:63]),
        ("random key", os.urandom(32), msg, sig),
    ]
    # small-order and non-canonical public keys, with every small-order R and S = 0:
    # OpenSSL accepts some of these for any message; the device never does
    small = _encodings(sorted(_SMALL_ORDER_Y))
    noncanonical = _encodings([_P + i for i in range(19)])
    for a in small + noncanonical:
        for r in small:
            cases.append(("weak key", a, msg, r + bytes(32)))
    return cases


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_verdicts_agree_with_the_device(case: tuple[str, bytes, bytes, bytes]) -> None:
    name, pub, msg, sig = case
    assert verify_signature(pub, msg, sig) == device_verify(pub, msg, sig) == (name == "valid")


def test_key_id_is_the_sha256_of_the_raw_public_key() -> None:
    key = Ed25519PrivateKey.generate()
    assert key_id(key) == hashlib.sha256(public_bytes(key)).hexdigest() == trust.key_id(public_bytes(key))
