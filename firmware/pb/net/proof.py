# The proof of identity on a serial or Bluetooth LE line (docs/protocol.md 17),
# sans-I/O. A broker checks a device's password; a line has no broker, so
# each end proves to the other that it holds the device's link key, derived
# at provisioning from the device's broker password (the gateway keeps the
# key, never the password). Four messages of kind "auth":
#
#   device:  {"v": 1, "dev": ID, "n": DN}             (its nonce)
#   gateway: {"v": 1, "n": GN, "mac": HMAC(K, "pb1 gateway DN GN ID")}
#   device:  {"v": 1, "mac": HMAC(K, "pb1 device GN DN ID")}
#   gateway: {"v": 1, "ok": true}   (or {"v": 1, "error": CODE, "message": ...})
#
# Each MAC covers the other end's fresh nonce, so neither answer can be
# replayed; the gateway proves itself first, so a stranger on the line
# learns nothing from the device and cannot command it. HMAC-SHA256 is
# written out here: MicroPython has sha256 but no hmac module.
import json
from binascii import hexlify
from hashlib import sha256

from ..compat import const

_BLOCK = const(64)  # SHA-256's block
_NONCE = const(16)  # random bytes in a nonce (32 hex digits)


def link_key(dev, password):
    """The device's link key (32 bytes) from its id and broker password."""
    return sha256(b"permabeta link key\x00" + dev.encode() + b"\x00" + password.encode()).digest()


def mac(key, msg):
    """HMAC-SHA256 (RFC 2104) of msg (str or bytes) under key (bytes), in
    64 hex digits. Each end's is over the text "pb1 gateway DN GN ID" or
    "pb1 device GN DN ID": the other end's nonce first, then its own."""
    if isinstance(msg, str):
        msg = msg.encode()
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    h = sha256(bytes(b ^ 0x36 for b in key))
    h.update(msg)
    d = sha256(bytes(b ^ 0x5C for b in key))
    d.update(h.digest())
    return hexlify(d.digest()).decode()


class Prover:
    """The device's end: start() gives the first message; each answer of
    the gateway goes to on_auth(), which returns (reply or None, outcome):
    outcome None while under way, True once the gateway accepted the
    device, or a string saying why the line must start again."""

    def __init__(self, dev, key):
        self.dev = dev
        self.key = key
        self.n = None  # the device's nonce of the proof under way ("": answered)

    def start(self):
        import os

        self.n = hexlify(os.urandom(_NONCE)).decode()
        return json.dumps({"v": 1, "dev": self.dev, "n": self.n})

    def on_auth(self, payload):
        try:
            msg = json.loads(payload)
            if not isinstance(msg, dict) or msg.get("v") != 1:
                return None, "the gateway's proof message is not one of version 1"
        except (ValueError, RuntimeError):  # (CPython's RecursionError: nested too deep)
            return None, "the gateway's proof message is not JSON"
        n = self.n
        if "error" in msg:
            self.n = None
            return None, "the gateway refused the device: %s: %s" % (msg["error"], msg.get("message", ""))
        if msg.get("ok") is True:
            return None, True if n == "" else "the gateway accepted a proof not given"
        gn = msg.get("n")
        if not n or not isinstance(gn, str) or not 16 <= len(gn) <= 64:
            return None, "an unasked or malformed gateway proof"
        # (compared in a time that does not tell where they first differ)
        want = mac(self.key, "pb1 gateway %s %s %s" % (n, gn, self.dev))
        got = msg.get("mac")
        d = len(want) ^ len(got) if isinstance(got, str) else 1
        if not d:
            for i in range(len(want)):
                d |= ord(want[i]) ^ ord(got[i])
        if d:
            self.n = None
            return None, "the gateway did not prove it holds the device's key"
        self.n = ""  # answered: only "ok" (or an error) may come now
        return json.dumps({"v": 1, "mac": mac(self.key, "pb1 device %s %s %s" % (gn, n, self.dev))}), None
