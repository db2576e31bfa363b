"""The gateway service: one MQTT session to the broker, the device registry,
telemetry storage, liveness, commands and the HTTP API, in one asyncio loop.

Background loops run in one TaskGroup, each task named. The MQTT session
reconnects on its own with jittered backoff; nothing stored is lost when the
broker or the gateway restarts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiomqtt

from firmware.pb.errors import ProtocolError
from firmware.pb.peer import protocol as proto

from .broker import BrokerUrl
from .clock import Clock, SystemClock, TimeSender
from .commands import Commander
from .db import Error as DatabaseError
from .db import PostgresDatabase
from .errors import (
    BrokerCertificateError,
    CommandTimeoutError,
    DeviceNotFoundError,
    DeviceOfflineError,
    DeviceRevokedError,
    GatewayError,
)
from .footprint import forget
from .ha_bridge import HomeAssistantBridge
from .homeassistant import BRIDGE, COMMAND_FILTER
from .ingest import OTA_UP, Accepted, Rejected, classify, classify_ota, is_ota_topic
from .nats_cluster import SHARED
from .nats_inbox import ClusterInbox
from .pool import BEAT_S, TTL_S, Pool, PoolError
from .pool_events import PoolEvents
from .registry import Registry
from .rollout_service import RolloutService
from .store import Store, TelemetryRow
from .stream_service import NewStreams, retention_loop
from .streams import withheld
from .tls import ApiTls, server_cert, uses_tls
from .updater import RECONCILE_S, SEND_BATCH, Updater
from .updates import DEFAULT_DEADLINE_S

if TYPE_CHECKING:
    from ota.keys import Keys

    from .lines import LineSession

log = logging.getLogger("permabeta.gateway")

Listener = Callable[[str, str, dict[str, Any]], None]

_FLUSH_ROWS = 1000
# What devices send: every one-level kind (unknown ones are seen, and
# rejected), and the update requests and statuses; not pb/#, which would
# echo back every chunk and offer the gateway itself sends.
# Home Assistant's commands to the bridge (gateway/ha_bridge.py) besides.
SUBSCRIPTIONS = ("pb/+/+", "pb/+/ota/req", "pb/+/ota/status", COMMAND_FILTER)


def pooled_subscriptions(share: str) -> tuple[str, ...]:
    """A worker of a pool (gateway/pool.py): telemetry, events and Home
    Assistant's commands go to one worker of the pool each (share: the
    pool's shared subscription, `$share/GROUP/`); what a device says of
    itself and of its update reaches every worker, and the device's owner
    or the pool's leader acts on it."""
    return (
        f"{share}pb/+/telemetry",
        f"{share}pb/+/event",
        "pb/+/hello",
        "pb/+/state",
        "pb/+/reply",
        "pb/+/ota/req",
        "pb/+/ota/status",
        f"{share}{COMMAND_FILTER}",
    )


def cluster_subscriptions() -> tuple[str, ...]:
    """A gateway on a NATS cluster (gateway/nats_cluster.py), alone or in a
    pool: what a device says of itself and of its update, to every worker;
    telemetry, events and Home Assistant's commands come through the
    cluster's work queue instead (gateway/nats_inbox.py)."""
    return tuple(t for t in pooled_subscriptions("") if t not in SHARED)


LEADER = "leader"  # the lease of what a pool does once: updates, rollouts, time, retention
_LEADERS = ("ota/req", "ota/status")  # the kinds only the pool's leader acts on
_MAX_PENDING_STATES = 10000
INTERNAL = "internal"  # the reason of a valid message the gateway failed to act on
REVOKED = "revoked"  # the reason of a message from a revoked device (gateway/registry.py)
# what the gateway keeps nothing of from a forgotten device (gateway/footprint.py)
_NOT_KEPT = ("telemetry", "event")
# the topics a device writes, where the broker may retain a message of it
RETAINED = proto.UP + OTA_UP
FORGOTTEN = "cancelled: the device's data was forgotten"  # the reason of its update ended so
_MAX_CLEARING = 10000  # the echoes of cleared retained messages waited for


@dataclass
class _Live:
    """What the liveness watch needs of a device, kept in memory."""

    online: bool
    last_seen: float
    deadline_s: float
    withheld: frozenset[str] = frozenset()  # streams its hello says it keeps back (docs/protocol.md 12)
    # False: a provisioned device heard before its first hello (docs/protocol.md 6), with no
    # row in `devices` yet; its data is kept, and its hello registers it
    hello: bool = True


# an id the registry lacks is taken to lack it this long (a device provisioned
# meanwhile is heard from its hello on, which needs no registry, or after it), for so many ids
_UNREGISTERED_S = 1.0
_MAX_UNREGISTERED = 10_000
_INBOX_BATCH = 256  # messages handled before the loop is let go
_PENDING_WARNING = 4 * SEND_BATCH  # publishes awaited at once past which aiomqtt warns


def _deadline(keepalive: int | None, telemetry_s: float | None) -> float:
    # Silence longer than three telemetry periods or 1.5 keepalives (the
    # broker's own limit) means the device is gone even if no will arrived.
    return max(3 * (telemetry_s or 10), 1.5 * (keepalive or 30)) + 2


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        ceiling: float = min(self.cap, self.first * 2.0**self.attempt)
        self.attempt += 1
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class _Inbox(asyncio.Queue[aiomqtt.Message]):
    """See Gateway._inbox."""

    def __init__(self, handle: Callable[[str, bytes, bool], None], maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._handle = handle
        self._waiting: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._more = asyncio.Event()

    def put_nowait(self, m: aiomqtt.Message) -> None:
        payload = bytes(m.payload) if isinstance(m.payload, bytes | bytearray) else b""
        self._waiting.append((m.topic.value, payload, m.retain))
        self._more.set()

    async def hand_on(self) -> None:
        """Hand every message to handle(), in order, as they come, until
        cancelled: a batch at each wake, the loop let go between batches."""
        while True:
            await self._more.wait()
            self._more.clear()
            n = 0
            while self._waiting:
                self._handle(*self._waiting.popleft())
                n += 1
                if n % _INBOX_BATCH == 0:
                    await asyncio.sleep(0)  # (a flood does not hold up the API and the rest)

    def hand_on_the_rest(self) -> None:
        """What came before the connection ended (the broker has its acknowledgement)."""
        while self._waiting:
            self._handle(*self._waiting.popleft())


class Gateway:
    """Runs until cancelled. `listeners` get (kind, device, message) for
    every accepted message and ("offline", device, {...}) for liveness.
    With keys (root.json and gateway.key) it stores releases and updates
    devices (`ota`, gateway/updater.py); updates not committed within
    update_deadline seconds fail."""

    def __init__(
        self,
        broker: BrokerUrl,
        store: Store,
        *,
        client_id: str = "pb-gateway",
        api: tuple[str, int] | None = ("127.0.0.1", 8480),
        flush_interval: float = 0.5,
        watch_interval: float = 2.0,
        tls_context: ssl.SSLContext | None = None,
        api_tls: ApiTls | None = None,
        keys: Keys | None = None,
        update_deadline: float = DEFAULT_DEADLINE_S,
        reconcile_delay: float = RECONCILE_S,
        clock: Clock | None = None,
        pool: Pool | None = None,
        cluster: Sequence[str] = (),
        cluster_replicas: int = 3,
    ) -> None:
        """cluster: the NATS URLs of the cluster the broker is (its nodes';
        empty: the broker is Mosquitto, or the embedded one)."""
        self.clock: Clock = clock or SystemClock()
        self.pool = pool or Pool(store)
        self.leading = not self.pool.pooled  # (a worker alone leads itself)
        self.broker = broker
        self.store = store
        self.client_id = client_id
        self.api_bind = api
        self.api_url: str | None = None
        self.api_tls = api_tls or ApiTls()
        if api is not None:
            uses_tls(self.api_tls, api[0])  # (plain HTTP off loopback is refused here, before anything runs)
        self.flush_interval = flush_interval
        self.watch_interval = watch_interval
        self.tls_context = tls_context
        self.reconcile_delay = reconcile_delay
        self.listeners: list[Listener] = []
        self._unregistered: dict[str, float] = {}  # an id found in no registry -> until when it is believed
        # (a pool on PostgreSQL: the app's live events of the other workers come through it)
        self.pool_events: PoolEvents | None = None
        if self.pool.pooled and isinstance(store.db, PostgresDatabase):
            self.pool_events = PoolEvents(self.pool.name, store.db.url)
            self.listeners.append(self.pool_events.heard)
        self.cluster: ClusterInbox | None = None
        if cluster:
            self.cluster = ClusterInbox(
                cluster,
                broker.username,
                broker.password,
                self.handle,
                lambda: self.flush(keep=True),
                cluster_replicas,
                # (a cluster that takes NATS clients over TLS alone, tls:// or not: its nodes'
                # certificates are of the CA the broker's is, which --ca names)
                tls=tls_context,
            )
        self.commander = Commander()
        self.connected = asyncio.Event()
        self.connects = 0  # connections to the broker made (each may find what it retained lost)
        self.counters: dict[str, int] = {"accepted": 0, "rejected": 0, "ignored": 0, "stored": 0}
        self.rejects: dict[str, int] = {}
        self._client: aiomqtt.Client | None = None
        self._rows: list[TelemetryRow] = []
        self._flush_now = asyncio.Event()
        self._pending_state: dict[str, dict[str, Any]] = {}
        self._live: dict[str, _Live] = {}
        self._forgotten = store.forgotten_devices()
        self._revoked = Registry(store).revoked()  # (gateway/registry.py: refused, sent nothing)
        self._clearing: dict[str, int] = {}  # topic -> the echoes of its clearing still to come
        # the devices on a serial or Bluetooth line, proven (gateway/lines.py): what is sent to
        # them goes down their line
        self.lines: dict[str, LineSession] = {}
        self.carriers: list[Any] = []  # what runs the lines (gateway/serial_line.py), run with it
        for d in store.devices():
            self._live[d.id] = _Live(d.online, d.last_seen, _deadline(d.keepalive, d.telemetry_s))
        for reason, r in store.rejects().items():
            self.rejects[reason] = r["count"]
        self.ota = Updater(
            store,
            keys=keys,
            devices=store.device,
            online=self.is_online,
            revoked=self._revoked.__contains__,
            fleet=store.devices,
            deadline_s=update_deadline,
            clock=self.clock,
        )
        self.ota.publish = self.publish
        if self.pool.pooled:
            self.ota.step_down()  # (until it leads its pool)
        self.time_sender = TimeSender(
            keys, lambda: [d for d in list(self._live) if self.is_online(d)], clock=self.clock
        )
        self.time_sender.publish = self.publish
        self.rollouts = RolloutService(self)
        from .twin.service import TwinService

        self.twin = TwinService(self)
        self.new_streams = NewStreams(self)
        self.homeassistant = HomeAssistantBridge(self)

    # ---- running -----------------------------------------------------------

    async def run(self) -> None:
        if self.pool.pooled and self.ota.releases.shared:
            # (releases added here before their blobs went into the database: a worker on another
            # machine finds them there; done before the name is taken, which makes this worker one
            # of the pool, given its share of the devices, and may take a while)
            self.ota.releases.share_all()
        self.pool.check_name(time.time())  # (a namesake that runs is left alone: nothing done yet)
        try:
            await self._run()
        finally:
            try:
                self.pool.release()  # (its name, taken above, is free again however it ended)
            except Exception:
                log.exception("could not leave the pool cleanly: the others take over in %gs", TTL_S)

    async def _run(self) -> None:
        cert = None  # the API's certificate, made or checked before anything starts (by the wall clock)
        if self.api_bind is not None and uses_tls(self.api_tls, self.api_bind[0]):
            cert = server_cert(self.api_tls, self.api_bind[0], self.store.beside(".tls"), time.time())
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._mqtt_loop(), name="gateway-mqtt")
                tg.create_task(self._flush_loop(), name="gateway-flush")
                if self.cluster is not None:
                    tg.create_task(self.cluster.run(), name="gateway-cluster")
                tg.create_task(self._watch_loop(), name="gateway-liveness")
                tg.create_task(self.ota.send_loop(), name="gateway-ota-send")
                if self.pool_events is not None:
                    tg.create_task(self.pool_events.run(), name="gateway-pool-events")
                if self.pool.pooled:
                    tg.create_task(self._pool_loop(), name="gateway-pool")
                else:
                    for name, loop in self._led().items():
                        tg.create_task(loop(), name=f"gateway-{name}")
                tg.create_task(self.twin.loop(), name="gateway-twin")
                tg.create_task(self.new_streams.loop(), name="gateway-new-streams")
                tg.create_task(self.homeassistant.loop(), name="gateway-homeassistant")
                for carrier in self.carriers:
                    tg.create_task(carrier.run(), name=f"gateway-{carrier.name}")
                if self.api_bind is not None:
                    from .api import serve_api

                    tg.create_task(serve_api(self, *self.api_bind, cert), name="gateway-api")
        except* GatewayError as group:
            raise group.exceptions[0] from None  # (one of ours says itself, not inside a group)
        finally:
            self.flush()
            self.ota.close()
            if not self.pool.pooled or self.pool.api_is_mine():
                self.store.delete_meta("api")

    async def _take_the_lead(self) -> None:
        """This worker now leads its pool: the updates in progress are its,
        and what the devices said while no worker led (a status, a hello
        that says a commit) is heard again from what the broker retains."""
        self.ota.take_over(self.reconcile_delay)
        client = self._client
        if client is not None:
            for pattern in ("pb/+/hello", "pb/+/ota/status"):
                await client.subscribe(pattern, qos=1)  # (the same filter again: its retained, replayed)

    def _read_the_pool_s_lists(self) -> None:
        """The devices revoked or forgotten, as the pool's database says now
        (the leader changes them, at its API's request): what this worker
        holds of a device forgotten since is not stored."""
        revoked, forgotten = Registry(self.store).revoked(), self.store.forgotten_devices()
        if forgotten - self._forgotten:
            self._rows = [r for r in self._rows if r.device not in forgotten]
        for mine, said in ((self._revoked, revoked), (self._forgotten, forgotten)):
            mine.intersection_update(said)  # (in place: the updater holds the revoked set's own test)
            mine.update(said)

    def _take_devices(self) -> None:
        """The pool changed: the devices this worker owns now are watched
        from what the database says of them (their last owner recorded it)."""
        for record in self.store.devices():
            if self.pool.owns(record.id):
                live = self._live.get(record.id)
                if live is None:
                    deadline = _deadline(record.keepalive, record.telemetry_s)
                    live = self._live[record.id] = _Live(record.online, record.last_seen, deadline)
                live.online = record.online
                live.last_seen = max(live.last_seen, record.last_seen)

    def _led(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        """What the pool's leader runs, once in the whole pool."""
        return {
            "ota-watch": self.ota.watch_loop,
            "time": self.time_sender.loop,
            "rollouts": self.rollouts.loop,
            "retention": lambda: retention_loop(self),
        }

    async def _pool_loop(self) -> None:
        """A worker of a pool: say it is alive every BEAT_S, and run what the
        leader runs while it holds the lease (a worker that lost it stops,
        one that took it over takes the updates in progress over)."""
        running: dict[str, asyncio.Task[None]] = {}
        held_until = 0.0  # the lease this worker last renewed holds until then
        try:
            while True:
                now = time.time()  # (the pool's clock is the machine's, whatever the gateway's says)
                try:
                    before = self.pool.members
                    if self.pool.beat(now) != before:
                        self._take_devices()
                    self._read_the_pool_s_lists()
                    leading = self.pool.holds(LEADER, now)
                    held_until = now + self.pool.ttl_s if leading else 0.0
                except PoolError:
                    raise
                except Exception:
                    # (it leads on while its lease holds, less a beat: none other takes it before)
                    leading = now < held_until - 2 * BEAT_S
                    log.exception("the pool's database failed%s", "" if leading else ": leading nothing")
                if leading and not self.leading:
                    try:
                        await self._take_the_lead()
                    except Exception:
                        log.exception("could not take the pool's updates over: trying again")
                        leading = False
                elif self.leading and not leading:
                    self.ota.step_down()
                self.leading = leading
                for name, loop in self._led().items():
                    task = running.get(name)
                    if leading and (task is None or task.done()):
                        running[name] = asyncio.create_task(loop(), name=f"gateway-{name}")
                    elif not leading and task is not None:
                        task.cancel()
                        del running[name]
                await asyncio.sleep(BEAT_S)
        finally:
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)
            try:
                self.pool.release()
            except Exception:
                log.exception("could not leave the pool cleanly: the others take over in %gs", TTL_S)

    async def _mqtt_loop(self) -> None:
        backoff = Backoff()
        b = self.broker
        while True:
            inbox: list[_Inbox] = []
            try:
                async with aiomqtt.Client(
                    b.host,
                    b.port,
                    username=b.username,
                    password=b.password,
                    identifier=self.client_id,
                    clean_session=False,
                    keepalive=30,
                    timeout=10,
                    tls_context=(self.tls_context or ssl.create_default_context()) if b.tls else None,
                    # requests and chunks are small and go back and forth:
                    # Nagle's delay would cost 40 ms and more each
                    socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
                    queue_type=self._inbox(inbox),
                ) as client:
                    # (update chunks go a batch at a time, each awaited: not a concern)
                    client.pending_calls_threshold = _PENDING_WARNING
                    if self.cluster is not None:
                        patterns = cluster_subscriptions()
                    elif self.pool.pooled:
                        patterns = pooled_subscriptions(self.pool.share())
                    else:
                        patterns = SUBSCRIPTIONS
                    for pattern in patterns:
                        await client.subscribe(pattern, qos=1)
                    raise_if_cancelled()
                    self._client = client
                    self.connects += 1
                    self.connected.set()
                    handing = asyncio.create_task(inbox[0].hand_on(), name="gateway-inbox")
                    log.info("connected to broker %s", b)
                    backoff.reset()
                    # what the devices did while the gateway was away shows in
                    # their retained messages: then updates are squared with it
                    if self.leading:
                        self.ota.reconcile_soon(self.reconcile_delay)
                    try:
                        # (the inbox hands every message on as it comes: this waits for the end)
                        async for _ in client.messages:
                            pass
                    finally:
                        handing.cancel()
                        await asyncio.gather(handing, return_exceptions=True)
            except aiomqtt.MqttError as exc:
                if inbox:
                    inbox[0].hand_on_the_rest()  # (the broker has its acknowledgement: not lost)
                refused = _certificate_refused(exc)
                if refused is not None:
                    hint = (
                        "is --ca the CA that signed it?"
                        if self.tls_context
                        else "give the CA that signed it with --ca FILE"
                    )
                    raise BrokerCertificateError(
                        f"broker {b}: its certificate is not trusted ({refused}); {hint}"
                    ) from exc
                delay = backoff.next()
                if self.connected.is_set():
                    log.warning("lost broker %s: %s; reconnecting", b, exc)
                else:
                    log.debug("broker %s unreachable: %s; retry in %.1fs", b, exc, delay)
                self._client = None
                self.connected.clear()
                await asyncio.sleep(delay)
            finally:
                # what came and was acknowledged, however the connection ended (even
                # while subscribing, or cancelled): handled, not lost
                if inbox:
                    inbox[0].hand_on_the_rest()

    def _inbox(self, made: list[_Inbox]) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's message queue, replaced by one whose messages one task
        hands to handle() in batches (aiomqtt's iterator makes a task and a
        wait for each message: more than handling it costs), from when the
        gateway can answer them: what comes before (the broker gives a
        persistent session's messages as soon as it connects) waits. Each is
        acknowledged as it is read, as before: a burst waits here, not in
        the broker, which drops what is past its queue's limit. The one
        aiomqtt makes is put in made."""
        gateway = self

        class Inbox(_Inbox):
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(gateway._handled, maxsize)
                made.append(self)

        return Inbox

    def _handled(self, topic: str, payload: bytes, retain: bool) -> None:
        try:
            self.handle(topic, payload, retain)
        except Exception:
            # (handle() raises for nothing: were it to, the message is dropped, not
            # left unacknowledged for the broker to give again at every connect)
            log.exception("failed to handle a message on %s", topic[:120])

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._flush_now.wait()
            self._flush_now.clear()
            self.flush()

    def flush(self, keep: bool = False) -> bool:
        """Write buffered telemetry in one transaction (row by row if that
        fails). A row that cannot be stored is rejected as `internal`; the
        others are stored. Never raises. With keep, where the database took
        none (it is out of reach), none is rejected and it says False: the
        cluster's work queue gives them again."""
        if not self._rows:
            return True
        rows, self._rows = self._rows, []
        try:
            stored, failed = self.store.add_telemetry(rows)
        except Exception:
            log.exception("could not store %d telemetry rows", len(rows))
            stored, failed = 0, []
        if keep and not stored:
            self.counters["accepted"] -= len(rows)  # (counted again when they come again)
            return False
        self.counters["stored"] += stored
        now = self.clock.now()
        for row, exc in failed:
            log.error("could not store telemetry of %s: %s: %s", row.device, type(exc).__name__, exc)
            # accepted when it arrived, rejected now that it could not be kept
            self.counters["accepted"] -= 1
            self.reject(proto.topic(row.device, "telemetry"), INTERNAL, f"{type(exc).__name__}: {exc}", now)
        return True

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            self.check_liveness(self.clock.now())

    def check_liveness(self, now: float) -> None:
        """Mark offline every device silent past its deadline (a lost will,
        a half-open connection, a broker that died with the will). A device
        that cannot be marked is logged and tried again at the next check."""
        for dev, live in list(self._live.items()):
            # (the deadline is the network's, in real seconds: the clock may run faster)
            if live.online and now - live.last_seen > live.deadline_s * self.clock.speed:
                try:
                    if self.pool.pooled and not self._silent_in_the_pool(dev, live, now):
                        continue
                    self._set_state(dev, False, "silent", now)
                except Exception:
                    live.online = True  # not recorded: the next check tries again
                    log.exception("could not mark %s offline", dev)

    def _silent_in_the_pool(self, dev: str, live: _Live, now: float) -> bool:
        """Whether a device this worker of a pool finds silent is silent for
        the whole pool: only its owner marks it, and the other workers store
        the share of its telemetry the broker gave them."""
        if not self.pool.owns(dev):
            return False
        record = self.store.device(dev)
        if record is not None and record.last_seen > live.last_seen:
            live.last_seen = record.last_seen
        return now - live.last_seen > live.deadline_s * self.clock.speed

    # ---- incoming ----------------------------------------------------------

    def handle(self, topic: str, payload: bytes, retain: bool, carrier: str = "mqtt") -> None:
        """Act on one message from the broker (or from a device's line,
        carrier naming it); never raises for bad input."""
        now = self.clock.now()
        if topic.startswith(f"{BRIDGE}/"):  # Home Assistant's, never a device's
            self.homeassistant.on_command(topic, payload, retain)
            return
        if not payload and self._clearing.get(topic):
            # the broker passing on the gateway's own clearing of a retained message (`forget`)
            self._clearing[topic] -= 1
            if not self._clearing[topic]:
                del self._clearing[topic]
            self.counters["ignored"] += 1
            return
        # the update topics first: classify() knows only the kinds of docs/protocol.md
        judge = classify_ota if is_ota_topic(topic) else classify
        try:
            verdict = judge(topic, payload, retain, self._known)
        except Exception as exc:
            log.exception("failed to classify a message on %s", topic[:120])
            self.reject(topic, INTERNAL, f"{type(exc).__name__}: {exc}", now)
            return
        if verdict is None:
            self.counters["ignored"] += 1
            return
        if isinstance(verdict, Rejected):
            self.reject(topic, verdict.reason, verdict.detail, now)
            return
        if verdict.dev in self._revoked:
            # (the broker's configuration cuts it off too: this holds meanwhile, and on any broker)
            self.reject(topic, REVOKED, f"{verdict.dev} is revoked", now)
            return
        # a forgotten device's telemetry and events tell that it is there, and are not kept
        keep = verdict.kind not in _NOT_KEPT or verdict.dev not in self._forgotten
        try:
            self._accept(verdict, retain, now, keep, carrier)
        except Exception as exc:
            log.exception("failed to handle a %s message from %s", verdict.kind, verdict.dev)
            self.reject(topic, INTERNAL, f"{type(exc).__name__}: {exc}", now)
            return
        if not keep:
            self.counters["ignored"] += 1
            return
        self.counters["accepted"] += 1
        for listener in self.listeners:
            try:
                listener(verdict.kind, verdict.dev, verdict.msg)
            except Exception:
                log.exception("listener failed on a %s message", verdict.kind)

    def _known(self, dev: str) -> bool:
        """Whether the gateway takes dev's messages other than hello and state:
        a device that said hello, or one provisioned (MQTT orders messages
        only per topic: its telemetry may come before its hello)."""
        if dev in self._live:
            return True
        now = time.monotonic()
        if self._unregistered.get(dev, 0.0) > now:
            return False  # (a flood from an id not provisioned costs one lookup a second)
        if Registry(self.store).get(dev) is not None:
            return True
        if len(self._unregistered) >= _MAX_UNREGISTERED:
            self._unregistered.clear()
        self._unregistered[dev] = now + _UNREGISTERED_S
        return False

    def reject(self, topic: str, reason: str, detail: str, now: float) -> None:
        n = self.rejects.get(reason, 0) + 1
        self.rejects[reason] = n
        self.counters["rejected"] += 1
        # the first of each reason, then every hundredth: a flood must not flood the log
        if n == 1 or n % 100 == 0:
            log.warning("rejected message on %s: %s: %s (%d so far)", topic[:120], reason, detail, n)
        try:
            self.store.count_reject(reason, topic, detail, now)
        except Exception:
            log.exception("could not count a %s rejection in the database", reason)

    def _accept(
        self, a: Accepted, retain: bool, now: float, keep: bool = True, carrier: str = "mqtt"
    ) -> None:
        dev, msg = a.dev, a.msg
        live = self._live.get(dev)
        if self.pool.pooled and a.kind not in _NOT_KEPT:
            # (telemetry and events are the worker's the broker gave them to)
            if a.kind in _LEADERS:
                if not self.leading:
                    return
            elif not self.pool.owns(dev):
                self._heard_elsewhere(a, retain, now)
                return
        if a.kind == "hello":
            before = None if live is None or not live.hello else self.store.device(dev)
            self.store.upsert_hello(dev, msg, now, carrier)
            deadline = _deadline(msg["keepalive"], msg["telemetry_s"])
            if live is None or not live.hello:
                log.info("new device %s (%s, %s)", dev, msg["model"], msg["board"])
                talked = live is not None and live.online  # (it sent something before its hello)
                live = self._live[dev] = _Live(False, now, deadline)
                pending = self._pending_state.pop(dev, None)
                if pending is not None:
                    self._apply_state(dev, pending, now)
                elif talked:
                    self._set_state(dev, True, "active", now)
            else:
                live.deadline_s = deadline
                if not retain:
                    live.last_seen = now
            live.withheld = frozenset(withheld(msg))
            self.new_streams.on_hello(before, msg)
            if self.leading:
                self._led_hello(dev, msg, retain, now)
            return
        if a.kind == "state":
            if live is None:
                # a state can arrive before the hello it belongs to
                if len(self._pending_state) < _MAX_PENDING_STATES or dev in self._pending_state:
                    self._pending_state[dev] = msg
                return
            self._apply_state(dev, msg, now, retain)
            return
        if live is None:
            # a provisioned device before its first hello (classify() accepts these from known devices)
            log.info("%s (provisioned) is heard before its first hello", dev)
            live = self._live[dev] = _Live(False, now, _deadline(None, None), hello=False)
            pending = self._pending_state.pop(dev, None)
            if pending is not None:
                self._apply_state(dev, pending, now)
        if a.kind == "ota/status" and retain:
            # replayed by the broker: says nothing of whether the device is there now
            self.ota.on_status(dev, msg, now)
            return
        live.last_seen = now
        if not live.online:
            # a device that talks is connected, whatever we heard before
            self._set_state(dev, True, "active", now)
        if not keep:
            return
        if a.kind == "telemetry":
            data = _telemetry_data(msg)
            if live.withheld:
                data = _shared(data, live.withheld)
            self._rows.append(TelemetryRow(dev, now, msg["ts"], msg["seq"], data))
            if len(self._rows) >= _FLUSH_ROWS:
                self._flush_now.set()
        elif a.kind == "reply":
            status = "ok" if msg["ok"] else "error"
            if not self.commander.resolve(dev, msg):
                if self._awaited_elsewhere(msg["id"]):
                    return  # (the worker of the pool that sent it records it)
                status = "late"
            self.store.finish_command(msg["id"], dev, status, msg, now)
        elif a.kind == "ota/req":
            self.ota.on_request(dev, msg)
        elif a.kind == "ota/status":
            self.ota.on_status(dev, msg, now)
        elif a.kind == "event":
            self.store.add_event(dev, msg["kind"], msg.get("feature"), msg.get("message"), now)
            if msg["kind"].endswith("_error"):
                log.warning("%s: %s %s: %s", dev, msg["kind"], msg.get("feature") or "", msg.get("message"))

    def _led_hello(self, dev: str, msg: dict[str, Any], retain: bool, now: float) -> None:
        """What the leader of a pool (a gateway alone leads itself) does at a hello."""
        self.ota.on_hello(dev, msg, now)
        self.time_sender.on_hello(dev, retain)
        self.rollouts.wake(dev, msg)

    def _heard_elsewhere(self, a: Accepted, retain: bool, now: float) -> None:
        """A worker of a pool hears what a device it does not own says of
        itself: its owner records it; this one keeps what it needs to take
        the device's telemetry (its liveness deadline, what it withholds),
        sends the reply of a command it sent to its waiter, and, leading,
        acts on the update's side of it."""
        dev, msg = a.dev, a.msg
        live = self._live.get(dev)
        if a.kind == "hello":
            deadline = _deadline(msg["keepalive"], msg["telemetry_s"])
            if live is None or not live.hello:
                live = self._live[dev] = _Live(False, now, deadline)
            live.deadline_s = deadline
            live.withheld = frozenset(withheld(msg))
            if self.leading:
                self._led_hello(dev, msg, retain, now)
        elif a.kind == "state":
            if msg["state"] == "online" and self.leading:
                self.rollouts.wake(dev)
                if not retain:
                    self.ota.on_online(dev)
        elif a.kind == "reply" and self.commander.resolve(dev, msg):
            self.store.finish_command(msg["id"], dev, "ok" if msg["ok"] else "error", msg, now)

    def _awaited_elsewhere(self, cmd_id: str) -> bool:
        """Whether another worker of the pool, alive, sent the command and
        waits for its reply (a reply reaches every worker)."""
        if not self.pool.pooled:
            return False
        row = self.store.command(cmd_id)
        worker = row.get("worker") if row is not None and row["status"] == "sent" else None
        return worker is not None and worker != self.pool.name and worker in self.pool.members

    def _apply_state(self, dev: str, msg: dict[str, Any], now: float, retain: bool = True) -> None:
        online = msg["state"] == "online"
        self._set_state(dev, online, msg.get("reason"), now)
        if online and not retain and self.leading:
            self.ota.on_online(dev)

    def _set_state(self, dev: str, online: bool, reason: str | None, now: float) -> None:
        live = self._live[dev]
        live.online = online
        if online:
            live.last_seen = now
        if self.store.set_state(dev, online, reason, now):
            log.info("%s is %s%s", dev, "online" if online else "offline", f" ({reason})" if reason else "")
            if online and self.leading:
                self.rollouts.wake(dev)
            for listener in self.listeners:
                try:
                    listener("online" if online else "offline", dev, {"reason": reason})
                except Exception:
                    log.exception("listener failed on %s going %s", dev, "online" if online else "offline")

    # ---- forgetting a device ----------------------------------------------

    async def forget(self, dev: str) -> tuple[dict[str, int], bool]:
        """Forget everything stored about dev (gateway/footprint.py): its
        update in progress ends, its rows go (its rollouts keep counts that
        name it not), nothing of its telemetry and events is kept until it
        is claimed again, and the broker's retained messages of it are
        cleared. The rows removed, per table, and whether every retained
        topic was cleared. Raises GatewayError when the gateway is not
        connected to the broker (then nothing is done)."""
        if self._client is None:
            raise GatewayError(
                "the gateway is not connected to the broker, which keeps the device's messages"
            )
        async with self.rollouts.still():
            gone = self.rollouts.gone(dev)  # (what it shows now: its update is not yet ended)
            # ended before its rows go, or its end would write them again
            await self.ota.cancel(dev, FORGOTTEN)
            # (nothing awaited from here to the store's commit: no row of dev is buffered meanwhile)
            removed = forget(self.store, dev, gone, self.clock.now())
            self._forgotten.add(dev)
            self._rows = [r for r in self._rows if r.device != dev]
            self._pending_state.pop(dev, None)
        log.info("%s forgotten: %d rows", dev, sum(removed.values()))
        for kind in RETAINED:
            topic = proto.topic(dev, kind)
            if len(self._clearing) < _MAX_CLEARING:
                self._clearing[topic] = self._clearing.get(topic, 0) + 1
            try:
                await self.publish(topic, b"", 1, True)
            except GatewayError as exc:
                log.warning("%s: its retained messages were not cleared: %s", dev, exc)
                return removed, False
        # and what the bridge retained of it for Home Assistant (its link went with its rows)
        if not await self.homeassistant.clear(dev):
            log.warning("%s: its Home Assistant topics were not cleared", dev)
            return removed, False
        return removed, True

    def revoked(self, dev: str, revoked: bool) -> None:
        """dev was revoked (nothing it sends is taken, it is sent nothing, its
        update in progress ends, and it is offline from now) or restored
        (gateway/registry.py)."""
        if not revoked:
            self._revoked.discard(dev)
            return
        self._revoked.add(dev)
        self.ota.drop(dev, "cancelled: the device was revoked")  # (its update in progress ends)
        line = self.lines.pop(dev, None)
        if line is not None:
            line.drop(f"{dev} is revoked")
        if dev in self._live:
            self._set_state(dev, False, REVOKED, self.clock.now())

    # ---- devices on a line ---------------------------------------------------

    def attach(self, dev: str, line: LineSession) -> None:
        """dev proved itself on line: what is sent to it goes there from now
        (a line it had before is let go: it cannot be on two)."""
        if dev in self._revoked:
            line.drop(f"{dev} is revoked")
            return
        old = self.lines.get(dev)
        self.lines[dev] = line
        if old is not None and old is not line:
            old.drop(f"{dev} proved itself on {line.line.name}")

    def detach(self, dev: str, line: LineSession) -> None:
        """dev's line is gone: it is offline (reason lost) until it proves
        itself again; what was under way for it waits, as for a lost broker
        connection."""
        if self.lines.get(dev) is not line:
            return
        del self.lines[dev]
        if dev in self._live and self._live[dev].online:
            try:
                self._set_state(dev, False, "lost", self.clock.now())
            except Exception:
                log.exception("could not mark %s offline", dev)

    def claimed(self, dev: str) -> None:
        """dev was claimed: what it sends is kept again (Accounts.claim)."""
        self._forgotten.discard(dev)

    # ---- publishing and commands -------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish through the gateway's MQTT session, or down the line of
        the device the topic is of (not a retained message: that is the
        broker's to keep). Raises GatewayError when not connected or the
        publish fails."""
        if not retain and self.lines:
            parts = topic.split("/", 2)
            line = self.lines.get(parts[1]) if len(parts) == 3 and parts[0] == "pb" else None
            if line is not None:
                try:
                    sent = line.send(parts[2], payload)
                except ProtocolError as exc:
                    raise GatewayError(f"could not send on {topic}: {exc}") from exc
                if not sent:
                    raise GatewayError(f"could not send on {topic}: the line to {parts[1]} is full")
                return
        client = self._client
        if client is None:
            raise GatewayError("the gateway is not connected to the broker")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            raise GatewayError(f"could not publish on {topic}: {exc}") from exc
        raise_if_cancelled()

    def is_online(self, dev: str) -> bool:
        if self.pool.pooled and not self.pool.owns(dev):
            record = self.store.device(dev)  # (its owner, another worker, records it)
            return bool(record and record.online)
        live = self._live.get(dev)
        return bool(live and live.online)

    async def send_command(
        self,
        dev: str,
        op: str,
        args: dict[str, Any] | None = None,
        timeout: float = 10.0,
        force: bool = False,
    ) -> dict[str, Any]:
        """Send a command and wait for the device's reply message.

        Raises DeviceNotFoundError, DeviceRevokedError, DeviceOfflineError
        (unless force),
        CommandTimeoutError, GatewayError (not connected to the broker).
        """
        if dev not in self._live or not self._live[dev].hello:
            raise DeviceNotFoundError(f"no device {dev!r}")
        if dev in self._revoked:
            raise DeviceRevokedError(f"device {dev} is revoked (`devices restore {dev}` lets it back)")
        if not force and not self.is_online(dev):
            raise DeviceOfflineError(f"device {dev} is offline")
        cmd_id = self.commander.new_id()
        msg: dict[str, Any] = {"v": proto.VERSION, "id": cmd_id, "op": op}
        if args:
            msg["args"] = args
        payload = proto.encode("cmd", msg)
        fut = self.commander.expect(cmd_id, dev)
        self.store.add_command(
            cmd_id, dev, op, args or {}, self.clock.now(), self.pool.name if self.pool.pooled else None
        )
        try:
            await self.publish(proto.topic(dev, "cmd"), payload, 1, False)
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            self.store.finish_command(cmd_id, dev, "timeout", None, self.clock.now())
            raise CommandTimeoutError(f"{dev} did not answer {op} within {timeout:g}s") from None
        except GatewayError as exc:
            self.store.finish_command(cmd_id, dev, "failed", None, self.clock.now())
            raise GatewayError(f"could not send {op} to {dev}: {exc}") from exc
        except asyncio.CancelledError:
            # (the gateway stops: a reply that comes all the same is recorded `late`)
            try:
                self.store.finish_command(cmd_id, dev, "cancelled", None, self.clock.now())
            except DatabaseError as exc:  # (the database away: the cancel goes on all the same)
                log.warning("%s: command %s not recorded as cancelled: %r", dev, cmd_id, exc)
            raise
        finally:
            self.commander.forget(cmd_id)

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected.is_set(),
            "broker": str(self.broker),
            "devices": sum(1 for v in self._live.values() if v.hello),
            "online": sum(1 for v in self._live.values() if v.online and v.hello),
            "counters": dict(self.counters),
            "rejects": dict(self.rejects),
            "pending_commands": len(self.commander),
            "ota": dict(self.ota.stats) | {"enabled": self.ota.enabled},
            "time": dict(self.time_sender.stats),
            "homeassistant": dict(self.homeassistant.stats),
        }


def _telemetry_data(msg: dict[str, Any]) -> dict[str, Any]:
    """What is stored of a telemetry message: all but the envelope."""
    return {k: v for k, v in msg.items() if k not in ("v", "dev", "seq", "ts")}


def _shared(data: dict[str, Any], withheld: frozenset[str]) -> dict[str, Any]:
    """Telemetry without what the device's hello says it keeps back: a
    device that sends it anyway (a runtime before choices, a fault) does
    not get it stored."""
    out = dict(data)
    for part in ("sensors", "actuators"):
        values = out.get(part)
        if isinstance(values, dict):
            out[part] = {k: v for k, v in values.items() if f"{part}.{k}" not in withheld}
    reports = out.get("features")
    if isinstance(reports, dict):
        out["features"] = {
            n: {k: v for k, v in r.items() if f"features.{n}.{k}" not in withheld}
            if isinstance(r, dict)
            else r
            for n, r in reports.items()
        }
    return out


def raise_if_cancelled() -> None:
    """aiomqtt waits with asyncio.wait_for, which on Python 3.11 swallows a
    cancel that comes as the wait ends, and a library's exit that fails
    (bleak's, on a bus that has gone) raises its own error over the cancel:
    a loop that goes on would never stop. Called after such a wait or
    exit."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_until_done(
    task: asyncio.Task[Any], again_s: float = 1.0, every_task: bool = False, spare: Iterable[Any] = ()
) -> None:
    """Cancel task and wait for its end, cancelling it again every again_s
    while it runs: a cancel that comes as an asyncio.wait_for's wait ends is
    lost on Python 3.11 (in aiomqtt's, nats-py's, a database driver's), and
    a loop that lost one would never stop. A TaskGroup that is stopping
    passes no second cancel on to its tasks, and the one that lost the
    cancel is one of them: with every_task (a process that stops), each
    cancel after the first goes to every task of the loop but this one and
    those in spare. Returns when task has ended."""
    me, spared = asyncio.current_task(), set(spare)
    task.cancel()
    while True:
        await asyncio.wait([task], timeout=again_s)
        if task.done():
            return
        task.cancel()
        if every_task:
            for t in asyncio.all_tasks():
                if t is not me and t not in spared:
                    t.cancel()


def _certificate_refused(exc: aiomqtt.MqttError) -> str | None:
    """Why TLS refused the broker's certificate, if that is what exc is (aiomqtt
    words the connect's ssl error as a plain MqttError, the ssl error its context)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return cause.verify_message or str(cause)
    return None
