"""The streams an update brings (docs/protocol.md 12): they start on the
device (`local`), nobody having chosen to share them; where the device's
policy is `auto` (its owner takes updates as they come) and the maker marks
a new stream `operational` (the fleet's health is judged by it), the
gateway shares it once the device runs the update."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .errors import GatewayError
from .settings import SettingsTable
from .store import DeviceRecord
from .streams import withheld

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("permabeta.gateway.streams")
_MAX_QUEUED = 1024
RETENTION_EVERY_S = 600.0  # how often what owners no longer have kept is deleted


async def retention_loop(gw: Gateway) -> None:
    """Delete what each device shared longer ago than its owner has the gateway keep it: the
    device's period, or a stream's own (gateway/retention.py)."""
    while True:
        try:
            n = gw.store.expire_shared(gw.clock.now())
            if n:
                log.info("%d telemetry rows deleted, or values past their retention taken out of them", n)
        except Exception:
            log.exception("the retention job failed; it runs again in %g s", RETENTION_EVERY_S)
        await asyncio.sleep(RETENTION_EVERY_S)


def _versions(features: Any) -> dict[str, Any]:
    return (
        {n: f.get("version") for n, f in features.items() if isinstance(f, dict)}
        if isinstance(features, dict)
        else {}
    )


class NewStreams:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.queue: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue(_MAX_QUEUED)
        self.shared = 0

    def on_hello(self, before: DeviceRecord | None, hello: dict[str, Any]) -> None:
        """After a hello is stored: the operational streams an update just
        brought, shared where the owner's policy is auto."""
        if before is None or _versions(before.features) == _versions(hello["features"]):
            return
        local = {p for p, c in withheld(hello).items() if c == "local"}
        if not local or SettingsTable(self.gw.store).get(before.id).policy != "auto":
            return
        from .api_streams import device_streams

        now = self.gw.store.device(before.id)
        if now is None:
            return
        old = {s.path for s in device_streams(self.gw, before)}
        share = {
            s.path: "share"
            for s in device_streams(self.gw, now)
            if s.operational and s.default == "share" and s.path in local and s.path not in old
        }
        if share:
            try:
                self.queue.put_nowait((before.id, share))
            except asyncio.QueueFull:
                log.warning("%s: new operational streams not shared (too many waiting)", before.id)

    async def loop(self) -> None:
        while True:
            dev, share = await self.queue.get()
            try:
                # (its hello came: it is connected, whatever the liveness watch says yet)
                reply = await self.gw.send_command(dev, "streams.set", {"streams": share}, force=True)
            except GatewayError as exc:
                log.warning("%s: new operational streams not shared: %s", dev, exc)
                continue
            if reply.get("ok"):
                self.shared += 1
                log.info(
                    "%s: shares what its update brought for the fleet's health: %s", dev, ", ".join(share)
                )
            else:
                log.warning("%s refused to share %s: %s", dev, ", ".join(share), reply.get("error"))
