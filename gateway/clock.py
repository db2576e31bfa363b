"""The gateway's time: the clock it reads, and its signed time.

The clock (`Clock`) is injected: the system's by default, the simulator's
(`simulator.clock.SimClock`, faster than real time) in tests and benchmarks,
so that update deadlines, the rollouts' soak times and windows and the
metrics' hours run in seconds with the simulated fleet's own clock
(docs/rollouts.md 9).

The signed time (docs/ota.md 2.3): a time statement, signed by
the gateway key, to each device when it says hello and every hour to each
device online, on ``pb/<device>/ota/time`` (QoS 1, never retained). A device
keeps the highest one it has verified as a floor for its clock, so a board
whose clock was never set still refuses a freshness statement that had
expired by the gateway's time. Only the gateway may write that topic (the
broker's ACL): no device can send another one a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from firmware.pb.peer import protocol as proto
from ota.keys import Keys, time_statement

from .errors import GatewayError

log = logging.getLogger("permabeta.gateway")


class Clock(Protocol):
    """Wall time in seconds since the epoch, running `speed` times faster
    than real time; sleep(s) lets s seconds of it pass."""

    speed: float

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The machine's clock."""

    speed = 1.0

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


TIME_INTERVAL_S = 3600.0  # a time statement to every device online this often
Publish = Callable[[str, bytes, int, bool], Awaitable[None]]


class TimeSender:
    """Signs and sends time statements. keys: the gateway's keys (without
    them it sends none); online(): the ids of the devices connected now;
    `publish` is set by the gateway to its MQTT publish."""

    def __init__(
        self,
        keys: Keys | None,
        online: Callable[[], Iterable[str]],
        interval_s: float = TIME_INTERVAL_S,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.keys = keys
        self.online = online
        self.interval_s = interval_s
        self.publish: Publish | None = None
        self.stats: dict[str, int] = {"sent": 0, "failed": 0}
        self._tasks: set[asyncio.Task[bool]] = set()

    def on_hello(self, dev: str, retain: bool) -> None:
        """A device said hello: it has just connected and subscribed. (A
        retained hello the broker replays says nothing of that.)"""
        if retain or self.keys is None:
            return
        task = asyncio.get_running_loop().create_task(self.send(dev), name=f"gateway-time-{dev}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(self, dev: str, now: float | None = None) -> bool:
        """Sign the time (now, or the gateway's clock) for dev and publish it;
        False if it could not be sent."""
        publish = self.publish
        if self.keys is None or publish is None:
            return False
        payload = time_statement(self.keys, dev, self.clock.now() if now is None else now)
        try:
            await publish(proto.topic(dev, "ota/time"), payload, 1, False)
        except GatewayError as exc:
            self.stats["failed"] += 1
            log.debug("time statement to %s not sent: %s", dev, exc)
            return False
        self.stats["sent"] += 1
        return True

    async def loop(self) -> None:
        """Every interval, the time to every device online."""
        while True:
            await self.clock.sleep(self.interval_s)
            if self.keys is None:
                continue
            for dev in list(self.online()):
                await self.send(dev)
