"""The firmware's Ed25519 verification (pb.ota.ed25519) and SHA-512 (pb.ota.sha512).

What is checked: the RFC 8032 section 7.1 vectors and the FIPS 180-4 SHA-512
examples; agreement with the `cryptography` package (OpenSSL) on signatures
it makes and on tampered ones; one test per attack a lax verifier would let
through (S + L, small-order keys, non-canonical encodings); and a corpus of
all of these judged alike by CPython and by one real MicroPython process,
with the pure SHA-512 on both. Timings are printed, never asserted; the
benchmark is benchmarks/ota_verify.py.

The reference arithmetic below is textbook affine Edwards arithmetic (RFC
8032 section 5.1), slow and independent of the module's extended
coordinates; it builds what `cryptography` cannot: torsion points, keys
with a known discrete log, forged signatures.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.pb.ota import ed25519
from firmware.pb.ota.sha512 import Sha512Pure, sha512

from ..support import micropython

# ---- reference arithmetic ----------------------------------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
IDENTITY = (0, 1)
Point = tuple[int, int]


def ref_add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return (x3, y3)


def ref_mul(n: int, pt: Point) -> Point:
    acc = IDENTITY
    while n:
        if n & 1:
            acc = ref_add(acc, pt)
        pt = ref_add(pt, pt)
        n >>= 1
    return acc


def ref_neg(pt: Point) -> Point:
    return ((-pt[0]) % P, pt[1])


def ref_x(y: int, sign: int) -> int | None:
    """The x with that sign bit on the curve at y (y < p), or None."""
    xx = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(xx, (P + 3) // 8, P)
    if (x * x - xx) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if (x * x - xx) % P or (x == 0 and sign):
        return None
    return P - x if x & 1 != sign else x


def ref_encode(pt: Point) -> bytes:
    return (pt[1] | (pt[0] & 1) << 255).to_bytes(32, "little")


BASE: Point = (ref_x(4 * pow(5, P - 2, P) % P, 0) or 0, 4 * pow(5, P - 2, P) % P)


def h_int(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def ref_sign(a: int, pub: bytes, msg: bytes, r: int = 12345) -> bytes:
    """A signature of msg by secret scalar a under the public key bytes pub
    (which need not be [a]B: that is how the odd-key attacks are made)."""
    big_r = ref_encode(ref_mul(r, BASE))
    k = h_int(big_r, pub, msg) % L
    return big_r + ((r + k * a) % L).to_bytes(32, "little")


def ref_equation_holds(pub: Point, msg: bytes, sig: bytes, pub_bytes: bytes) -> bool:
    """Cofactorless [S]B == R + [k]A, R decoded leniently: what a verifier
    without the module's extra checks would conclude."""
    y = (int.from_bytes(sig[:32], "little") & ((1 << 255) - 1)) % P
    x = ref_x(y, 0)
    if x is None:
        return False
    if sig[31] >> 7:
        x = (P - x) % P
    k = h_int(sig[:32], pub_bytes, msg) % L
    s = int.from_bytes(sig[32:], "little")
    return ref_mul(s, BASE) == ref_add((x, y), ref_mul(k, pub))


def torsion() -> list[Point]:
    """The 8 points of order dividing 8, as [j]T for j = 0..7, T of order 8."""
    for y in range(2, 1000):
        x = ref_x(y, 0)
        if x is None:
            continue
        t = ref_mul(L, (x, y))
        if ref_mul(4, t) != IDENTITY:
            return [ref_mul(j, t) for j in range(8)]
    raise AssertionError("no point of order 8 found")


TORSION = torsion()


def order(pt: Point) -> int:
    return next(n for n in (1, 2, 4, 8) if ref_mul(n, pt) == IDENTITY)


# ---- vectors -----------------------------------------------------------------

# RFC 8032 section 7.1: name, secret key, public key, message, signature (hex)
RFC8032 = [
    (
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "TEST 1024",
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1"
        "e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
        "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a"
        "7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
        "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc10"
        "3b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
        "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d"
        "502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
        "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089b"
        "eccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
        "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae0784504df543af8969b"
        "e3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
        "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb038dda0847dd988d"
        "cda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
        "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7"
        "984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
        "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac09"
        "43bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
        "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f161"
        "0e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
        "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8ca"
        "c60c905c15fc910840b94c00a0b9d0",
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
        "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    (
        "TEST SHA(abc)",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]
RFC_IDS = [v[0] for v in RFC8032]

NIST_896 = (
    b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
    b"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
)
# FIPS 180-4 examples (NIST CSRC "SHA512.pdf") and the empty message
SHA512_VECTORS = [
    (
        b"",
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    ),
    (
        b"abc",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    ),
    (
        NIST_896,
        "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
        "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909",
    ),
]
MILLION_A = (
    "e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973eb"
    "de0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e4eadb217ad8cc09b"
)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit >> 3] ^= 1 << (bit & 7)
    return bytes(out)


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def openssl_verdict(pub: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def rfc(name: str) -> tuple[bytes, bytes, bytes]:
    _, _, pk, msg, sig = RFC8032[RFC_IDS.index(name)]
    return bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)


# ---- SHA-512 -----------------------------------------------------------------


@pytest.mark.parametrize(("message", "digest"), SHA512_VECTORS, ids=["empty", "abc", "896-bit"])
def test_sha512_fips_vectors(message: bytes, digest: str) -> None:
    assert Sha512Pure(message).hexdigest() == digest
    h = Sha512Pure()
    for b in message:
        h.update(bytes([b]))
    assert h.digest() == bytes.fromhex(digest)


def test_sha512_million_a_streamed_in_odd_chunks() -> None:
    h = Sha512Pure()
    chunk = b"a" * 997
    for _ in range(1_000_000 // 997):
        h.update(chunk)
    h.update(b"a" * (1_000_000 % 997))
    assert h.hexdigest() == MILLION_A


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=700), cuts=st.lists(st.integers(0, 700), max_size=6))
def test_sha512_pure_matches_hashlib_however_fed(data: bytes, cuts: list[int]) -> None:
    h = Sha512Pure()
    last = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        h.update(memoryview(data)[last:cut])
        last = cut
    h.update(bytearray(data[last:]))
    assert h.digest() == hashlib.sha512(data).digest()


def test_sha512_digest_does_not_end_the_hash() -> None:
    h = Sha512Pure(b"x" * 200)
    copy = h.copy()
    assert h.digest() == h.digest() == hashlib.sha512(b"x" * 200).digest()
    h.update(b"y")
    assert h.digest() == hashlib.sha512(b"x" * 200 + b"y").digest()
    assert copy.digest() == hashlib.sha512(b"x" * 200).digest()


def test_sha512_refuses_str() -> None:
    with pytest.raises(TypeError):
        Sha512Pure().update("abc")


def test_sha512_factory_prefers_hashlib_on_cpython() -> None:
    assert type(sha512()) is type(hashlib.sha512())
    assert sha512(b"abc").digest() == Sha512Pure(b"abc").digest()


# ---- RFC 8032 vectors --------------------------------------------------------


@pytest.mark.parametrize("vector", RFC8032, ids=RFC_IDS)
def test_rfc8032_vectors_are_the_rfcs(vector: tuple[str, ...]) -> None:
    """The vectors as typed here are what the RFC's secret keys produce."""
    _, secret, pk, msg, sig = vector
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    assert raw_public(key).hex() == pk
    assert key.sign(bytes.fromhex(msg)).hex() == sig


@pytest.mark.parametrize("name", RFC_IDS)
@pytest.mark.parametrize("sha", [None, Sha512Pure], ids=["hashlib", "pure"])
def test_rfc8032_vectors_verify(name: str, sha: Any) -> None:
    pk, msg, sig = rfc(name)
    assert ed25519.verify(pk, msg, sig, sha=sha) is True


def _sample_bits(nbits: int) -> list[int]:
    # every 13th bit, plus the top bit (a sign bit, or S's top)
    return sorted(set(range(0, nbits, 13)) | {nbits - 1})


@pytest.mark.parametrize("name", RFC_IDS)
def test_rfc8032_vectors_with_a_flipped_bit_fail(name: str) -> None:
    pk, msg, sig = rfc(name)
    for bit in _sample_bits(len(msg) * 8)[:40] if msg else []:
        assert ed25519.verify(pk, flip(msg, bit), sig) is False, ("message", bit)
    for bit in [*_sample_bits(512), 255, 256]:
        assert ed25519.verify(pk, msg, flip(sig, bit)) is False, ("signature", bit)
    for bit in _sample_bits(256):
        assert ed25519.verify(flip(pk, bit), msg, sig) is False, ("key", bit)
    assert ed25519.verify(pk, msg + b"\x00", sig) is False


# ---- agreement with cryptography (OpenSSL) -----------------------------------

seeds = st.binary(min_size=32, max_size=32)
messages = st.binary(max_size=600)


@settings(max_examples=120, deadline=None)
@given(seed=seeds, message=messages)
def test_signatures_made_by_cryptography_verify(seed: bytes, message: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    assert ed25519.verify(raw_public(key), message, key.sign(message)) is True


@settings(max_examples=120, deadline=None)
@given(seed=seeds, message=messages, part=st.sampled_from(["message", "signature", "key"]), data=st.data())
def test_tampered_signatures_fail_like_openssl(seed: bytes, message: bytes, part: str, data: Any) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pub, sig = raw_public(key), key.sign(message)
    if part == "message":
        message = flip(message, data.draw(st.integers(0, len(message) * 8 - 1))) if message else b"\x00"
    elif part == "signature":
        sig = flip(sig, data.draw(st.integers(0, 511)))
    else:
        pub = flip(pub, data.draw(st.integers(0, 255)))
    assert ed25519.verify(pub, message, sig) is False
    assert openssl_verdict(pub, message, sig) is False


@settings(max_examples=40, deadline=None)
@given(seed=seeds, message=messages, cuts=st.lists(st.integers(0, 600), max_size=8))
def test_streaming_in_any_chunks_equals_one_shot(seed: bytes, message: bytes, cuts: list[int]) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    v = ed25519.Verifier(raw_public(key), key.sign(message))
    last = 0
    for cut in sorted(c for c in cuts if c <= len(message)):
        v.update(message[last:cut])
        last = cut
    v.update(message[last:])
    assert v.verify() is True


# ---- attacks: one test each ----------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds, message=messages)
def test_non_canonical_s_plus_l_rejected(seed: bytes, message: bytes) -> None:
    """S + L satisfies the equation just as S does; RFC 8032 requires S < L."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pub, sig = raw_public(key), key.sign(message)
    s = int.from_bytes(sig[32:], "little")
    malleated = sig[:32] + (s + L).to_bytes(32, "little")
    assert ed25519.verify(pub, message, malleated) is False
    assert openssl_verdict(pub, message, malleated) is False


def small_order_forgery(pt: Point) -> tuple[bytes, bytes, bytes]:
    """(key, message, signature) for the small-order key pt, no secret
    needed: R = [s]B, S = s, and a message whose k is a multiple of pt's
    order, so that [k]A is the identity and [S]B = R + [k]A."""
    pub = ref_encode(pt)
    s = 987654321
    big_r = ref_encode(ref_mul(s, BASE))
    n = order(pt)
    for i in range(1000):
        msg = b"install me %d" % i
        if h_int(big_r, pub, msg) % L % n == 0:
            return pub, msg, big_r + s.to_bytes(32, "little")
    raise AssertionError("no message found")


@pytest.mark.parametrize("j", range(8))
def test_small_order_key_forgery_rejected(j: int) -> None:
    pub, msg, sig = small_order_forgery(TORSION[j])
    # the forgery is real: a verifier without the small-order check accepts it
    assert ref_equation_holds(TORSION[j], msg, sig, pub)
    assert ed25519.verify(pub, msg, sig) is False
    print(f"small order {order(TORSION[j])}: OpenSSL says {openssl_verdict(pub, msg, sig)}")


def test_mixed_order_key_is_judged_cofactorless() -> None:
    """A key with a torsion component: the cofactorless check holds exactly
    when [k]T is the identity, and OpenSSL agrees on every verdict."""
    a = 0x1234567 * 2**200 + 99
    pub_pt = ref_add(ref_mul(a, BASE), TORSION[1])
    pub = ref_encode(pub_pt)
    verdicts = set()
    for i in range(24):
        msg = b"mixed %d" % i
        sig = ref_sign(a, pub, msg)
        expected = h_int(sig[:32], pub, msg) % L % 8 == 0
        assert ed25519.verify(pub, msg, sig) is expected
        assert openssl_verdict(pub, msg, sig) is expected
        verdicts.add(expected)
    assert verdicts == {True, False}


def non_canonical_encodings() -> list[bytes]:
    """y in [p, 2**255), either sign bit: each a y >= p that RFC 8032 rejects."""
    return [((P + i) | sign << 255).to_bytes(32, "little") for i in range(19) for sign in (0, 1)]


def off_curve_encodings() -> list[bytes]:
    """Canonical y for which no x exists."""
    return [y.to_bytes(32, "little") for y in range(2, 40) if ref_x(y, 0) is None]


NEGATIVE_ZERO = [(1 | 1 << 255).to_bytes(32, "little"), (P - 1 | 1 << 255).to_bytes(32, "little")]


@pytest.mark.parametrize(
    "pub",
    non_canonical_encodings() + off_curve_encodings() + NEGATIVE_ZERO,
    ids=lambda b: b.hex()[:6] + ".." + b.hex()[-4:],
)
def test_invalid_key_encoding_rejected_without_exception(pub: bytes) -> None:
    _, msg, sig = rfc("TEST 1")
    assert ed25519.verify(pub, msg, sig) is False


def test_off_curve_encodings_exist() -> None:
    assert len(off_curve_encodings()) > 5


@pytest.mark.parametrize(
    "r_enc",
    [(P + 1).to_bytes(32, "little"), (1 | 1 << 255).to_bytes(32, "little")],
    ids=["y=p+1", "negative-zero"],
)
def test_non_canonical_r_encoding_rejected(r_enc: bytes) -> None:
    """R encodes the identity non-canonically and S = k*a, so [S]B - [k]A is
    the identity: a verifier that decodes R leniently accepts this."""
    a = 77777
    pub = ref_encode(ref_mul(a, BASE))
    msg = b"firmware"
    k = h_int(r_enc, pub, msg) % L
    sig = r_enc + (k * a % L).to_bytes(32, "little")
    assert ref_equation_holds(ref_mul(a, BASE), msg, sig, pub)
    assert ed25519.verify(pub, msg, sig) is False


def identity_r_case() -> tuple[bytes, bytes, bytes]:
    """R the canonical identity, S = k*a: only the key's holder can make it,
    and RFC 8032 (and OpenSSL) call it valid."""
    a = 77777
    pub = ref_encode(ref_mul(a, BASE))
    r_enc = ref_encode(IDENTITY)
    k = h_int(r_enc, pub, b"odd but signed") % L
    return pub, b"odd but signed", r_enc + (k * a % L).to_bytes(32, "little")


def test_identity_r_made_by_the_key_holder_is_valid() -> None:
    pub, msg, sig = identity_r_case()
    assert ed25519.verify(pub, msg, sig) is True
    assert openssl_verdict(pub, msg, sig) is True


@pytest.mark.parametrize(("pk_len", "sig_len"), [(0, 64), (31, 64), (33, 64), (32, 0), (32, 63), (32, 65)])
def test_wrong_lengths_are_false(pk_len: int, sig_len: int) -> None:
    pk, msg, sig = rfc("TEST 1")
    assert ed25519.verify((pk * 2)[:pk_len], msg, (sig * 2)[:sig_len]) is False
    v = ed25519.Verifier((pk * 2)[:pk_len], (sig * 2)[:sig_len])
    assert v.rejected
    v.update(b"ignored")
    assert v.verify() is False


@pytest.mark.parametrize(
    "args",
    [("k" * 32, b"", b"s" * 64), (b"k" * 32, "m", b"s" * 64), (b"k" * 32, b"", None), (None, b"", b"s" * 64)],
)
def test_wrong_types_raise_type_error(args: tuple[Any, Any, Any]) -> None:
    with pytest.raises(TypeError):
        ed25519.verify(*args)


def test_update_after_verify_is_a_programming_error() -> None:
    pk, msg, sig = rfc("TEST 2")
    v = ed25519.Verifier(pk, sig)
    v.update(msg)
    assert v.verify() is True
    assert v.verify() is True
    with pytest.raises(ValueError, match="after verify"):
        v.update(b"more")


def test_tick_is_called_during_verification() -> None:
    pk, msg, sig = rfc("TEST 3")
    ticks = []
    assert ed25519.verify(pk, msg, sig, tick=lambda: ticks.append(1)) is True
    assert 4 <= len(ticks) <= 16


# ---- internals worth pinning -------------------------------------------------


def test_base_table_is_odd_multiples_of_b() -> None:
    pt, two_b = BASE, ref_add(BASE, BASE)
    for row in ed25519._BASE:
        x, y = pt
        assert row == ((y + x) % P, (y - x) % P, 2 * D * x * y % P)
        pt = ref_add(pt, two_b)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 2**253 - 1) | st.sampled_from([0, 1, L - 1, 2**253 - 1, 2**252 - 1]))
def test_naf_digits_sum_to_the_scalar(n: int) -> None:
    out = bytearray(256)
    top = ed25519._naf(n, out)
    digits = [d - 256 if d > 127 else d for d in out]
    assert sum(d << i for i, d in enumerate(digits)) == n
    nonzero = [i for i, d in enumerate(digits) if d]
    assert all(d % 2 and -16 < d < 16 for d in digits if d)
    assert all(b - a >= 5 for a, b in itertools.pairwise(nonzero))
    assert top == (nonzero[-1] if nonzero else -1)


# ---- both interpreters ---------------------------------------------------------

# Runs on MicroPython (and only there): every case through a streaming
# Verifier with the pure SHA-512, and the SHA-512 examples, in one process.
RUNNER = """
import gc, json, sys, time
from pb.ota import ed25519
from pb.ota.sha512 import Sha512Pure

def verdict(pk, msg, sig, chunk):
    try:
        v = ed25519.Verifier(pk, sig, None, Sha512Pure)
        for i in range(0, len(msg), chunk):
            v.update(msg[i:i + chunk])
        return v.verify()
    except Exception as exc:
        return "crash %s: %s" % (type(exc).__name__, exc)

def main(path):
    with open(path) as f:
        spec = json.load(f)
    verdicts = []
    for pk, msg, sig, chunk in spec["cases"]:
        verdicts.append(verdict(bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig), chunk))
    digests = []
    for text, chunk in spec["sha"]:
        h = Sha512Pure()
        data = bytes.fromhex(text)
        for i in range(0, len(data), chunk):
            h.update(data[i:i + chunk])
        digests.append(h.hexdigest())
    h = Sha512Pure()
    chunk = spec["million_a_chunk"]
    for _ in range(1000000 // chunk):
        h.update(b"a" * chunk)
    h.update(b"a" * (1000000 % chunk))
    digests.append(h.hexdigest())
    pk, msg, sig, chunk = spec["cases"][0]
    pk = bytes.fromhex(pk); msg = bytes.fromhex(msg); sig = bytes.fromhex(sig)
    n = 20
    t0 = time.ticks_us()
    for _ in range(n):
        ed25519.verify(pk, msg, sig)
    ms = time.ticks_diff(time.ticks_us(), t0) / 1000 / n
    print(json.dumps({"verdicts": verdicts, "digests": digests, "ms_per_verify": ms}))

main(sys.argv[1])
"""

# One verification on a 64 KiB heap, the heap sampled at every tick (after a
# collection) for the peak of live data.
HEAP_RUNNER = """
import gc, json, sys
gc.collect()
before_import = gc.mem_free()
from pb.ota import ed25519
gc.collect()
free = gc.mem_free()
with open(sys.argv[1]) as f:
    pk, msg, sig = [bytes.fromhex(x) for x in json.load(f)]
low = [free]
def tick():
    gc.collect()
    m = gc.mem_free()
    if m < low[0]:
        low[0] = m
v = ed25519.Verifier(pk, sig, tick)
for i in range(0, len(msg), 64):
    v.update(msg[i:i + 64])
ok = v.verify()
print(json.dumps({"ok": ok, "import_bytes": before_import - free, "peak_bytes": free - low[0]}))
"""


def corpus() -> list[tuple[str, bytes, bytes, bytes, bool]]:
    """(label, key, message, signature, expected verdict)."""
    cases = []
    for name in RFC_IDS:
        pk, msg, sig = rfc(name)
        cases.append((name, pk, msg, sig, True))
        if msg:
            cases.append((name + " message bit", pk, flip(msg, 3), sig, False))
        cases.append((name + " R bit", pk, msg, flip(sig, 100), False))
        cases.append((name + " S bit", pk, msg, flip(sig, 300), False))
        cases.append((name + " key bit", flip(pk, 9), msg, sig, False))
    rng = random.Random(8032)
    lengths = [0, 1, 2, 47, 48, 49, 63, 64, 65, 127, 128, 175, 176, 177, 300, 1000, 4096]
    for i in range(36):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        msg = rng.randbytes(lengths[i % len(lengths)])
        pk, sig = raw_public(key), key.sign(msg)
        cases.append((f"signed {i}", pk, msg, sig, True))
        part = rng.randrange(3)
        if part == 0 and msg:
            cases.append(
                (f"signed {i} tampered message", pk, flip(msg, rng.randrange(len(msg) * 8)), sig, False)
            )
        elif part == 1:
            cases.append((f"signed {i} tampered signature", pk, msg, flip(sig, rng.randrange(512)), False))
        else:
            cases.append((f"signed {i} tampered key", flip(pk, rng.randrange(256)), msg, sig, False))
        if i < 4:
            s_plus_l = sig[:32] + (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
            cases.append((f"signed {i} S+L", pk, msg, s_plus_l, False))
    for j, pt in enumerate(TORSION):
        pub, msg, sig = small_order_forgery(pt)
        cases.append((f"small-order key {j}", pub, msg, sig, False))
    _, msg, sig = rfc("TEST 1")
    for pub in non_canonical_encodings()[::5] + off_curve_encodings()[:4] + NEGATIVE_ZERO:
        cases.append(("invalid key " + pub.hex(), pub, msg, sig, False))
    pk, msg, sig = rfc("TEST 2")
    for n in (0, 31, 33):
        cases.append((f"key of {n} bytes", (pk * 2)[:n], msg, sig, False))
    for n in (0, 63, 65):
        cases.append((f"signature of {n} bytes", pk, msg, (sig * 2)[:n], False))
    cases.append(("identity R", *identity_r_case(), True))
    return cases


@pytest.mark.micropython
def test_micropython_judges_the_corpus_like_cpython() -> None:
    cases = corpus()
    chunks = [1, 7, 64, 129, 1000]
    spec = {
        "cases": [
            [pk.hex(), msg.hex(), sig.hex(), chunks[i % 5]] for i, (_, pk, msg, sig, _) in enumerate(cases)
        ],
        "sha": [[m.hex(), 5] for m, _ in SHA512_VECTORS],
        "million_a_chunk": 997,
    }
    expected = [c[4] for c in cases]
    on_cpython = [ed25519.verify(pk, msg, sig, sha=Sha512Pure) for _, pk, msg, sig, _ in cases]
    assert on_cpython == expected, [c[0] for c, got in zip(cases, on_cpython, strict=True) if got != c[4]]
    got = micropython.run_json(RUNNER, spec)
    wrong = [(c[0], v) for c, v in zip(cases, got["verdicts"], strict=True) if v is not c[4]]
    assert not wrong, wrong
    assert got["digests"] == [d for _, d in SHA512_VECTORS] + [MILLION_A]
    print(f"\nMicroPython: {got['ms_per_verify']:.1f} ms per verification ({len(cases)} cases agree)")


@pytest.mark.micropython
def test_micropython_verifies_on_a_64k_heap() -> None:
    pk, msg, sig = rfc("TEST 1024")
    got = micropython.run_json(HEAP_RUNNER, [pk.hex(), msg.hex(), sig.hex()], heap="64K")
    assert got["ok"] is True
    print(f"\nMicroPython heap: import {got['import_bytes']} B, verification peak {got['peak_bytes']} B live")
