# Ed25519 signature verification (RFC 8032), pure Python, for OTA images on
# the device. Verification only: the device never signs.
#
# Strictness, so that one signature has one verdict everywhere:
# - public key 32 bytes, signature 64 bytes, else False;
# - S must be canonical (S < L), else False (RFC 8032 5.1.7);
# - A must decode per RFC 8032 5.1.3: y < p, a square root exists, and not
#   the encoding "x = 0 with the sign bit set"; else False;
# - A must not be of small order ([8]A != identity), else False. RFC 8032
#   allows such keys, but with one any message "verifies"; libsodium also
#   refuses them;
# - R is never decoded: the check is cofactorless, [S]B - [k]A is computed,
#   encoded, and compared byte for byte with R. That equals decoding R and
#   testing [S]B == R + [k]A, since a non-canonical, off-curve or
#   "negative zero" R can never be the encoding of a point. A small-order R
#   that meets the equation is valid (only the key's holder can make one),
#   as in RFC 8032 and OpenSSL.
# OpenSSL (the `cryptography` package) agrees on every verdict except for
# small-order keys, which it accepts: a CPython tool that must judge exactly
# as the device does should use this module.
#
# Points are in extended twisted Edwards coordinates (X:Y:Z:T), x = X/Z,
# y = Y/Z, xy = T/Z (Hisil, Wong, Carter, Dawson 2008). [S]B - [k]A is one
# interleaved (Straus) double-and-add over width-5 NAFs of both scalars,
# with a fixed table of 8 odd multiples of B (about 1.5 KB on a 32-bit port)
# and one of 8 odd multiples of A built per call. One modular inversion (by
# Fermat) at the end. About 8 KB of live heap at the peak.
from .sha512 import sha512

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = 2 * _D % _P
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_MASK255 = (1 << 255) - 1

_W = 5  # NAF width: digits are odd and in -15..15
_TICK_EVERY = 32  # main-loop steps between two tick() calls

# B, 3B, 5B, ..., 15B, each as affine (y + x, y - x, 2d*x*y) mod p, the form
# a mixed addition wants. tests/firmware/test_ed25519.py rebuilds this table.
_BASE = (
    (
        0x07CF9D3A33D4BA65270B4898643D42C2CF932DC6FB8C0E192FBC93C6F58C3B85,
        0x44FD2F9298F81267A5C18434688F8A09FD399F05D140BEB39D103905D740913E,
        0x6F117B689F0C65A85A1B7DCBDD43598C26D9E823CCAAC49EABC91205877AAA68,
    ),
    (
        0x7A164E1B9A80F8F4C11B50029F016732025A8430E8864B8AAF25B0A84CEE9730,
        0x2AB91587555BDA628131F31A214BD6BD3BD353FDE5C1BA7D56611FE8A4FCD265,
        0x5A2826AF12B9B4C6D170E5458CF2DB4C589423221C35DA6214AE933F0DD0D889,
    ),
    (
        0x2945CCF146E206EBDD1BEB0C5ABFEC448D5048C3C75EED02A212BC4408A5BB33,
        0x154A7E73EB1B55F3E33CF11CB864A087D50014D14B2729B77F9182C3A447D6BA,
        0x43AABE696B3BB69AB41B670B1BBDA72D270E0807D0BDD1FCBCBBDBF1812A8285,
    ),
    (
        0x461BEA69283C927E71B2528228542E497470353AB39DC0D26B1A5CD0944EA3BF,
        0x1D6EDD5D2E5317E09DEA764F92192C3A6CA021533BBA23A7BA6F2C9AAA3221B1,
        0x7A9FBB1C6A0F90A7529C41BA5877ADF3B3035F47053EA49AF1836DC801B8B3A2,
    ),
    (
        0x34B9ED338ADD7F59CEB233C9C686F5B5A6509E6F51BC46C59B2E678AA6A8632F,
        0x49C05A51FADC9C8F96CBC608E75EB04498A081B6F520419BF36E217E039D8064,
        0x73C172021B008B06AAF6FC2993D4CF16E2FF83E8A719D22F06B4E8BF9045AF1B,
    ),
    (
        0x4275AAE2546D8FAF113E847117703406E5D9FECF02302E272FBF00848A802ADE,
        0x18AB598029D5C77FA3A075556A8DEB953ED6B36977088381315F5B0249864348,
        0x3DC65522B53DF94844311199B51A8622031EB4A13282E4A4D82B2CC5FD6089E9,
    ),
    (
        0x234FD7EEC346F241537A0E12FB07BA07BF84B39AB5BCDEDBBF70C222A2007F6D,
        0x0267882D176024A79D12B232AAAD5968AEFCEBC99B776F6B506F013B327FBF93,
        0x497BA6FDAA097863A2EF37F891A7E5332437E6B1DF8DD4715360A119732EA378,
    ),
    (
        0x61E22917F12DE72B2DBDBDFAC1F2D4D08648C28D189C246D24CECC0313CFEAA0,
        0x43B5CD4218D05EBF7508300807B25192D3829BA42A9910D6040BCD86468CCF0B,
        0x511D61210AE4D842032E5A7D93D64270EB38AF4E373FDEEE5D9A762F9BD0B516,
    ),
)


def _check_bytes(value, what):
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("%s must be bytes, not %s" % (what, type(value).__name__))


def _dbl(P, want_t):
    """2P, from X, Y, Z alone; T only when want_t (it costs a multiply)."""
    p = _P
    X, Y, Z = P[0], P[1], P[2]
    xx = X * X % p
    yy = Y * Y % p
    zz2 = 2 * Z * Z % p
    s = X + Y
    e = s * s - yy - xx  # 2xy
    g = yy - xx
    f = zz2 - g
    h = yy + xx
    # dbl-2008-hwcd for a = -1, every coordinate negated (saves two negations)
    return (e * f % p, g * h % p, f * g % p, e * h % p if want_t else 0)


def _madd(P, n, neg, want_t):
    """P + Q (or P - Q when neg), Q an affine point n = (y+x, y-x, 2dxy)."""
    p = _P
    X, Y, Z, T = P
    if neg:
        a = (Y + X) * n[1]
        b = (Y - X) * n[0]
        c = -T * n[2]
    else:
        a = (Y + X) * n[0]
        b = (Y - X) * n[1]
        c = T * n[2]
    a %= p
    b %= p
    c %= p
    d = 2 * Z
    e = a - b
    h = a + b
    f = d - c
    g = d + c
    return (e * f % p, g * h % p, f * g % p, e * h % p if want_t else 0)


def _add(P, q, neg, want_t):
    """P + Q (or P - Q when neg), Q cached as (Y+X, Y-X, Z, 2dT)."""
    p = _P
    X, Y, Z, T = P
    if neg:
        a = (Y + X) * q[1]
        b = (Y - X) * q[0]
        c = -T * q[3]
    else:
        a = (Y + X) * q[0]
        b = (Y - X) * q[1]
        c = T * q[3]
    a %= p
    b %= p
    c %= p
    d = 2 * Z * q[2] % p
    e = a - b
    h = a + b
    f = d - c
    g = d + c
    return (e * f % p, g * h % p, f * g % p, e * h % p if want_t else 0)


def _cached(P):
    X, Y, Z, T = P
    return ((Y + X) % _P, (Y - X) % _P, Z, T * _D2 % _P)


def _naf(n, out):
    """Width-5 NAF of 0 <= n < 2**253 into out (a bytearray of 256, each
    digit d stored as d & 0xFF); the index of the top non-zero digit, or -1."""
    b = n.to_bytes(34, "little")
    width = 1 << _W
    half = width >> 1
    mask = width - 1
    top = -1
    for i in range(256):
        out[i] = 0
    pos = 0
    carry = 0
    while pos < 256:
        i = pos >> 3
        window = carry + (((b[i] | (b[i + 1] << 8)) >> (pos & 7)) & mask)
        if not window & 1:
            pos += 1
            continue
        if window < half:
            carry = 0
            out[pos] = window
        else:
            carry = 1
            out[pos] = (window - width) & 0xFF
        top = pos
        pos += _W
    return top


def _decode(s):
    """The point (X, Y, Z, T) encoded by 32 bytes s, or None if s encodes
    none (RFC 8032 5.1.3, strict: y < p)."""
    p = _P
    n = int.from_bytes(s, "little")
    y = n & _MASK255
    sign = n >> 255
    if y >= p:
        return None
    yy = y * y % p
    u = (yy - 1) % p
    v = (_D * yy + 1) % p
    v3 = v * v * v % p
    x = u * v3 * pow(u * v3 * v3 * v % p, (p - 5) // 8, p) % p
    vxx = v * x * x % p
    if vxx != u:
        if vxx != p - u:
            return None
        x = x * _SQRT_M1 % p
    if x == 0 and sign:
        return None
    if (x & 1) != sign:
        x = p - x
    return (x, y, 1, x * y % p)


def _small_order(P):
    """Whether [8]P is the identity."""
    Q = _dbl(_dbl(_dbl(P, False), False), False)
    return Q[0] % _P == 0 and (Q[1] - Q[2]) % _P == 0


def _check(A, R, S, k, tick):
    """Whether [S]B - [k]A encodes to R (the signature's first half, as a
    little-endian integer)."""
    p = _P
    # 8 odd multiples of A, cached: A, 3A, ..., 15A
    a2 = _dbl(A, True)
    a2c = _cached(a2)
    cur = A
    table = [_cached(A)]
    for _ in range(7):
        cur = _add(cur, a2c, False, True)
        table.append(_cached(cur))
    ns = bytearray(256)
    nk = bytearray(256)
    top = _naf(S, ns)
    tk = _naf(k, nk)
    if tk > top:
        top = tk
    base = _BASE
    Q = (0, 1, 1, 0)
    i = top
    while i >= 0:
        ds = ns[i]
        dk = nk[i]
        Q = _dbl(Q, ds or dk)
        if ds:
            if ds < 128:
                Q = _madd(Q, base[ds >> 1], False, dk)
            else:
                Q = _madd(Q, base[(256 - ds) >> 1], True, dk)
        if dk:
            # -[k]A: a positive digit subtracts
            if dk < 128:
                Q = _add(Q, table[dk >> 1], True, False)
            else:
                Q = _add(Q, table[(256 - dk) >> 1], False, False)
        if tick is not None and not i % _TICK_EVERY:
            tick()
        i -= 1
    zi = pow(Q[2], p - 2, p)
    x = Q[0] * zi % p
    y = Q[1] * zi % p
    return (y | ((x & 1) << 255)) == R


class Verifier:
    """Streaming Ed25519 verification of one signature by one public key:
    feed the message in chunks to update(), then call verify() once. Only
    the SHA-512 state is kept, never the message. A key or signature that
    can never verify (wrong length, non-canonical S, bad or small-order key)
    is found at once: `rejected` is then True, update() skips hashing and
    verify() says False.

    tick, if given, is called with no argument every few dozen point
    operations during verify() (feed a watchdog there). sha, if given, makes
    the SHA-512 hasher (default pb.ota.sha512.sha512: hashlib's where present).
    Raises TypeError if a key, signature or chunk is not bytes-like, and
    ValueError for update() after verify()."""

    def __init__(self, public_key, signature, tick=None, sha=None):
        _check_bytes(public_key, "public key")
        _check_bytes(signature, "signature")
        self._tick = tick
        self._result = None
        self._done = False
        self._h = None
        if len(public_key) != 32 or len(signature) != 64:
            self._result = False
            return
        sig = bytes(signature)
        pub = bytes(public_key)
        self._R = int.from_bytes(sig[:32], "little")
        self._S = int.from_bytes(sig[32:], "little")
        if self._S >= _L:
            self._result = False
            return
        self._A = _decode(pub)
        if self._A is None or _small_order(self._A):
            self._result = False
            return
        self._h = sha512() if sha is None else sha()
        self._h.update(sig[:32])
        self._h.update(pub)

    @property
    def rejected(self):
        """True once the verdict is known to be False; from the start when
        the key or signature alone rules it out, so a caller may stop
        streaming the message early."""
        return self._result is False

    def update(self, chunk):
        _check_bytes(chunk, "message chunk")
        if self._done:
            raise ValueError("update() after verify()")
        if self._h is not None:
            self._h.update(chunk)

    def verify(self):
        """True if the signature is valid for the message fed so far. The
        Verifier is done after this; verify() again gives the same answer."""
        self._done = True
        if self._result is None:
            k = int.from_bytes(self._h.digest(), "little") % _L
            self._h = None
            self._result = _check(self._A, self._R, self._S, k, self._tick)
            self._A = None
        return self._result


def verify(public_key, message, signature, tick=None, sha=None):
    """Whether signature (64 bytes) is a valid Ed25519 signature of message
    by public_key (32 bytes); tick and sha as for Verifier. False for any
    invalid input value; TypeError if an argument is not bytes-like."""
    v = Verifier(public_key, signature, tick, sha)
    v.update(message)
    return v.verify()
