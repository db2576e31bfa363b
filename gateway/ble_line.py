"""The gateway's end of the Bluetooth LE carrier (docs/protocol.md 16): a
scan with bleak for devices advertising the service, and a connection to
each one found, several at once, each in a task of its own. A connection is
a line (gateway/lines.py): the frames sent down it are cut into values by
firmware/pb/net/ble_frag.py and written to control (the kinds that must not
be lost to a flood) or bulk (the rest), and its notifications are joined
into the device's messages. A connection lost is made again with backoff;
one that sends garbage is dropped and its address left alone for a while,
so a broken or hostile peripheral costs the gateway nothing but a log line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from firmware.pb.net.ble_frag import Joiner, Sender
from firmware.pb.net.ble_radio import BULK_UUID, CONTROL_UUID, NOTIFY_UUID, SERVICE_UUID  # (their owner)

from .lines import LineSession
from .service import Backoff, raise_if_cancelled

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("permabeta.gateway.ble")

MAX_OUT = 256 * 1024  # bytes queued for one connection: then frames are dropped, counted
CONTROL_KINDS = frozenset({"cmd", "ota/offer", "auth"})  # written with response (16)
CONNECT_S = 20.0  # a connection not made within this is given up, and tried again
STALE_S = 60.0  # a device not seen advertising for this long is no longer dialled
PROOF_S = 20.0  # a connection whose device has not proven itself within this is hung up (it asks
# again after 1, 2, 4 and 8 s without an answer: 15 s for its fifth try)
SETTLED_S = 10.0  # a device that proved itself and stayed this long starts its backoff over


class GarbageRule:
    """Whether a connection says too much that is no message: more than
    `frames` frames dropped, values lost or empty values, or more than
    `garbage` bytes passed over, within a window of `window_s`; or more than
    `refusals` proofs refused on it. A device sends few of these (a value
    its stack could not notify, now and then): one that sends more is broken
    or hostile. No clock: now is passed in."""

    def __init__(
        self, frames: int = 50, garbage: int = 64 * 1024, refusals: int = 4, window_s: float = 60.0
    ) -> None:
        self.frames, self.garbage, self.refusals, self.window_s = frames, garbage, refusals, window_s
        self._start: float | None = None
        self._base = self._last = (0, 0)

    def judge(self, frames: int, garbage: int, refusals: int, now: float) -> str | None:
        """The reason to drop the connection, or None; the counts are its
        totals since it was made."""
        if self._start is None:
            self._start = now
        elif now - self._start > self.window_s:
            self._start, self._base = now, self._last  # (what came in this call still counts)
        self._last = (frames, garbage)
        if frames - self._base[0] > self.frames:
            return f"{frames - self._base[0]} frames dropped within {self.window_s:g} s"
        if garbage - self._base[1] > self.garbage:
            return f"{garbage - self._base[1]} bytes of garbage within {self.window_s:g} s"
        if refusals > self.refusals:
            return f"{refusals} proofs refused"
        return None


class _Way:
    """One characteristic the gateway writes: its values, queued in order,
    and their sequence (ble_frag.Sender)."""

    def __init__(self, name: str, uuid: str, response: bool) -> None:
        self.name, self.uuid, self.response = name, uuid, response
        self.sender = Sender()
        self.values: deque[bytes] = deque()
        self.ready = asyncio.Event()


class BleLink:
    """One connection to one device: a line (gateway/lines.py) named
    ble:ADDRESS. Writes are queued and go out one value at a time per
    characteristic, so the gateway never waits on the radio."""

    def __init__(self, gw: Gateway, client: BleakClient, address: str, rule: GarbageRule) -> None:
        self.gw, self.client, self.rule = gw, client, rule
        self.name = f"ble:{address}"
        self.session = LineSession(gw, self)
        self.joiner = Joiner()
        self.control, self.bulk = _Way("control", CONTROL_UUID, True), _Way("bulk", BULK_UUID, False)
        self.queued = 0
        self.sized: BleakGATTCharacteristic | None = None  # the characteristic that says ATT_MTU - 3
        self.stats = {"frames_in": 0, "frames_out": 0, "dropped_out": 0}
        self.garbage: str | None = None  # why it was dropped for garbage
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def lose(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)

    # ---- Line -------------------------------------------------------------

    def send_frame(self, kind: str, frame: bytes) -> bool:
        # the MTU BlueZ exchanged on connecting (its MTU property, less 3; 20 until it is known)
        size = self.sized.max_write_without_response_size if self.sized is not None else 20
        cost = len(frame) + -(-len(frame) // (min(max(size, 20), 512) - 1))  # (a sequence byte a value)
        if self.lost.done() or self.queued + cost > MAX_OUT:
            self.stats["dropped_out"] += 1
            return False
        way = self.control if kind in CONTROL_KINDS else self.bulk
        way.sender.size = size
        for value in way.sender.values(frame):
            way.values.append(bytes(value))
            self.queued += len(value)
        way.ready.set()
        self.stats["frames_out"] += 1
        return True

    def hang_up(self, reason: str) -> None:
        self.lose(f"hung up: {reason}")

    # ---- the radio --------------------------------------------------------

    def notified(self, _char: BleakGATTCharacteristic, value: bytearray) -> None:
        """A notification: the messages it completes go to the session,
        then the garbage rule is asked about the connection."""
        if self.lost.done():
            return
        for kind, payload in self.joiner.feed(value):
            self.stats["frames_in"] += 1
            self.session.on_frame(kind, payload)
        j = self.joiner
        why = self.rule.judge(
            j.gaps + j.bad + j.decoder.dropped,
            j.decoder.skipped,
            self.session.proof.refusals,
            asyncio.get_running_loop().time(),
        )
        if why is not None and self.garbage is None:
            self.garbage = why
            log.warning("%s: dropped: %s", self.name, why)
            self.lose(f"dropped: {why}")

    async def write(self, way: _Way) -> None:
        """Write one characteristic's values as they are queued, each
        awaited before the next (a write with response: acknowledged)."""
        while True:
            while not way.values:
                way.ready.clear()
                await way.ready.wait()
            value = way.values.popleft()
            self.queued -= len(value)
            try:
                await self.client.write_gatt_char(way.uuid, value, response=way.response)
            except (BleakError, OSError, EOFError) as exc:
                self.lose(f"write: {exc}")
                return


class BleBridge:
    """The devices on one Bluetooth adapter, as `permabeta gateway run
    --ble [ADAPTER]` serves them: scanned for, connected, kept connected."""

    def __init__(
        self,
        gw: Gateway,
        adapter: str = "hci0",
        *,
        ban_s: float = 60.0,
        proof_s: float = PROOF_S,
        rule: type[GarbageRule] = GarbageRule,
    ) -> None:
        self.gw = gw
        self.adapter = adapter
        self.name = f"ble:{adapter}"
        self.ban_s = ban_s  # a device dropped for garbage is not dialled again for this long
        self.rule = rule
        self.proof_s = proof_s  # a connection whose device has not proven itself by then is hung up
        self.settled_s = SETTLED_S
        self.links: dict[str, BleLink] = {}  # address -> its connection, while up
        self.banned: dict[str, float] = {}  # address -> (loop) time it may be dialled again
        self._backoffs: dict[str, Backoff] = {}  # address -> its reconnections' backoff
        self._devices: dict[str, tuple[BLEDevice, float]] = {}  # address -> (last seen as, when)
        self._keepers: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._swept = float("-inf")  # (loop) time the addresses were last swept

    async def run(self) -> None:
        """Scan and serve until cancelled; a scan that cannot start (no
        adapter, no bluetoothd) is tried again with backoff."""
        backoff = Backoff(1.0, 30.0)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                while True:
                    try:
                        async with BleakScanner(self._seen, [SERVICE_UUID], bluez={"adapter": self.adapter}):
                            log.info("%s: scanning for devices", self.name)
                            backoff.reset()
                            await asyncio.Future()  # (until cancelled)
                    except (BleakError, OSError, EOFError) as exc:
                        raise_if_cancelled()  # (the scanner's exit failed on a cancel: it stops all the same)
                        log.warning("%s: cannot scan: %s; trying again", self.name, exc)
                    await asyncio.sleep(backoff.next())
        finally:
            self._tg = None

    def _seen(self, device: BLEDevice, adv: AdvertisementData) -> None:
        if SERVICE_UUID not in adv.service_uuids:
            return
        loop = asyncio.get_running_loop()
        address = device.address
        self._devices[address] = (device, loop.time())
        if loop.time() - self._swept > STALE_S:
            self._sweep(loop.time())
        if address in self._keepers or self._tg is None or self.banned.get(address, 0) > loop.time():
            return
        self.banned.pop(address, None)
        self._keepers[address] = self._tg.create_task(self._keep(address), name=f"gateway-ble:{address}")

    def _sweep(self, now: float) -> None:
        """Forget the addresses not seen for STALE_S that nothing dials any
        more, and the bans past: a peripheral that changes its address (a
        random one, at will) does not grow what the gateway holds."""
        self._swept = now
        for address, (_, seen) in list(self._devices.items()):
            if now - seen > STALE_S and address not in self._keepers:
                del self._devices[address]
                self._backoffs.pop(address, None)
        for address, until in list(self.banned.items()):
            if until <= now:
                del self.banned[address]

    async def _keep(self, address: str) -> None:
        """Keep one device connected while it is around: connect again with
        backoff after a loss, give it up once it has not been seen
        advertising for STALE_S or was dropped for garbage. The backoff
        starts over only after a connection whose device proved itself and
        stayed: one that never proves itself (anything advertising the
        service) is dialled further and further apart, up to 30 s, and
        holds a connection of the adapter's few for at most PROOF_S of each
        wait."""
        loop = asyncio.get_running_loop()
        backoff = self._backoffs.setdefault(address, Backoff(0.5, 30.0))
        up = loop.time()  # when it was last known to be there: seen, or connected
        said = None  # the last reason logged as a warning (a reason again is only a debug line)
        try:
            while True:
                device, _ = self._devices[address]
                began = loop.time()
                proven = False
                try:
                    reason, garbage, proven = await self._serve(device)
                    up = loop.time()
                except (BleakError, OSError, EOFError, TimeoutError) as exc:
                    raise_if_cancelled()
                    reason, garbage = f"cannot connect: {exc or type(exc).__name__}", False
                except Exception as exc:  # (one connection's fault stops no other, nor the gateway)
                    raise_if_cancelled()
                    log.exception("ble:%s: the connection failed", address)
                    reason, garbage = f"failed: {exc!r}", False
                if garbage:
                    self.banned[address] = loop.time() + self.ban_s
                    return
                if proven and up - began > self.settled_s:
                    backoff.reset()  # it was served a while: this is a new trouble
                delay = backoff.next()
                say = log.debug if reason == said else log.warning
                say("ble:%s: %s; connecting again in %.2f s", address, reason, delay)
                said = reason
                await asyncio.sleep(delay)
                if loop.time() - max(self._devices[address][1], up) > STALE_S:
                    log.info("ble:%s: not seen for %g s; waiting to see it again", address, STALE_S)
                    return
        finally:
            del self._keepers[address]

    def _no_proof(self, link: BleLink) -> None:
        if link.session.device is None:
            link.lose(f"no proof of identity within {self.proof_s:g} s")

    async def _serve(self, device: BLEDevice) -> tuple[str, bool, bool]:
        """One connection, from its making to its loss: why it ended,
        whether it was dropped for garbage, and whether its device had
        proven itself. Raises BleakError when it could not be made."""
        links: list[BleLink] = []

        def gone(_client: BleakClient) -> None:
            for link in links:
                link.lose("the device went away")

        client = BleakClient(device, gone, timeout=CONNECT_S, bluez={"adapter": self.adapter})
        await client.connect()
        link = BleLink(self.gw, client, device.address, self.rule())
        links.append(link)
        self.links[device.address] = link
        writers = [
            asyncio.create_task(link.write(way), name=f"gateway-{link.name}-{way.name}")
            for way in (link.control, link.bulk)
        ]
        try:
            link.sized = client.services.get_characteristic(BULK_UUID)
            if link.sized is None or client.services.get_characteristic(CONTROL_UUID) is None:
                return "not a permabeta device: its service lacks control or bulk", False, False
            size = link.sized.max_write_without_response_size
            log.info("%s: connected: values of %d bytes", link.name, size)
            # the device sends its first proof message once it sees this; one
            # that never proves itself (anything advertising the service) does
            # not keep the connection
            await client.start_notify(NOTIFY_UUID, link.notified)
            late = asyncio.get_running_loop().call_later(self.proof_s, self._no_proof, link)
            try:
                reason = await link.lost
            finally:
                late.cancel()
            return reason, link.garbage is not None, link.session.device is not None
        finally:
            self.links.pop(device.address, None)
            for task in writers:
                task.cancel()
            link.lose("closed")
            link.session.closed(link.lost.result())
            with contextlib.suppress(BleakError, OSError, EOFError, TimeoutError):
                await asyncio.wait_for(client.disconnect(), 5)
