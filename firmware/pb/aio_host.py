# What asyncio lacks on CPython, which runs the firmware in the simulator and
# the twin preview: never imported on a board (ota/release.py CPYTHON_ONLY).
import asyncio


async def wait_for_ms(aw, ms):
    """asyncio.wait_for in ms, cancel-safe: CPython 3.11's wait_for returns
    the result when a cancel comes as what it awaits ends, and the task runs
    on (a virtual device's link, cancelled, then waited for ever)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", lambda: 0)  # (MicroPython's stubs know no cancelling)
    cancels = cancelling()
    result = await asyncio.wait_for(aw, ms / 1000)
    if cancelling() > cancels:
        raise asyncio.CancelledError
    return result
