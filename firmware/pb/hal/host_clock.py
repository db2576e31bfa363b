# The host backend's real-time clock (pb/hal/host.py): an offset from the
# host's clock in a file, kept across resets as a board's RTC keeps its time.
# Loaded when the clock is read at start, set, or asked of a time server.
import json

from ..store import read_bytes, write_atomic

CLOCK_FILE = "clock.json"  # {"offset": s}: the device's clock minus the host's, in hal/


def offset(hal):
    """The offset kept in hal/clock.json (seconds), 0 without one."""
    data = read_bytes(hal.dir + "/" + CLOCK_FILE)
    if data:
        try:
            return float(json.loads(data)["offset"])
        except (ValueError, KeyError, TypeError):
            pass
    return 0.0


def set_time(hal, t):
    """Keep the offset (hal.offset) that makes the clock read t."""
    hal.offset = 0
    hal.offset = t - hal.time()
    write_atomic(hal.dir + "/" + CLOCK_FILE, json.dumps({"offset": hal.offset}).encode("utf-8"))


_asked = []  # type: list[bool]  # this boot asked a time server already


async def network_up(hal, server):
    """The time server config.json names asked, once a boot (pb/net/sntp.py,
    let go after)."""
    if not _asked:
        _asked.append(True)
        from ..compat import forget
        from ..net.sntp import sync

        await sync(hal, server)
        forget(("pb.net.sntp",))
