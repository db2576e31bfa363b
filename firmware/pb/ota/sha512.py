# SHA-512 (FIPS 180-4) in pure Python, for the Ed25519 check of OTA images:
# the MicroPython ports have no hashlib.sha512. Streaming like hashlib.
#
# Each 64-bit word is held as two 32-bit halves (hi, lo). On a 64-bit port
# those are small ints, so a block compresses without a heap allocation and
# about four times faster than with masked 64-bit ints, which MicroPython
# keeps as heap bignums. On a 32-bit port (ESP32: small ints hold 31 bits)
# halves at or above 2**30 still become bignums; measure there before
# changing the representation.
import struct

_M32 = 0xFFFFFFFF

# Round constants, as (hi, lo) halves of the 80 64-bit words of FIPS 180-4 4.2.3.
_K = (
    0x428A2F98, 0xD728AE22, 0x71374491, 0x23EF65CD, 0xB5C0FBCF, 0xEC4D3B2F, 0xE9B5DBA5, 0x8189DBBC,
    0x3956C25B, 0xF348B538, 0x59F111F1, 0xB605D019, 0x923F82A4, 0xAF194F9B, 0xAB1C5ED5, 0xDA6D8118,
    0xD807AA98, 0xA3030242, 0x12835B01, 0x45706FBE, 0x243185BE, 0x4EE4B28C, 0x550C7DC3, 0xD5FFB4E2,
    0x72BE5D74, 0xF27B896F, 0x80DEB1FE, 0x3B1696B1, 0x9BDC06A7, 0x25C71235, 0xC19BF174, 0xCF692694,
    0xE49B69C1, 0x9EF14AD2, 0xEFBE4786, 0x384F25E3, 0x0FC19DC6, 0x8B8CD5B5, 0x240CA1CC, 0x77AC9C65,
    0x2DE92C6F, 0x592B0275, 0x4A7484AA, 0x6EA6E483, 0x5CB0A9DC, 0xBD41FBD4, 0x76F988DA, 0x831153B5,
    0x983E5152, 0xEE66DFAB, 0xA831C66D, 0x2DB43210, 0xB00327C8, 0x98FB213F, 0xBF597FC7, 0xBEEF0EE4,
    0xC6E00BF3, 0x3DA88FC2, 0xD5A79147, 0x930AA725, 0x06CA6351, 0xE003826F, 0x14292967, 0x0A0E6E70,
    0x27B70A85, 0x46D22FFC, 0x2E1B2138, 0x5C26C926, 0x4D2C6DFC, 0x5AC42AED, 0x53380D13, 0x9D95B3DF,
    0x650A7354, 0x8BAF63DE, 0x766A0ABB, 0x3C77B2A8, 0x81C2C92E, 0x47EDAEE6, 0x92722C85, 0x1482353B,
    0xA2BFE8A1, 0x4CF10364, 0xA81A664B, 0xBC423001, 0xC24B8B70, 0xD0F89791, 0xC76C51A3, 0x0654BE30,
    0xD192E819, 0xD6EF5218, 0xD6990624, 0x5565A910, 0xF40E3585, 0x5771202A, 0x106AA070, 0x32BBD1B8,
    0x19A4C116, 0xB8D2D0C8, 0x1E376C08, 0x5141AB53, 0x2748774C, 0xDF8EEB99, 0x34B0BCB5, 0xE19B48A8,
    0x391C0CB3, 0xC5C95A63, 0x4ED8AA4A, 0xE3418ACB, 0x5B9CCA4F, 0x7763E373, 0x682E6FF3, 0xD6B2B8A3,
    0x748F82EE, 0x5DEFB2FC, 0x78A5636F, 0x43172F60, 0x84C87814, 0xA1F0AB72, 0x8CC70208, 0x1A6439EC,
    0x90BEFFFA, 0x23631E28, 0xA4506CEB, 0xDE82BDE9, 0xBEF9A3F7, 0xB2C67915, 0xC67178F2, 0xE372532B,
    0xCA273ECE, 0xEA26619C, 0xD186B8C7, 0x21C0C207, 0xEADA7DD6, 0xCDE0EB1E, 0xF57D4F7F, 0xEE6ED178,
    0x06F067AA, 0x72176FBA, 0x0A637DC5, 0xA2C898A6, 0x113F9804, 0xBEF90DAE, 0x1B710B35, 0x131C471B,
    0x28DB77F5, 0x23047D84, 0x32CAAB7B, 0x40C72493, 0x3C9EBE0A, 0x15C9BEBC, 0x431D67C4, 0x9C100D4C,
    0x4CC5D4BE, 0xCB3E42B6, 0x597F299C, 0xFC657E2A, 0x5FCB6FAB, 0x3AD6FAEC, 0x6C44198C, 0x4A475817,
)  # fmt: skip

_IV = (
    0x6A09E667, 0xF3BCC908, 0xBB67AE85, 0x84CAA73B, 0x3C6EF372, 0xFE94F82B, 0xA54FF53A, 0x5F1D36F1,
    0x510E527F, 0xADE682D1, 0x9B05688C, 0x2B3E6C1F, 0x1F83D9AB, 0xFB41BD6B, 0x5BE0CD19, 0x137E2179,
)  # fmt: skip

_BLOCK = 128


def _compress(h, w, block, off):
    """Fold the 128-byte block at block[off:] into the state h (16 halves),
    using w (160 halves) as the message schedule."""
    M = _M32
    w[0:32] = struct.unpack_from(">32I", block, off)
    # Rotations by n < 32 move bits between the halves; by n >= 32 they swap
    # the halves and rotate by n - 32. Bits are masked off before a left
    # shift so that nothing ever grows past 32 bits.
    for t in range(32, 160, 2):
        xh = w[t - 30]
        xl = w[t - 29]
        # sigma0 = rotr1 ^ rotr8 ^ shr7
        s0h = ((xh >> 1) | ((xl & 1) << 31)) ^ ((xh >> 8) | ((xl & 0xFF) << 24)) ^ (xh >> 7)
        s0l = (
            ((xl >> 1) | ((xh & 1) << 31))
            ^ ((xl >> 8) | ((xh & 0xFF) << 24))
            ^ ((xl >> 7) | ((xh & 0x7F) << 25))
        )
        xh = w[t - 4]
        xl = w[t - 3]
        # sigma1 = rotr19 ^ rotr61 ^ shr6
        s1h = ((xh >> 19) | ((xl & 0x7FFFF) << 13)) ^ (((xh & 0x1FFFFFFF) << 3) | (xl >> 29)) ^ (xh >> 6)
        s1l = (
            ((xl >> 19) | ((xh & 0x7FFFF) << 13))
            ^ (((xl & 0x1FFFFFFF) << 3) | (xh >> 29))
            ^ ((xl >> 6) | ((xh & 0x3F) << 26))
        )
        lo = w[t - 31] + s0l + w[t - 13] + s1l
        w[t + 1] = lo & M
        w[t] = (w[t - 32] + s0h + w[t - 14] + s1h + (lo >> 32)) & M

    ah, al, bh, bl, ch, cl, dh, dl, eh, el, fh, fl, gh, gl, hh, hl = h
    K = _K
    for t in range(0, 160, 2):
        # Sigma1(e) = rotr14 ^ rotr18 ^ rotr41
        s1h = (
            ((eh >> 14) | ((el & 0x3FFF) << 18))
            ^ ((eh >> 18) | ((el & 0x3FFFF) << 14))
            ^ ((el >> 9) | ((eh & 0x1FF) << 23))
        )
        s1l = (
            ((el >> 14) | ((eh & 0x3FFF) << 18))
            ^ ((el >> 18) | ((eh & 0x3FFFF) << 14))
            ^ ((eh >> 9) | ((el & 0x1FF) << 23))
        )
        t1l = hl + s1l + ((el & fl) ^ (~el & gl)) + K[t + 1] + w[t + 1]
        t1h = hh + s1h + ((eh & fh) ^ (~eh & gh)) + K[t] + w[t] + (t1l >> 32)
        t1l &= M
        # Sigma0(a) = rotr28 ^ rotr34 ^ rotr39
        s0h = (
            ((ah >> 28) | ((al & 0xFFFFFFF) << 4))
            ^ ((al >> 2) | ((ah & 3) << 30))
            ^ ((al >> 7) | ((ah & 0x7F) << 25))
        )
        s0l = (
            ((al >> 28) | ((ah & 0xFFFFFFF) << 4))
            ^ ((ah >> 2) | ((al & 3) << 30))
            ^ ((ah >> 7) | ((al & 0x7F) << 25))
        )
        t2l = s0l + ((al & bl) ^ (al & cl) ^ (bl & cl))
        t2h = s0h + ((ah & bh) ^ (ah & ch) ^ (bh & ch))
        hh = gh
        hl = gl
        gh = fh
        gl = fl
        fh = eh
        fl = el
        el = dl + t1l
        eh = (dh + t1h + (el >> 32)) & M
        el &= M
        dh = ch
        dl = cl
        ch = bh
        cl = bl
        bh = ah
        bl = al
        al = t1l + t2l
        ah = (t1h + t2h + (al >> 32)) & M
        al &= M

    _add(h, 0, ah, al)
    _add(h, 2, bh, bl)
    _add(h, 4, ch, cl)
    _add(h, 6, dh, dl)
    _add(h, 8, eh, el)
    _add(h, 10, fh, fl)
    _add(h, 12, gh, gl)
    _add(h, 14, hh, hl)


def _add(h, i, xh, xl):
    lo = h[i + 1] + xl
    h[i + 1] = lo & _M32
    h[i] = (h[i] + xh + (lo >> 32)) & _M32


class Sha512Pure:
    """SHA-512 in pure Python: update(data) any number of times, then
    digest(). Memory stays bounded (a 128-byte buffer and a 160-entry
    schedule) whatever the length of the data. update() raises TypeError
    for a str or other non-bytes-like value."""

    name = "sha512"
    digest_size = 64
    block_size = _BLOCK

    def __init__(self, data=None):
        self._h = list(_IV)
        self._w = [0] * 160
        self._buf = bytearray(_BLOCK)
        self._used = 0  # bytes waiting in _buf
        self._length = 0  # bytes hashed so far
        if data is not None:
            self.update(data)

    def update(self, data):
        if isinstance(data, str):
            raise TypeError("sha512 hashes bytes, not str")
        mv = memoryview(data)
        n = len(mv)
        self._length += n
        buf = self._buf
        used = self._used
        pos = 0
        if used:
            take = _BLOCK - used
            if take > n:
                take = n
            buf[used : used + take] = mv[:take]
            used += take
            pos = take
            if used < _BLOCK:
                self._used = used
                return
            _compress(self._h, self._w, buf, 0)
        h = self._h
        w = self._w
        while n - pos >= _BLOCK:
            _compress(h, w, mv, pos)
            pos += _BLOCK
        rest = n - pos
        if rest:
            buf[0:rest] = mv[pos:]
        self._used = rest

    def digest(self):
        """The 64-byte digest of the data so far; hashing may go on after."""
        h = list(self._h)
        used = self._used
        block = bytearray(self._buf)
        block[used] = 0x80
        for i in range(used + 1, _BLOCK):
            block[i] = 0
        if used >= _BLOCK - 16:
            _compress(h, self._w, block, 0)
            for i in range(_BLOCK):
                block[i] = 0
        # the length in bits, as a 128-bit big-endian number
        bits = self._length * 8
        for i in range(_BLOCK - 1, _BLOCK - 17, -1):
            block[i] = bits & 0xFF
            bits >>= 8
        _compress(h, self._w, block, 0)
        return struct.pack(">16I", *h)

    def hexdigest(self):
        return "".join("%02x" % b for b in self.digest())

    def copy(self):
        other = Sha512Pure()
        other._h = list(self._h)
        other._buf = bytearray(self._buf)
        other._used = self._used
        other._length = self._length
        return other


try:
    from hashlib import sha512 as _native  # type: ignore[attr-defined]  # CPython has it
except ImportError:
    _native = None


def sha512(data=None):
    """A SHA-512 hasher: hashlib's where the interpreter has one (CPython),
    else Sha512Pure (the MicroPython ports)."""
    if _native is not None:
        return _native() if data is None else _native(data)
    return Sha512Pure(data)
