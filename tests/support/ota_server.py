"""The OTA side of a gateway, played by a test over a real broker (docs/ota.md,
section 3), so that it can misbehave on purpose: an attacker who controls
the gateway or the network. It offers one release to one device and serves
its bytes, through a hook that may tamper with each answer."""

from __future__ import annotations

import hashlib
import json
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from firmware.pb.peer import ota_transfer as otaproto
from gateway.updates import offer_message

from .mosquitto import Mosquitto

# tamper(obj, offset, data) -> the chunks to send instead (each (offset, bytes)), or None as asked
Tamper = Callable[[str, int, bytes], "list[tuple[int, bytes]] | None"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# the freshness envelope of an offer: as bytes, or made for (device id, update id)
Freshness = bytes | Callable[[str, str], bytes]


@dataclass
class Offer:
    manifest: bytes
    blobs: dict[str, bytes]  # zsha256 -> compressed bytes
    freshness: Freshness
    uid: str = field(default_factory=lambda: secrets.token_hex(6))
    objects: dict[str, bytes] = field(default_factory=dict)
    idle: bool = False  # the offer asks the device to install while its features are idle

    def __post_init__(self) -> None:
        self.objects = {"manifest": self.manifest, **self.blobs}


class OtaServer:
    __test__ = False

    def __init__(self, broker: Mosquitto, dev: str, offer: Offer, tamper: Tamper | None = None) -> None:
        self.dev = dev
        self.offer_ = offer
        self.tamper = tamper
        self.statuses: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.served: dict[str, int] = {}
        self.requests = 0  # requests for a stream (acknowledgements not counted)
        self.acks = 0
        self._stream: otaproto.Stream | None = None
        self._ready = threading.Event()
        self.c = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"ota-srv-{dev}", protocol=paho.MQTTv311
        )
        self.c.username_pw_set(*broker.operator())
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self._online = threading.Event()
        self.c.connect("127.0.0.1", broker.port, keepalive=30)
        self.c.loop_start()
        if not self._ready.wait(5):
            raise AssertionError("OTA server did not connect")
        time.sleep(0.2)

    def _on_connect(self, *args: Any) -> None:
        # at every connect: a reconnect (clean session) starts with none
        for kind, qos in (("ota/req", 0), ("ota/status", 1), ("state", 1)):
            self.c.subscribe(f"pb/{self.dev}/{kind}", qos)
        self._ready.set()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def offer(self, online_s: float = 30) -> None:
        """Send the offer once the device is online: its (retained) online
        state comes after its subscriptions, so the offer cannot be missed."""
        if not self._online.wait(online_s):
            raise AssertionError(f"{self.dev} did not come online within {online_s}s")
        o = self.offer_
        fresh = o.freshness(self.dev, o.uid) if callable(o.freshness) else o.freshness
        msg = offer_message(o.uid, sha256(o.manifest), len(o.manifest), fresh, o.idle)
        self.c.publish(f"pb/{self.dev}/ota/offer", msg, qos=1).wait_for_publish(5)

    def send_time(self, statement: bytes, online_s: float = 30) -> None:
        """Publish a time statement (docs/ota.md 2.3) on the device's
        ota/time once it is online, as the gateway does at its hello."""
        if not self._online.wait(online_s):
            raise AssertionError(f"{self.dev} did not come online within {online_s}s")
        self.c.publish(f"pb/{self.dev}/ota/time", statement, qos=1).wait_for_publish(5)

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        if m.topic == f"pb/{self.dev}/state":
            if json.loads(m.payload).get("state") == "online":
                self._online.set()
            else:
                self._online.clear()
            return
        if m.topic.endswith("/ota/status"):
            st = json.loads(m.payload)
            if st.get("id") == self.offer_.uid or st.get("state") in ("failed", "rolled_back", "safe_mode"):
                self.seen.append(st)
                self.statuses.put(st)
            return
        req = otaproto.check_request(json.loads(m.payload))
        o = self.offer_
        if "ack" in req:
            self.acks += 1
            st = self._stream
            if st is not None and st.s == req["s"] and st.ack(req["ack"], req["win"]):
                self._serve(st)
            return
        self.requests += 1
        objs = []
        for name, off, n in req["objs"]:
            key = name if name == "manifest" else next((k for k in o.blobs if k.startswith(name)), None)
            data = o.objects.get(key) if key is not None else None
            tag = bytes.fromhex(sha256(o.manifest) if name == "manifest" else name)[:8]
            if key is None or data is None or off + n > len(data):
                self._stream = None
                self._send(otaproto.encode_chunk(req["s"], 0, 0, 0, b"no such object", tag, error=True))
                return
            objs.append([key, tag, off, off + n])
        self._stream = otaproto.Stream(req["s"], objs, req["chunk"], req["win"])
        self._serve(self._stream)

    def _serve(self, st: otaproto.Stream) -> None:
        """Send what the stream's window allows, each chunk through tamper."""
        for idx, key, tag, off, n, pos, last in st.chunks():
            data = self.offer_.objects[key]
            piece = data[off : off + n]
            chunks = self.tamper(key, off, piece) if self.tamper else None
            for o, d in chunks if chunks is not None else [(off, piece)]:
                self.served[key] = self.served.get(key, 0) + len(d)
                self._send(otaproto.encode_chunk(st.s, idx, pos + o - off, o, d, tag, last=last))

    def _send(self, chunk: bytes) -> None:
        self.c.publish(f"pb/{self.dev}/ota/chunk", chunk, qos=0)

    def wait_for(self, states: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
        """The first status in one of states (others are collected on the way)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no status in {states} within {timeout}s; saw {self.seen}")
            try:
                st = self.statuses.get(timeout=left)
            except queue.Empty:
                continue
            if st["state"] in states:
                return st
