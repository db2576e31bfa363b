"""Blobs of stored blocks alone: a release stores what deflate cannot shrink
(ota/release.py compress), and a device copies such a stream instead of
inflating it (firmware/pb/ota/download.py inflated). Whatever the bytes, the
copy gives what zlib gives, or the stream goes to the inflater, which
refuses it as before; the unix port gives the same bytes as CPython."""

from __future__ import annotations

import hashlib
import io
import os
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.pb.ota import download
from ota.release import ZLIB_WBITS, compress

from ..support import micropython


def inflated(blob: bytes, pad: int = 0) -> bytes:
    """What the device makes of blob (behind pad bytes, as an image segment is behind its frame)."""
    buf = bytearray(512)
    fi = io.BytesIO(bytes(pad) + blob)
    fi.seek(pad)
    return b"".join(bytes(c) for c in download.inflated(fi, buf, memoryview(buf)))


def zlib_says(blob: bytes) -> bytes | None:
    """zlib's output for a whole valid stream, or None."""
    d = zlib.decompressobj(ZLIB_WBITS)
    try:
        out = d.decompress(blob) + d.flush()
    except zlib.error:
        return None
    return out if d.eof and not d.unused_data else None


def is_stored(blob: bytes) -> bool:
    return len(blob) > 2 and not blob[2] & 6


@settings(max_examples=300)
@given(st.binary(max_size=3000) | st.builds(os.urandom, st.integers(0, 140_000)), st.integers(0, 40))
def test_a_blob_gives_back_its_file_and_is_stored_only_where_that_is_smaller(data: bytes, pad: int) -> None:
    blob = compress(data)
    assert zlib_says(blob) == data and inflated(blob, pad) == data
    c = zlib.compressobj(9, zlib.DEFLATED, ZLIB_WBITS)
    assert len(blob) <= len(c.compress(data) + c.flush())


def test_random_tables_are_stored_and_code_is_deflated() -> None:
    assert is_stored(compress(random.Random(7).randbytes(8192)))
    assert not is_stored(compress(b"def f():\n    return 1\n" * 200))


@settings(max_examples=500)
@given(
    st.builds(os.urandom, st.integers(0, 5000)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(-12, 12),
)
def test_a_spoiled_stored_stream_never_gives_other_bytes_than_zlib_would(
    data: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    """Bytes changed, a stream cut short or lengthened: the copy stops, or
    hands the stream to the inflater, which refuses it; what comes out is
    what the blocks hold, the stream's own bytes as zlib reads them. (The
    Adler-32 is not checked: the device checks the output's SHA-256.)"""
    blob = bytearray(compress(data))
    for at, value in flips:
        blob[at % len(blob)] = value
    spoiled = bytes(blob[:cut] if cut < 0 else blob + os.urandom(cut))
    want = zlib_says(spoiled)
    try:
        got = inflated(spoiled)
    except ValueError:
        assert want is None
        return
    if want is not None:
        assert got == want
    elif is_stored(spoiled):
        # copied: zlib refuses only the trailer (or bytes after it, where the copy
        # would not have started); the bytes are the blocks' own
        assert got == zlib.decompressobj(-ZLIB_WBITS).decompress(spoiled[2:])
    # (a coded stream goes to the inflater, whose ways with trailing bytes are as before)


@pytest.mark.micropython
def test_the_unix_port_copies_and_inflates_as_cpython_does() -> None:
    rnd = random.Random(3)
    cases = [rnd.randbytes(n) for n in (0, 1, 700, 8192, 70_000)] + [b"pb " * 3000]
    blobs = [compress(d) for d in cases]
    code = """
import json, sys
from pb.ota.download import inflate
for line in open(sys.argv[1]):
    z, out = json.loads(line)
    open("b.z", "wb").write(bytes.fromhex(z))
    print(json.dumps(inflate("b.z", "b.out", 1 << 20)))
"""
    got = micropython.run_json_lines(code, [[b.hex(), i] for i, b in enumerate(blobs)], heap="4M")
    assert got == [[len(d), hashlib.sha256(d).hexdigest()] for d in cases]
    # (the random ones of 700 bytes and more copied; nothing, 1 byte and the text inflated)
    assert [is_stored(b) for b in blobs] == [False, False, True, True, True, False]
