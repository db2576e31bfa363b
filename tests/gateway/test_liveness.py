"""Online and offline, from the last will and from silence."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.broker import BrokerUrl
from gateway.service import Gateway
from gateway.store import Store

from .test_ingest import hello


def state(dev: str, s: str, reason: str | None = None) -> bytes:
    msg = {"v": 1, "dev": dev, "state": s}
    if reason:
        msg["reason"] = reason
    return json.dumps(msg).encode()


async def test_will_and_silence(tmp_path: Path) -> None:
    with Store(tmp_path / "gw.db") as store:
        gw = Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)
        seen: list[tuple[str, str]] = []
        gw.listeners.append(lambda kind, dev, msg: seen.append((kind, dev)))
        # a state may come before its hello; it is applied when the hello arrives
        gw.handle("pb/th-1/state", state("th-1", "online"), True)
        gw.handle("pb/th-1/hello", hello("th-1", keepalive=10, telemetry_s=2), True)
        d = store.device("th-1")
        assert d is not None and d.online
        # the last will
        gw.handle("pb/th-1/state", state("th-1", "offline", "lost"), False)
        d = store.device("th-1")
        assert d is not None and not d.online and d.state_reason == "lost"
        gw.handle("pb/th-1/state", state("th-1", "online"), False)
        assert gw.is_online("th-1")
        # silence past max(3 x telemetry, 1.5 x keepalive) + 2 s = 17 s means gone
        last = store.device("th-1").last_seen  # type: ignore[union-attr]
        gw.check_liveness(last + 16)
        assert gw.is_online("th-1")
        gw.check_liveness(last + 18)
        d = store.device("th-1")
        assert d is not None and not d.online and d.state_reason == "silent"
        assert ("offline", "th-1") in seen
