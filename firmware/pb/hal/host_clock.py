# The host backend's real-time clock (pb/hal/host.py): an offset from the
# host's clock in a file, kept across resets as a board's RTC keeps its time.
# Loaded when the clock is read at start, set, or asked of a time server.
import json

from ..store import read_bytes, write_atomic


def offset(path):
    """The offset kept in path (seconds), 0 without one."""
    data = read_bytes(path)
    if data:
        try:
            return float(json.loads(data)["offset"])
        except (ValueError, KeyError, TypeError):
            pass
    return 0.0


def set_time(t, host_now, path):
    """Keep the offset that makes the clock read t; returns it."""
    off = t - host_now
    write_atomic(path, json.dumps({"offset": off}).encode("utf-8"))
    return off


async def sync(hal, server):
    """The clock asked of a time server (pb/net/sntp.py), which is let go after."""
    from ..compat import forget
    from ..net.sntp import sync

    await sync(hal, server)
    forget(("pb.net.sntp",))
