"""Made-up ESP32 app images for tests: no ESP32 runs here, and the unix
port cannot run one anyway; what is tested is what a device does with it."""

from __future__ import annotations

import random


def app_image(n: int, seed: int) -> bytes:
    """n bytes that start as an ESP32 app image does (its magic, 0xE9) and
    compress about as well as one (words of a small vocabulary)."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randrange(2, 9)) for _ in range(300)]
    out = bytearray(b"\xe9\x06\x02\x20")
    while len(out) < n:
        out += rnd.choice(words)
    return bytes(out[:n])
