# What the serial line (pb/net/serial_link.py) needs of CPython, where the
# simulator runs it; MicroPython's unix port does without, and never loads
# this (its names would cost a board's RAM).
import asyncio
import io
import os
import tty  # type: ignore[import-not-found]  # (CPython only)


class _Port(io.FileIO):
    def close(self):
        if not self.closed:
            asyncio.get_event_loop().remove_reader(self.fileno())
        super().close()


def open(port, event):  # noqa: A001 - (a name every MicroPython has interned)
    """The port opened raw, not as the process's controlling terminal, and
    event set each time the event loop sees bytes come; closing it stops
    that."""
    f = _Port(os.open(port, os.O_RDWR | os.O_NOCTTY), "r+b")  # type: ignore[attr-defined]
    try:
        tty.setraw(f.fileno())
        asyncio.get_event_loop().add_reader(f.fileno(), event.set)
    except BaseException as exc:
        io.FileIO.close(f)
        if isinstance(exc, tty.error):
            raise OSError(*exc.args) from None  # (termios.error is none: not a tty, say)
        raise
    return f
