# The few differences between MicroPython and CPython, in one place.
# Everything else in pb/ is written in the common subset of both.
import sys
import time

try:
    import asyncio
except ImportError:  # pragma: no cover - very old MicroPython
    import uasyncio as asyncio  # type: ignore[no-redef]

MICROPYTHON = sys.implementation.name == "micropython"

try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]
        return x


if hasattr(time, "ticks_ms"):
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    ticks_add = time.ticks_add
else:
    # CPython: the MicroPython stubs this is checked against lack these
    _T0 = time.monotonic()  # type: ignore[attr-defined]

    def ticks_ms():
        return int((time.monotonic() - _T0) * 1000)  # type: ignore[attr-defined]

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, delta):
        return a + delta


if hasattr(asyncio, "sleep_ms"):
    sleep_ms = asyncio.sleep_ms
else:

    def sleep_ms(ms):
        return asyncio.sleep(ms / 1000)


if hasattr(asyncio, "wait_for_ms"):
    wait_for_ms = asyncio.wait_for_ms
else:
    from .aio_host import wait_for_ms  # noqa: F401 - (CPython's wait_for, made cancel-safe)


try:
    TimeoutError = asyncio.TimeoutError  # noqa: A001
except AttributeError:  # pragma: no cover
    TimeoutError = OSError  # type: ignore[assignment,misc] # noqa: A001


def rand_below(n):
    """A pseudo-random int in [0, n); jitter only, never for secrets."""
    import random

    if n <= 1:
        return 0
    return random.getrandbits(30) % n


def collect():
    """gc.collect() where a small heap fragments (MicroPython); nothing on
    CPython, where a full collection walks every object of the process (a
    fleet of virtual devices in one process would pay for all of them)."""
    if MICROPYTHON:
        import gc

        gc.collect()


def mem_free():
    """Free heap in bytes, or -1 where the interpreter cannot tell."""
    import gc

    if hasattr(gc, "mem_free"):
        gc.collect()
        return gc.mem_free()
    return -1


def fsync(f):
    """Push a written file to the medium where the platform can."""
    f.flush()
    import os

    if hasattr(os, "fsync"):
        os.fsync(f.fileno())


def print_exception(exc, file=None):
    if hasattr(sys, "print_exception"):
        if file is None:
            sys.print_exception(exc)
        else:
            sys.print_exception(exc, file)
    else:
        import traceback  # type: ignore[import-not-found]  # CPython only

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=file)


def format_exception(exc):
    """One line naming an exception, for reports: 'ValueError: bad value'."""
    msg = str(exc)
    name = type(exc).__name__
    return name + ": " + msg if msg else name


def forget(names):
    """Let modules go (MicroPython): their RAM returns to the heap once
    nothing refers to them. A later import loads them again."""
    if not MICROPYTHON:
        return
    import gc

    for name in names:
        if sys.modules.pop(name, None) is not None:
            i = name.rfind(".")
            pkg = sys.modules.get(name[:i])  # the package holds it too
            if pkg is not None and hasattr(pkg, name[i + 1 :]):
                delattr(pkg, name[i + 1 :])
    gc.collect()
