"""The device's side of an update transfer (docs/ota.md 3), played by a test
over a real broker with the device's own credentials (paho), and the
gateway process started with keys.

OtaDevice speaks the wire protocol only: it announces itself (hello, state),
takes offers, asks for bytes chunk by chunk (version 1) or as a windowed
stream (version 2, with the device's own Receiver), checks what it gets,
and reports statuses. It does not install anything; the real device agent is
firmware/pb/ota/download.py.
"""

from __future__ import annotations

import hashlib
import json
import queue
import secrets
import time
from collections.abc import Callable
from typing import Any

from firmware.pb.ota import trust
from firmware.pb.peer import ota_transfer as otaproto
from firmware.pb.peer.ota_transfer import FLAG_ERROR, FLAG_LAST
from ota.envelope import verify_signature

from .mosquitto import Mosquitto
from .mqtt import TestClient
from .processes import GatewayProcess

Message = tuple[str, bytes, bool]


class ErrorChunk(AssertionError):
    """The gateway answered a request with an error chunk; str() is its reason."""


class OtaDevice:
    """A device as the update protocol sees it."""

    def __init__(self, broker: Mosquitto, dev_id: str, password: str, chunk: int = 700) -> None:
        self.id = dev_id
        self.chunk = chunk
        self.seq = 0
        self.client = TestClient(broker, dev_id, password, client_id=f"{dev_id}-ota-{secrets.token_hex(2)}")
        self.client.subscribe(f"pb/{dev_id}/ota/offer", qos=1)
        self.client.subscribe(f"pb/{dev_id}/ota/chunk", qos=0)
        self.client.subscribe(f"pb/{dev_id}/ota/root", qos=1)
        self._backlog: list[Message] = []

    def close(self) -> None:
        self.client.close()

    def topic(self, kind: str) -> str:
        return f"pb/{self.id}/{kind}"

    # ---- telling the gateway about itself ---------------------------------------

    def hello(
        self,
        model: str = "thermostat",
        counter: int = 0,
        manifest: str | None = None,
        root: int | None = None,
        online: bool = True,
    ) -> None:
        """A retained hello (with what it runs) and state online (a connect's;
        online False: the hello alone, as a device says it again); with root,
        a hello of protocol level 2 naming the root it trusts."""
        msg: dict[str, Any] = {
            "v": 1,
            "dev": self.id,
            "model": model,
            "board": f"{model}-v1",
            "runtime": "0.1.0",
            "platform": "test",
            "api": 1,
            "features": {},
            "caps": ["relay", "temperature"],
            "heap_free": 50000,
            "reset_cause": "power_on",
            "boot_count": 1,
            "keepalive": 30,
            "telemetry_s": 10,
            "ota": {"counter": counter, "manifest": manifest, "state": "committed" if counter else "factory"},
        }
        if root is not None:
            msg["proto"] = 2
            msg["ota"]["root"] = root
        self.client.publish(self.topic("hello"), json.dumps(msg), qos=1, retain=True)
        if online:
            state = {"v": 1, "dev": self.id, "state": "online"}
            self.client.publish(self.topic("state"), json.dumps(state), qos=1, retain=True)

    def status(self, uid: str, state: str, **fields: Any) -> None:
        msg = {"v": 1, "dev": self.id, "id": uid, "state": state, "ts": time.time(), **fields}
        otaproto.check_status(msg)
        self.client.publish(self.topic("ota/status"), json.dumps(msg), qos=1, retain=True)

    # ---- receiving -----------------------------------------------------------------

    def _take(self, want: Callable[[Message], bool], timeout: float) -> Message | None:
        for i, m in enumerate(self._backlog):
            if want(m):
                return self._backlog.pop(i)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                m = self.client.received.get(timeout=left)
            except queue.Empty:
                return None
            if want(m):
                return m
            if len(self._backlog) < 1000:
                self._backlog.append(m)
        return None

    def offer(self, timeout: float = 10) -> dict[str, Any]:
        """The next offer (or cancel), validated as the device agent does."""
        m = self._take(lambda m: m[0] == self.topic("ota/offer"), timeout)
        if m is None:
            raise AssertionError(f"{self.id} got no offer within {timeout}s")
        return dict(otaproto.check_offer(json.loads(m[1])))

    def root(self, timeout: float = 10) -> bytes | None:
        """The next root the gateway sends (None if none comes within timeout)."""
        m = self._take(lambda m: m[0] == self.topic("ota/root"), timeout)
        return None if m is None else bytes(m[1])

    def chunks_pending(self) -> int:
        return sum(1 for m in self._backlog if m[0] == self.topic("ota/chunk")) + self.client.received.qsize()

    # ---- pulling bytes ---------------------------------------------------------------

    def request(
        self, uid: str, obj: str, off: int, length: int, timeout: float = 2.0, dev: str | None = None
    ) -> tuple[int, int, bytes, bytes]:
        """Ask for bytes; (flags, offset, tag, data) of the chunk answering it.
        Asks again once if no answer comes (chunks are QoS 0)."""
        self.seq += 1
        seq = self.seq
        msg = {"v": 1, "dev": dev or self.id, "id": uid, "obj": obj, "off": off, "len": length, "seq": seq}

        def answers(m: Message) -> bool:
            if m[0] != self.topic("ota/chunk"):
                return False
            return bool(otaproto.decode_chunk_v1(m[1])[1] == seq)

        for _ in range(2):
            self.client.publish(self.topic("ota/req"), json.dumps(msg), qos=0)
            m = self._take(answers, timeout)
            if m is not None:
                flags, _, offset, tag, data = otaproto.decode_chunk_v1(m[1])
                return flags, offset, bytes(tag), bytes(data)
        raise AssertionError(f"no chunk answered request {msg}")

    def fetch(self, uid: str, obj: str, size: int, sha256: str) -> bytes:
        """A whole object, chunk by chunk, checked as the device agent checks it:
        tag, offset, length, the last flag, then the SHA-256 of the whole.
        Raises ErrorChunk with the gateway's reason."""
        tag = bytes.fromhex(sha256)[:8]
        data = b""
        while len(data) < size:
            n = min(self.chunk, size - len(data))
            flags, off, got_tag, part = self.request(uid, obj, len(data), n)
            if flags & FLAG_ERROR:
                raise ErrorChunk(part.decode("utf-8"))
            assert (got_tag, off, len(part)) == (tag, len(data), n), "a chunk that does not match its request"
            data += part
            assert bool(flags & FLAG_LAST) == (len(data) == size), "the last flag is wrong"
        assert hashlib.sha256(data).hexdigest() == sha256, f"{obj[:16]} is not what was offered"
        return data

    def send(self, payload: bytes | str) -> None:
        """Anything, as a request (QoS 0, as the device sends them)."""
        self.client.publish(self.topic("ota/req"), payload, qos=0)

    def stream(
        self,
        uid: str,
        objs: list[tuple[str, int, str]],
        win: int = 8,
        chunk: int = 4096,
        timeout: float = 2.0,
        tries: int = 8,
    ) -> list[bytes]:
        """Whole objects, each (obj, size, sha256) as fetch() takes them, over
        one version 2 stream (docs/ota.md 3.2, 3.3) as the device takes
        it: firmware/pb/ota/transfer.py's Receiver, acknowledging every half
        window, asking again from what it holds after a loss or a silence.
        Each object's SHA-256 is checked. Raises ErrorChunk with the
        gateway's reason, AssertionError after tries silences in a row."""
        rx = otaproto.Receiver(self.id, uid, chunk, win)
        wanted = [[o if o == "manifest" else o[:16], bytes.fromhex(h)[:8], 0, n] for o, n, h in objs]
        got = [bytearray() for _ in objs]
        msg: dict[str, Any] | None = rx.request(wanted)
        silences = 0
        while True:
            if msg is not None:
                self.send(json.dumps(msg))
                msg = None
            if rx.cur >= len(objs):
                break
            m = self._take(lambda m: m[0] == self.topic("ota/chunk"), timeout)
            if m is None:
                silences += 1
                assert silences < tries, f"no chunk of stream {rx.seq} after {tries} requests"
                msg = rx.request()
                continue
            what = rx.feed(m[1])
            if isinstance(what, str):
                raise ErrorChunk(what)
            if what is True:
                msg = rx.request()
            elif what is not None:
                j, off, data = what
                assert off == len(got[j]), "a chunk kept out of order"
                got[j] += bytes(data)
                silences = 0
                msg = rx.ack()
        out = [bytes(b) for b in got]
        for (obj, _, sha256), data in zip(objs, out, strict=True):
            assert hashlib.sha256(data).hexdigest() == sha256, f"{obj[:16]} is not what was offered"
        return out


def accept_offer(
    offer: dict[str, Any], root: bytes, model: str, counter: int, device: str, last_version: int = 0
) -> dict[str, Any]:
    """The offer's freshness statement, checked as device does: signed by
    the gateway role of root, for this release, offered to device as the
    offer's update, not expired, not older than last_version. Raises TrustError."""
    trusted = trust.load_root(root, verify_signature)
    raw, body, sigs = trust.open_envelope(json.dumps(offer["freshness"]).encode())
    trust.check_role(trusted, "gateway", raw, sigs, verify_signature)
    trust.check_freshness(
        body, model, offer["manifest"], counter, time.time(), last_version, device, offer["id"]
    )
    return dict(body)


def check_manifest(data: bytes, root: bytes) -> dict[str, Any]:
    """The manifest's body, if release-role signatures under root vouch for it."""
    trusted = trust.load_root(root, verify_signature)
    raw, body, sigs = trust.open_envelope(data)
    trust.check_role(trusted, "release", raw, sigs, verify_signature)
    return dict(trust.check_manifest(body))


# `permabeta gateway run --keys DIR ...`: the plain process, with its options
KeyedGatewayProcess = GatewayProcess
