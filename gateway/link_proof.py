"""The gateway's end of the proof of identity on a serial or Bluetooth LE line
(docs/protocol.md 17; the device's end is firmware/pb/net/proof.py). No
sockets, no clock: a carrier hands each `auth` message of its line to
`LineProof.on_auth` and sends the answer back; the line speaks for a device
only once `proven` names it. The link keys come from the registry: a device
registered at provisioning (gateway/registry.py), not revoked."""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from typing import Any

from firmware.pb.ids import valid_id
from firmware.pb.net.proof import mac

from .registry import Registry
from .store import Store

KIND = "auth"  # the messages' kind on a line (their topic's tail on MQTT has none)


class ProofRefused(Exception):
    """Why a device may not prove itself: code and message, as answered."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


KeyOf = Callable[[str], bytes]  # a device's link key, or ProofRefused


def registry_keys(store: Store) -> KeyOf:
    """The link keys of the devices provisioned and not revoked."""

    def key_of(dev: str) -> bytes:
        r = Registry(store).get(dev)
        if r is None:
            raise ProofRefused("unknown_device", f"{dev} was never provisioned for this gateway")
        if r.revoked is not None:
            raise ProofRefused("revoked", f"{dev} is revoked")
        if r.link_key is None:
            raise ProofRefused(
                "no_link_key", f"{dev} was provisioned without a link key: provision it again to use a line"
            )
        return bytes.fromhex(r.link_key)

    return key_of


class LineProof:
    """One line's proof: `on_auth(payload)` gives the answer to send (or
    None) and, once, the device id just proven; `proven` holds it after.
    A new first message starts the proof again (the device reset, or a
    stranger took the line): the line speaks for nobody until it ends."""

    def __init__(self, key_of: KeyOf) -> None:
        self.key_of = key_of
        self.proven: str | None = None
        self.refusals = 0
        self.last_refusal: str | None = None
        self._pending: tuple[str, str, str, bytes] | None = None  # (dev, its nonce, ours, key)

    def on_auth(self, payload: bytes) -> tuple[bytes | None, str | None]:
        try:
            msg = json.loads(payload)
        except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
            return self._refuse("bad_message", "a proof message that is not JSON (or nested too deep)")
        if not isinstance(msg, dict) or msg.get("v") != 1:
            return self._refuse("bad_message", 'a proof message must be a JSON object with "v": 1')
        if "dev" in msg:
            return self._challenge(msg)
        if "mac" in msg:
            return self._check(msg)
        return self._refuse("bad_message", 'a proof message carries "dev" and "n", or "mac"')

    def _challenge(self, msg: dict[str, Any]) -> tuple[bytes | None, str | None]:
        self.proven = None
        self._pending = None
        dev, dn = msg.get("dev"), msg.get("n")
        if not isinstance(dev, str) or not valid_id(dev):
            return self._refuse("bad_message", "the device id is not one (docs/protocol.md 2.1)")
        if not isinstance(dn, str) or not 16 <= len(dn) <= 64:
            return self._refuse("bad_message", "the device's nonce must be 16-64 characters")
        try:
            key = self.key_of(dev)
        except ProofRefused as exc:
            return self._refuse(exc.code, str(exc))
        gn = secrets.token_hex(16)
        self._pending = (dev, dn, gn, key)
        answer = {"v": 1, "n": gn, "mac": mac(key, f"pb1 gateway {dn} {gn} {dev}")}
        return json.dumps(answer).encode(), None

    def _check(self, msg: dict[str, Any]) -> tuple[bytes | None, str | None]:
        pending, self._pending = self._pending, None
        if pending is None:
            return self._refuse("unasked", "a proof with no challenge under way")
        dev, dn, gn, key = pending
        got = msg.get("mac")
        if not isinstance(got, str) or not hmac.compare_digest(
            got.encode(), mac(key, f"pb1 device {gn} {dn} {dev}").encode()
        ):
            return self._refuse("bad_proof", f"the line did not prove it is {dev}")
        self.proven = dev
        return json.dumps({"v": 1, "ok": True}).encode(), dev

    def _refuse(self, code: str, message: str) -> tuple[bytes | None, str | None]:
        self.refusals += 1
        self.last_refusal = f"{code}: {message}"
        return json.dumps({"v": 1, "error": code, "message": message}).encode(), None
