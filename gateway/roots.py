"""Roots over the air (docs/ota.md 1.1 and 5.6): which root a device needs
next, from what its hello says, and when to send it again.

A device states in its hello the protocol level it speaks (`proto`) and the
version of the root it trusts (`ota.root`). One of protocol 2 or above on a
root older than the gateway's takes the next root of the chain (root.<N>.json
of the keys folder), one at a time: it checks it at its next boot and says
hello with the new version, and the gateway sends the one after, until it
trusts the gateway's root. Only then is an update offered to it. A device of
protocol 1 takes no roots: it is served as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# a root is not sent again to a device within this long (a hello and its repeat)
RESEND_S = 5.0
# while a device online stays on an older root, its next root is sent again this often
RETRY_S = 60.0
# the protocol level (firmware/pb/peer/protocol.py PROTOCOLS) from which a
# device takes roots over the air (ota/root); level 1 takes updates only
ROOTS_FROM = 2


def protocol(hello: dict[str, Any] | None) -> int:
    """The protocol level a hello states; 1 when it states none."""
    p = (hello or {}).get("proto", 1)
    return p if isinstance(p, int) and not isinstance(p, bool) else 1


def trusted(hello: dict[str, Any] | None) -> int | None:
    """The version of the root the device says it trusts, None when it
    does not say (protocol 1) or says something else than a version."""
    ota = (hello or {}).get("ota")
    v = ota.get("root") if isinstance(ota, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


@dataclass
class RootPlan:
    """The roots this gateway can send (version -> bytes) and what it sent."""

    chain: dict[int, bytes]
    sent: dict[str, tuple[int, float]] = field(default_factory=dict)  # device -> (version, when)
    refused: dict[str, int] = field(default_factory=dict)  # device -> version it refused

    @property
    def current(self) -> int:
        return max(self.chain) if self.chain else 0

    def behind(self, hello: dict[str, Any] | None) -> bool:
        """True if the device takes roots and trusts an older one than ours
        (one that trusts none, 0, cannot check a root and is not behind)."""
        v = trusted(hello)
        return protocol(hello) >= ROOTS_FROM and v is not None and 0 < v < self.current

    def next_root(
        self, dev: str, hello: dict[str, Any] | None, now: float, gap: float = RESEND_S
    ) -> tuple[int, bytes] | str | None:
        """(version, bytes) to send dev now; a reason (str) when it is
        behind and nothing can be sent; None when nothing is due (nothing
        behind, or the same root sent less than gap seconds ago)."""
        if not self.behind(hello):
            return None
        want = (trusted(hello) or 0) + 1
        if self.refused.get(dev) == want:
            return f"it refused root version {want}"
        data = self.chain.get(want)
        if data is None:
            return f"the keys folder lacks root.{want}.json (or it does not follow root.{want - 1}.json)"
        last = self.sent.get(dev)
        if last is not None and last[0] == want and now - last[1] < gap:
            return None
        self.sent[dev] = (want, now)
        return want, data

    def on_refused(self, dev: str) -> int | None:
        """dev reported a root refused: the version it was sent, which it is
        not sent again (until the keys change)."""
        last = self.sent.pop(dev, None)
        if last is None:
            return None
        self.refused[dev] = last[0]
        return last[0]
