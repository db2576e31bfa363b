"""What one worker of a pool handles, taken from a NATS cluster's JetStream
work queue (gateway/nats_cluster.py; docs/makers.md, "A NATS cluster").

On a NATS cluster a shared MQTT subscription is accepted but delivers
nothing, so the device traffic that a pool splits (telemetry, events, Home
Assistant's commands: nats_cluster.SHARED) is read natively: every message a
device publishes on those subjects is kept in the stream STREAM (replicated,
work-queue retention: gone once acknowledged), and the workers pull from its
one durable consumer, each message to one of them. A worker acknowledges a
batch once it is handled and its rows stored: one that dies before loses
nothing (the cluster gives the batch to another after ACK_WAIT_S), and
what devices say while no worker is up waits in the stream, up to its
bounds. At least once: a worker that dies between storing and
acknowledging has its batch stored again by another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from .nats_cluster import CONSUMER, SHARED, STREAM, subject, topic

log = logging.getLogger(__name__)

STREAM_NAME_IN_USE = 10058  # JetStream's error code
BATCH = 256  # messages pulled at once
ACK_WAIT_S = 10.0  # a batch not acknowledged by then goes to another worker
RETRY_S = 2.0  # a message not handled, or not stored, is given again after this ...
MAX_DELIVER = 10  # ... at most this many times in all: then it is dropped, and said so
MAX_BYTES = 1 << 30  # what the stream keeps while no worker takes it ...
MAX_AGE_S = 7 * 24 * 3600.0  # ... and for how long ...
MAX_PER_DEVICE = 10_000  # ... and of each device's telemetry, or events: one cannot push out the rest
MAX_MSG_SIZE = 65536  # as Mosquitto's max_packet_size (gateway/broker.py)


class ClusterInbox:
    """Pulls the stream's messages and gives each to handle(topic, payload,
    retain=False), then calls stored() (the gateway's flush) before
    acknowledging them. A message handle() raised for (the database out of
    reach for an event), and every message of a batch whose rows stored()
    says the database took none of, is given again RETRY_S later, at most
    MAX_DELIVER times. servers: the cluster's NATS URLs; user and password:
    the worker's account (its broker account). replicas: the stream's (at
    most the cluster's size); tls: the context for tls:// servers."""

    def __init__(
        self,
        servers: Sequence[str],
        user: str | None,
        password: str | None,
        handle: Callable[[str, bytes, bool], None],
        stored: Callable[[], bool],
        replicas: int = 3,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.servers = list(servers)
        self.tls = tls  # (tls:// servers: the CA to trust; None: the system's)
        self.user = user
        self.password = password
        self.handle = handle
        self.stored = stored
        self.replicas = replicas
        self.taken = 0  # messages handled and acknowledged
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Until cancelled: a cluster out of reach, or a stream that does not
        answer, is tried again (what was not acknowledged is given again)."""
        from nats.errors import Error as NatsError

        from .service import Backoff

        backoff = Backoff()
        while True:
            try:
                await self._run(backoff)
            except (NatsError, OSError) as exc:  # (out of reach, refused, no answer: all connect again)
                delay = backoff.next()
                log.warning("NATS cluster %s: %s; again in %.1fs", ",".join(self.servers), exc, delay)
                await asyncio.sleep(delay)

    async def _run(self, backoff: Any) -> None:
        import nats

        nc = await nats.connect(
            servers=self.servers,
            user=self.user,
            password=self.password,
            name="permabeta-gateway",
            tls=self.tls,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=_logged,
        )
        try:
            js = nc.jetstream(timeout=10)
            await self._set_up(js)
            sub = await js.pull_subscribe_bind(durable=CONSUMER, stream=STREAM)
            self.ready.set()
            backoff.reset()
            while True:
                await self._take(sub)
        finally:
            self.ready.clear()
            with contextlib.suppress(Exception):
                await nc.close()

    async def _set_up(self, js: Any) -> None:
        """The stream and its consumer, made if missing (by whichever worker
        comes first; the others find them)."""
        from nats.js import api
        from nats.js.errors import BadRequestError, NotFoundError

        stream = api.StreamConfig(
            name=STREAM,
            subjects=[subject(t) for t in SHARED],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            max_bytes=MAX_BYTES,
            max_age=MAX_AGE_S,
            max_msgs_per_subject=MAX_PER_DEVICE,
            max_msg_size=MAX_MSG_SIZE,
            discard=api.DiscardPolicy.OLD,
        )
        consumer = api.ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_deliver=MAX_DELIVER,
            max_ack_pending=-1,
            max_waiting=512,
        )
        try:
            await js.stream_info(STREAM)
        except NotFoundError:
            try:
                await js.add_stream(stream)
            except BadRequestError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:  # (made meanwhile by another worker: found)
                    raise
        await js.add_consumer(STREAM, consumer)

    async def _take(self, sub: Any) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        try:
            msgs = await sub.fetch(BATCH, timeout=1.0)
        except (NatsTimeout, TimeoutError):
            return
        failed = []
        for m in msgs:
            try:
                self.handle(topic(m.subject), m.data, False)
            except Exception:  # (told, and given again)
                log.exception("failed to handle a message on %s", m.subject[:120])
                failed.append(m)
        if not self.stored():
            failed = msgs  # (the database took none of their rows: all again)
        for m in msgs:
            if m not in failed:
                await m.ack()
            elif m.metadata.num_delivered >= MAX_DELIVER:
                log.error("dropped a message on %s: not handled in %d tries", m.subject[:120], MAX_DELIVER)
                await m.ack()
            else:
                await m.nak(delay=RETRY_S)
        self.taken += len(msgs) - len(failed)


async def _logged(exc: Exception) -> None:
    log.warning("NATS cluster: %s", exc)
