"""The gateway's bridge to Home Assistant (docs/protocol.md 14): for each
device its owner linked, the discovery configs of its entities, its values
as they come, its availability and its update, all retained (Home Assistant
subscribes a moment after it registers an entity); and Home Assistant's
commands, each checked (gateway/homeassistant.py), for a linked device of
its owner, before it becomes a device's command or the owner's decision.

The links are kept in the ``ha_links`` table (schema version 13). A link
holds while the owner who made it keeps the device: giving the device up
(gateway/accounts.py), or having its data forgotten (gateway/footprint.py),
unlinks it, and its retained topics are cleared.

Everything published goes through one queue, in order, so that a device's
clearing is never overtaken by a value of it published before. A topic
waits in it once: what comes for it meanwhile replaces what waits (a
device that floods its hellos or telemetry holds one place a topic, not
the queue every owner's values go through). The queue is bounded, and a
value dropped is published again at the next refresh.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import homeassistant as ha
from .errors import CommandTimeoutError, DecisionError, DeviceOfflineError, GatewayError
from .store import DeviceRecord, Store
from .streams import withheld

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("permabeta.gateway.homeassistant")

REFRESH_S = 10.0  # how often the links, entities and updates are looked at again
TIMEOUT_S = 10.0  # a device's answer to a command from Home Assistant
CLEAR_TIMEOUT_S = 10.0  # a device's retained topics cleared, at most
STATUS_GAP_S = 1.0  # an update's status shows its device anew at most this often
CLEAR_GAP_S = 1.0  # between clearing devices' configs and their values: their entities go first
_QUEUE = 2000  # publishes waiting
# an owner's link changes (a link or an unlink: each a clear or a show of the device, about 13
# publishes): LINK_BURST at once, then one each LINK_EVERY_S (so that one owner's many devices,
# linked and unlinked in a loop, do not fill the queue every owner's values go through)
LINK_BURST = 30
LINK_EVERY_S = 2.0
_COMMANDS = 64  # commands from Home Assistant waiting; those beyond are refused
_WORKERS = 4  # commands carried out at once
_SCHEMA = 13  # the store's version that has the table


@dataclass(frozen=True)
class Link:
    """A device its owner linked to Home Assistant."""

    device: str
    account: int  # the owner who linked it
    since: float

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "since": self.since}


class LinkTable:
    """The ``ha_links`` table."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _ready(self) -> bool:
        return self.store.schema >= _SCHEMA  # (an old database read as it is has none)

    def get(self, dev: str) -> Link | None:
        if not self._ready():
            return None
        row = self.store.db.execute("SELECT * FROM ha_links WHERE device = ?", (dev,)).fetchone()
        return None if row is None else Link(row["device"], int(row["account"]), float(row["since"]))

    def valid(self, dev: str) -> Link | None:
        """dev's link, if the owner who made it owns dev now."""
        if not self._ready():
            return None
        row = self.store.db.execute(
            "SELECT l.* FROM ha_links l JOIN device_owners o ON o.device = l.device AND o.account = l.account"
            " WHERE l.device = ?",
            (dev,),
        ).fetchone()
        return None if row is None else Link(row["device"], int(row["account"]), float(row["since"]))

    def all_valid(self) -> dict[str, Link]:
        """Every link whose owner owns its device now, by device."""
        if not self._ready():
            return {}
        rows = self.store.db.execute(
            "SELECT l.* FROM ha_links l JOIN device_owners o ON o.device = l.device AND o.account = l.account"
        )
        return {r["device"]: Link(r["device"], int(r["account"]), float(r["since"])) for r in rows}

    def link(self, dev: str, account: int, now: float) -> Link:
        """dev linked by account (its owner: the caller checks); a link made
        again keeps its first time."""
        self.store.db.execute(
            "INSERT INTO ha_links (device, account, since) VALUES (?, ?, ?) ON CONFLICT(device)"
            " DO UPDATE SET account = excluded.account, since = CASE"
            " WHEN ha_links.account = excluded.account THEN ha_links.since ELSE excluded.since END",
            (dev, account, now),
        )
        link = self.get(dev)
        assert link is not None
        return link

    def unlink(self, dev: str) -> bool:
        return self.store.db.execute("DELETE FROM ha_links WHERE device = ?", (dev,)).rowcount > 0


class LinkChanges:
    """The link changes owners may make: LINK_BURST at once, then one each
    LINK_EVERY_S (a bucket per account, of this gateway)."""

    def __init__(self, burst: int = LINK_BURST, every_s: float = LINK_EVERY_S) -> None:
        self.burst, self.every_s = float(burst), every_s
        self._left: dict[int, tuple[float, float]] = {}  # account -> changes it may make, as of when

    def wait(self, account: int, now: float) -> float:
        """0 if account may change a link now (the change is counted), else
        the seconds until it may (now: a monotonic clock)."""
        left, then = self._left.get(account, (self.burst, now))
        left = min(self.burst, left + max(0.0, now - then) / self.every_s)
        if left < 1.0 - 1e-9:  # (one who waited the time told is let through, rounding aside)
            self._left[account] = (left, now)
            return (1.0 - left) * self.every_s
        self._left[account] = (max(0.0, left - 1.0), now)  # (an entry for each owner who ever changed one)
        return 0.0


class _Flushed:
    """A mark in the publish queue: set once everything before it is published."""

    def __init__(self) -> None:
        self.done = asyncio.Event()


class _Cleared:
    """A mark in the publish queue after devices' config clears: once they
    are published, their value clears are queued CLEAR_GAP_S later (beside
    the queue: what others publish meanwhile does not wait), then flushed."""

    def __init__(self, devs: list[str]) -> None:
        self.devs = devs


class HomeAssistantBridge:
    """The bridge of one gateway: runs in its TaskGroup (loop), hears what
    the gateway accepts (a listener) and the commands on the bridge's
    topics (on_command)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.links = LinkTable(gw.store)
        self.stats = {"published": 0, "dropped": 0, "commands": 0, "refused": 0, "failed": 0}
        self._out: asyncio.Queue[str | _Flushed | _Cleared] = asyncio.Queue(_QUEUE)  # topics, marks
        self._queued: dict[str, bytes] = {}  # topic in the queue -> what is published there when it comes
        self._commands: asyncio.Queue[ha.Command] = asyncio.Queue(_COMMANDS)
        self._linked: dict[str, Link] = {}  # the valid links as last read
        self._withheld: dict[str, dict[str, str]] = {}  # device -> what its hello keeps back
        self._shown: dict[str, dict[str, bytes]] = {}  # device -> topic -> what is retained there now
        self._connects = -1  # the gateway's connection the topics were published on
        self._clearing: dict[str, _Flushed] = {}  # device -> the mark set once its values are cleared
        self._due: set[str] = set()  # devices whose update status came: shown anew in a while
        self._unclear: set[str] = set()  # devices a clear of which was dropped: cleared again at a refresh
        self.changes = LinkChanges()
        gw.listeners.append(self._heard)

    # ---- running -----------------------------------------------------------

    async def loop(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._publish_loop(), name="homeassistant-publish")
            for i in range(_WORKERS):
                tg.create_task(self._command_loop(), name=f"homeassistant-commands-{i}")
            tg.create_task(self._refresh_loop(), name="homeassistant-refresh")

    async def _refresh_loop(self) -> None:
        while True:
            await self.gw.connected.wait()
            try:
                self.refresh()
            except Exception:
                log.exception("could not look at the Home Assistant links again")
            await asyncio.sleep(REFRESH_S)

    def refresh(self) -> None:
        """Square what is published with the links, the devices and their
        updates: a new link's entities appear, a link gone (its owner gave
        the device up) has its topics cleared; after a new connection to
        the broker (which may have lost what it retained) all of it again."""
        if self.gw.connects != self._connects:
            self._connects = self.gw.connects
            self._shown.clear()
        valid = self.links.all_valid()
        gone = [d for d in self._linked if d not in valid]
        self._unclear.difference_update(valid)  # (linked again: shown again)
        gone += [d for d in self._unclear if d not in self._clearing and d not in gone]
        if gone:
            self._clear_topics(gone)
        self._linked = valid
        for dev in valid:
            self._show(dev)

    async def _publish_loop(self) -> None:
        while True:
            item = await self._out.get()
            if isinstance(item, _Flushed):
                item.done.set()
                continue
            if isinstance(item, _Cleared):
                asyncio.get_running_loop().call_later(CLEAR_GAP_S, self._clear_values, item.devs)
                continue
            topic, payload = item, self._queued.pop(item)
            try:
                await self.gw.publish(topic, payload, 1, True)
                self.stats["published"] += 1
            except GatewayError as exc:
                self._dropped(topic, payload)
                log.debug("not published on %s: %s", topic, exc)

    def _put(self, dev: str, topic: str, payload: bytes) -> None:
        """Publish payload, retained, on topic of dev, unless it is there
        already, or dev's topics are being cleared (it is shown again after)."""
        if dev in self._clearing:
            return
        shown = self._shown.setdefault(dev, {})
        if shown.get(topic) == payload:
            return
        if not self._enqueue(topic, payload):
            self.stats["dropped"] += 1  # (published at the next refresh)
            return
        shown[topic] = payload

    def _enqueue(self, topic: str, payload: bytes) -> bool:
        """payload to be published on topic, in the place in the queue topic
        has (it waits once), else at its end; False if the queue is full."""
        if topic not in self._queued:
            try:
                self._out.put_nowait(topic)
            except asyncio.QueueFull:
                return False
        self._queued[topic] = payload
        return True

    def _dropped(self, topic: str, payload: bytes) -> None:
        """A publish on topic that did not go: what is shown there is not
        known; a clear's device is cleared again at the next refresh."""
        self.stats["dropped"] += 1
        parts = topic.split("/")
        dev = parts[1] if parts[0] == ha.BRIDGE else parts[2].removeprefix("pb_")
        self._shown.get(dev, {}).pop(topic, None)
        if not payload:
            self._unclear.add(dev)

    # ---- what Home Assistant is shown ---------------------------------------

    def _heard(self, kind: str, dev: str, msg: dict[str, Any]) -> None:
        """A listener of the gateway: what a linked device says, bridged."""
        if dev not in self._linked:
            return
        if kind == "telemetry":
            for name, value in ha.state_values(msg, self._withheld.get(dev, {})).items():
                self._put(dev, ha.topic(dev, name), value.encode())
        elif kind in ("online", "offline"):
            self._put(dev, ha.topic(dev, "availability"), kind.encode())
        elif kind == "hello":
            self._show(dev)
        elif kind == "ota/status" and dev not in self._due:
            # (an update's progress comes often while it downloads, and a device may send it
            # at will: its entity is shown anew once a STATUS_GAP_S at most)
            self._due.add(dev)
            asyncio.get_running_loop().call_later(STATUS_GAP_S, self._show_due, dev)

    def _show_due(self, dev: str) -> None:
        self._due.discard(dev)
        self._show_again(dev)

    def _show_again(self, dev: str) -> None:
        """_show(dev) from a callback of the loop's, if dev is linked: what
        fails is logged (no one else would hear of it), and shown at the
        next refresh."""
        if dev in self._linked:
            try:
                self._show(dev)
            except Exception:
                log.exception("could not show %s in Home Assistant anew: at the next refresh", dev)

    def _show(self, dev: str) -> None:
        """dev's entities as its record says, each of a shared stream; the
        configs and values of those it no longer has are cleared."""
        d = self.gw.store.device(dev)
        if d is None or not d.model:
            return
        held = withheld(d.hello)
        self._withheld[dev] = held
        shown = ha.entities(d.model, d.hello, held)
        limits = ha.setpoint_range(self._manifest(d, "thermostat"))
        for e in shown:
            config = ha.discovery(e, dev, d.model, d.runtime, held, limits)
            self._put(dev, e.config_topic(dev), ha.config_payload(config))
        keys = {e.config_topic(dev) for e in shown}
        for t in ha.all_config_topics(dev):
            if t not in keys:
                self._put(dev, t, b"")
        for name, (stream, _) in ha.VALUES.items():
            if stream in held:
                self._put(dev, ha.topic(dev, name), b"")
        self._put(dev, ha.topic(dev, "availability"), (ha.ONLINE if d.online else ha.OFFLINE).encode())
        if ha.UPDATE in shown:
            self._put(dev, ha.topic(dev, "update"), self._update_state(d))

    def _manifest(self, d: DeviceRecord, feature: str) -> dict[str, Any] | None:
        from .api_streams import manifests_of

        try:
            return manifests_of(self.gw, d).get(feature)
        except GatewayError:
            return None

    def _waiting(self, d: DeviceRecord) -> Any:
        """The release that waits for the owner's say on d (the newest), or None."""
        from .offers import waiting

        waits = [r for r, *_ in waiting(self.gw, d)]
        return max(waits, key=lambda r: r.counter, default=None)

    def _update_state(self, d: DeviceRecord) -> bytes:
        from .offers import running_release

        r = running_release(self.gw, d)
        installed = r.version if r is not None else "factory"
        latest = self._waiting(d)
        return ha.update_state(installed, latest.version if latest is not None else None)

    # ---- linking -------------------------------------------------------------

    def link(self, dev: str, account: int) -> Link:
        """dev linked by its owner account: its entities are published."""
        link = self.links.link(dev, account, self.gw.clock.now())
        if self.links.valid(dev) is not None:
            self._linked[dev] = link
            self._show(dev)
        return link

    async def unlink(self, dev: str) -> bool:
        """dev unlinked: its configs and values are cleared. Whether every
        retained topic of it is cleared (False: the broker was away; each
        refresh clears them again until they are)."""
        self.links.unlink(dev)
        return await self.clear(dev)

    async def clear(self, dev: str) -> bool:
        """Clear dev's retained topics (an unlink, its owner gave it up, its
        data was forgotten), once everything published before is; whether
        all of them were, within CLEAR_TIMEOUT_S (if not, the next refresh
        clears them again)."""
        (mark,) = self._clear_topics([dev])
        try:
            async with asyncio.timeout(CLEAR_TIMEOUT_S):
                await mark.done.wait()
        except TimeoutError:
            return False
        return dev not in self._unclear

    def _clear_topics(self, devs: list[str]) -> list[_Flushed]:
        """Empty retained messages on every topic the bridge may have written
        for devs (not only those it knows it did: the broker may keep some
        from before the gateway's start): their configs first, then, once
        Home Assistant had CLEAR_GAP_S to remove their entities, their values
        (an entity still there when its value goes says so in Home
        Assistant's log: `Invalid modes mode: `). Meanwhile nothing of theirs
        is published: a device linked again is shown once its values are
        cleared, and one being cleared is not cleared twice. Returns the
        devs' marks, each set once the last of its clears is published or
        dropped (a device of which one was dropped is in _unclear)."""
        new, marks = [], []
        for dev in devs:
            self._linked.pop(dev, None)
            self._withheld.pop(dev, None)
            self._shown.pop(dev, None)
            mark = self._clearing.get(dev)
            if mark is None:
                mark = self._clearing[dev] = _Flushed()
                self._unclear.discard(dev)
                new.append(dev)
            marks.append(mark)
        items: list[tuple[str, bytes] | _Cleared] = [(t, b"") for d in new for t in ha.all_config_topics(d)]
        for item in [*items, _Cleared(new)] if new else ():
            self._queue(item)
        return marks

    def _clear_values(self, devs: list[str]) -> None:
        """The second half of _clear_topics: devs' values cleared, their
        marks set once that is published, then those linked again meanwhile
        shown."""
        items: list[tuple[str, bytes] | _Flushed] = [
            (ha.topic(d, n), b"") for d in devs for n in ha.STATE_NAMES
        ]
        for item in [*items, *(self._clearing.pop(d) for d in devs if d in self._clearing)]:
            self._queue(item)
        for dev in devs:
            self._show_again(dev)

    def _queue(self, item: tuple[str, bytes] | _Flushed | _Cleared) -> None:
        """A clear's item in the publish queue; one that finds it full is
        dropped (its device cleared again at the next refresh), a mark is
        acted on at once."""
        if isinstance(item, tuple):
            if not self._enqueue(*item):
                self._dropped(*item)
            return
        try:
            self._out.put_nowait(item)
        except asyncio.QueueFull:
            if isinstance(item, _Flushed):
                item.done.set()
            else:
                self._clear_values(item.devs)

    # ---- commands from Home Assistant ---------------------------------------

    def on_command(self, topic: str, payload: bytes, retain: bool) -> None:
        """A message on a bridge command topic (gateway/service.py); checked
        here for its shape and queued, carried out by a worker. Never raises."""
        if retain:  # (a retained command would act again at every connection)
            self._refuse(topic, "a retained command is not acted on")
            return
        try:
            cmd = ha.parse_command(topic, payload)
        except ha.CommandError as exc:
            self._refuse(topic, str(exc))
            return
        try:
            self._commands.put_nowait(cmd)
        except asyncio.QueueFull:
            self._refuse(topic, f"{_COMMANDS} commands wait already")

    def _refuse(self, topic: str, why: str) -> None:
        n = self.stats["refused"] = self.stats["refused"] + 1
        # the first, then every hundredth: a flood must not flood the log
        if n == 1 or n % 100 == 0:
            log.warning("Home Assistant's command on %s refused: %s (%d so far)", topic[:120], why, n)

    async def _command_loop(self) -> None:
        while True:
            cmd = await self._commands.get()
            topic = ha.command_topic(cmd.dev, cmd.command)
            try:
                await self.act(cmd)
                self.stats["commands"] += 1
            except ha.CommandError as exc:
                self._refuse(topic, str(exc))
            except (DeviceOfflineError, CommandTimeoutError, DecisionError) as exc:
                self.stats["failed"] += 1
                log.warning("Home Assistant's %s for %s not done: %s", cmd.command, cmd.dev, exc)
            except Exception:
                self.stats["failed"] += 1
                log.exception("Home Assistant's %s for %s failed", cmd.command, cmd.dev)

    async def act(self, cmd: ha.Command) -> None:
        """Carry out a checked command: for a device its owner linked, an
        entity it has (of a shared stream), a value within its limits.
        Raises CommandError (refused), GatewayError (not done)."""
        if self.links.valid(cmd.dev) is None:
            raise ha.CommandError(f"{cmd.dev} is not linked to Home Assistant by its owner")
        d = self.gw.store.device(cmd.dev)
        if d is None:
            raise ha.CommandError(f"no device {cmd.dev}")
        held = withheld(d.hello)
        shown = ha.entities(d.model, d.hello, held)
        if cmd.command == "install":
            if ha.UPDATE not in shown:
                raise ha.CommandError(f"{cmd.dev} has no update entity")
            await self._install(d)
            return
        if ha.CLIMATE not in shown:
            raise ha.CommandError(
                f"{cmd.dev} has no thermostat entity (not a thermostat, or its streams kept back)"
            )
        value: float | str = cmd.value
        if cmd.command == "setpoint":
            assert isinstance(cmd.value, float)
            value = ha.checked_setpoint(cmd.value, ha.setpoint_range(self._manifest(d, "thermostat")))
        args = {"feature": "thermostat", "values": {cmd.command: value}}
        reply = await self.gw.send_command(cmd.dev, "config.set", args, timeout=TIMEOUT_S)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise ha.CommandError(f"the device refused: {str(err.get('message', 'no reason given'))[:120]}")
        result = reply.get("result")
        config = result.get("thermostat") if isinstance(result, dict) else None
        if cmd.dev not in self._linked:
            return  # (unlinked, given up or forgotten while the device answered: its topics stay clear)
        if isinstance(config, dict):  # (the setting as it now is: no wait for the next telemetry)
            shown_values = ha.state_values({"features": {"thermostat": config}}, held)
            for name in ("setpoint", "mode"):
                if name in shown_values:
                    self._put(cmd.dev, ha.topic(cmd.dev, name), shown_values[name].encode())

    async def _install(self, d: DeviceRecord) -> None:
        """The owner's yes, now, to the release that waits for d: the same
        decision as POST /devices/{id}/decision `now`, under the same rules
        (a rollout still offers it as its plan says)."""
        from .api_owners import decide

        rel = self._waiting(d)
        if rel is None:
            raise ha.CommandError(f"no release waits for {d.id}")
        await decide(self.gw, d, rel.id, "now", None)
        log.info("%s: the owner's yes to %s, from Home Assistant", d.id, rel.ref)
        if d.id in self._linked:  # (unlinked meanwhile: its topics stay clear)
            self._show(d.id)
