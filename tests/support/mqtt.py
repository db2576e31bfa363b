"""A plain MQTT client for tests (paho), to publish and listen as anyone."""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

import paho.mqtt.client as paho


class Listening(Protocol):
    """A broker on loopback (tests/support/mosquitto.py's, or any run from a config)."""

    port: int


class TestClient:
    """Connects as a given user; collects what it receives."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        broker: Listening,
        user: str | None,
        password: str | None,
        client_id: str = "",
        clean_session: bool = True,
    ) -> None:
        self.received: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._connected = threading.Event()
        self.rc: Any = None
        self._subs: dict[str, int] = {}  # taken again at a reconnect (a clean session has none)
        self.c = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=clean_session,
        )
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.received.put((m.topic, m.payload, m.retain))
        self.c.connect("127.0.0.1", broker.port, keepalive=30)
        self.c.loop_start()
        if not self._connected.wait(5):
            raise AssertionError("test client did not connect")
        if self.rc != 0:
            raise AssertionError(f"test client refused: {self.rc}")

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.rc = rc.value if hasattr(rc, "value") else rc
        for topic, qos in list(self._subs.items()):
            c.subscribe(topic, qos)
        self._connected.set()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subs[topic] = qos
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos)
        done.wait(5)

    def messages(self, timeout: float = 0.5) -> list[tuple[str, bytes, bool]]:
        out = []
        try:
            out.append(self.received.get(timeout=timeout))
            while True:
                out.append(self.received.get_nowait())
        except queue.Empty:
            return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
