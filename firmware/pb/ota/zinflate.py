# pb/ota/files.py's inflate under CPython (the simulator, the twin preview,
# tests), with zlib: the same window, the same checks as the deflate module
# of a board. Never loaded on one.
import zlib  # type: ignore[import-not-found]  # CPython only


def inflated(fi, buf, mv, size, wbits):
    """The inflated bytes of the zlib stream in file fi, read through buf
    (mv its memoryview), at most size bytes at a time, with a window of
    2^wbits. Raises ValueError if it is invalid or truncated."""
    d = zlib.decompressobj(wbits)
    try:
        while True:
            k = fi.readinto(buf)
            if not k:
                break
            out = d.decompress(mv[:k], size)
            while out:
                yield out
                out = d.decompress(d.unconsumed_tail, size) if d.unconsumed_tail else b""
        tail = d.flush()
    except zlib.error as exc:
        raise ValueError("compressed data is invalid: %s" % exc) from None
    if tail:
        yield tail
    if not d.eof:
        raise ValueError("compressed data is truncated")
