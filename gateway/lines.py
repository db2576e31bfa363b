"""What the gateway does with a line to one device, whatever carries it: a
serial port (gateway/serial_line.py) or a Bluetooth LE connection. A line
carries the frames of docs/protocol.md 15; it speaks for nobody until the
device at its end has proven who it is (17, gateway/link_proof.py), then its
messages are the device's, as if they came from the broker on
pb/<device>/<kind>, and what the gateway publishes to that device goes down
this line instead of to the broker (Gateway.publish)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from firmware.pb.net.frames import encode

from .broker import DEVICE_READS
from .link_proof import KIND, KeyOf, LineProof

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("permabeta.gateway.lines")

UNPROVEN = "unproven"  # reject reason: a message on a line whose device has not proven itself
REFUSED = "proof_refused"  # reject reason: a proof of identity the gateway refused
WRONG_WAY = "wrong_direction"  # reject reason: a kind only the gateway sends, from a device's line
# what only the gateway sends (docs/protocol.md 1.1, 11; a device's ACL reads them): from a broker
# it is the gateway's own publish echoed, and ignored; a line echoes nothing: it is the device's doing
GATEWAY_KINDS = frozenset(DEVICE_READS)
_PROVE_FIRST = b'{"v": 1, "error": "unproven", "message": "prove who you are first (docs/protocol.md 17)"}'
# after this many proofs refused in a row, a refusal is answered, logged and counted once a second
# at most, those between passed over (a flood of bad proof messages costs no answer, log line or
# write); a proof that passes is answered as ever, and starts the count over
QUIET_AFTER = 5
QUIET_S = 1.0


class Line(Protocol):
    """One carrier's link to one device: its name (serial:/dev/ttyUSB0,
    ble:AA:BB:CC:DD:EE:FF) and how a frame goes down it (queued, never
    blocking the gateway; False when it was dropped). The frame's kind comes
    with it: a carrier may choose its way by it (Bluetooth LE's control or
    bulk characteristic)."""

    name: str

    def send_frame(self, kind: str, frame: bytes) -> bool: ...

    def hang_up(self, reason: str) -> None:
        """End the connection where the carrier can (a Bluetooth link); a
        serial port stays open, its line speaking for nobody."""


class LineSession:
    """The messages of one line's session (from its opening to its loss):
    the proof first, then the device's messages handed to the gateway."""

    def __init__(self, gw: Gateway, line: Line, key_of: KeyOf | None = None) -> None:
        from .link_proof import registry_keys

        self.gw = gw
        self.line = line
        self.proof = LineProof(key_of or registry_keys(gw.store))
        self.device: str | None = None
        self.unproven = 0  # messages dropped before a proof
        self._asked = float("-inf")  # when the device was last told to prove itself
        self.refused_in_row = 0  # proofs refused since the last one passed
        self.passed_over = 0  # refusals neither answered nor counted (QUIET_AFTER)
        self._told = float("-inf")  # (monotonic) when a refusal was last answered

    def on_frame(self, kind: str, payload: bytes) -> None:
        """One message from the line; never raises for what the line sent."""
        if kind == KIND:
            refused = self.proof.refusals
            reply, dev = self.proof.on_auth(payload)
            if self.proof.proven is None and self.device is not None:
                self._let_go("the device started a new proof")
            if self.proof.refusals > refused:
                self.refused_in_row += 1
                now = time.monotonic()
                if self.refused_in_row > QUIET_AFTER and now - self._told < QUIET_S:
                    self.passed_over += 1  # (no answer, log line or write)
                    return
                self._told = now
                if self.refused_in_row <= QUIET_AFTER:  # (gw.reject logs the first and each hundredth)
                    log.warning("%s: proof refused: %s", self.line.name, self.proof.last_refusal)
                self.gw.reject(
                    f"{self.line.name}/{KIND}", REFUSED, self.proof.last_refusal or "", self.gw.clock.now()
                )
            if reply is not None:
                self.send(KIND, reply)
            if dev is not None:
                self.refused_in_row = 0
                self.device = dev
                log.info("%s: %s proved itself", self.line.name, dev)
                self.gw.attach(dev, self)
            return
        if self.device is None:
            self.unproven += 1
            now = self.gw.clock.now()
            if self.unproven == 1 or self.unproven % 100 == 0:
                self.gw.reject(
                    f"{self.line.name}/{kind[:40]}",
                    UNPROVEN,
                    f"a {kind[:40]!r} message before the device proved who it is",
                    now,
                )
            # a device that believes itself proven (this gateway restarted, or a new
            # connection it has not seen) is told to prove itself again: once a second
            if now - self._asked >= 1.0:
                self._asked = now
                self.send(KIND, _PROVE_FIRST)
            return
        if kind in GATEWAY_KINDS:
            self.gw.reject(
                f"{self.line.name}/{kind}",
                WRONG_WAY,
                f"{self.device} sent {kind!r}, which only the gateway sends",
                self.gw.clock.now(),
            )
            return
        self.gw.handle(f"pb/{self.device}/{kind}", payload, False, carrier=self.line.name)

    def send(self, kind: str, payload: bytes) -> bool:
        """Frame a message and send it down the line (False: dropped).
        Raises ProtocolError for a kind or payload no frame can carry."""
        return self.line.send_frame(kind, bytes(encode(kind, payload)))

    def drop(self, reason: str) -> None:
        """The gateway lets the device go (revoked, or proven on another
        line): the line speaks for nobody until a new proof."""
        log.info("%s: %s let go: %s", self.line.name, self.device, reason)
        self.device = None
        self.proof = LineProof(self.proof.key_of)
        self.line.hang_up(reason)

    def closed(self, reason: str) -> None:
        """The line is gone (unplugged, hung up, dropped): its device, if it
        had proven itself, is offline until it comes back."""
        self._let_go(reason)

    def _let_go(self, reason: str) -> None:
        dev, self.device = self.device, None
        if dev is not None:
            log.info("%s: %s gone: %s", self.line.name, dev, reason)
            self.gw.detach(dev, self)
