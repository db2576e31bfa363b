"""Simulated wall-clock time, optionally faster than real time."""

from __future__ import annotations

import asyncio
import time


class SimClock:
    """Wall time that runs `speed` times faster than real time from `start`
    (default: now). Physics and the devices' clocks read the same one."""

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        self.speed = speed
        self._t0 = time.monotonic()
        self._start = time.time() if start is None else start

    def now(self) -> float:
        return self._start + (time.monotonic() - self._t0) * self.speed

    def set_speed(self, speed: float) -> None:
        """Run at `speed` from now on; time so far stays as it was."""
        now = self.now()
        self._start, self._t0, self.speed = now, time.monotonic(), speed

    async def sleep(self, seconds: float) -> None:
        """Let `seconds` of this clock pass (seconds / speed real ones)."""
        await asyncio.sleep(seconds / self.speed)
