"""What a gateway does with a device's line (gateway/lines.py,
docs/protocol.md 17): nothing before the proof, then the proven device's
messages only, as the broker's would be checked; what is sent to the device
goes down its line; a revoked device is let go. The gateway here is the real
one on a real SQLite store, its broker never reached; the line is where the
frames it sends are kept (tests/system/test_serial_device.py runs a real
pty)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware.pb.net.frames import Decoder
from firmware.pb.net.proof import Prover, link_key
from gateway.broker import BrokerUrl
from gateway.lines import QUIET_AFTER, QUIET_S, LineSession
from gateway.registry import Registry
from gateway.service import Gateway
from gateway.store import Store

from ..support import messages

HASH = "$7$101$" + "A" * 16 + "$" + "B" * 86 + "=="


class Kept:
    """A line whose frames sent are decoded and kept."""

    name = "serial:/dev/test"

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.hung_up: list[str] = []
        self._dec = Decoder()

    def send_frame(self, kind: str, frame: bytes) -> bool:
        self.sent += self._dec.feed(frame)
        return True

    def hang_up(self, reason: str) -> None:
        self.hung_up.append(reason)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with Store(tmp_path / "gw.db") as store:
        for dev in ("th-1", "th-2"):
            Registry(store).register(
                dev, "thermostat", "thermostat-v1", HASH, 1.0, link_key(dev, "pw-" + dev).hex()
            )
        yield Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)


def hello(dev: str) -> bytes:
    return json.dumps(messages.hello(dev)).encode()


def proven(gw: Gateway, line: Kept, dev: str = "th-1", password: str | None = None) -> LineSession:
    session = LineSession(gw, line)
    device = Prover(dev, link_key(dev, password or "pw-" + dev))
    session.on_frame("auth", device.start().encode())
    reply, _ = device.on_auth(line.sent[-1][1])
    if reply is not None:
        session.on_frame("auth", reply.encode())
    return session


def test_nothing_is_taken_from_a_line_before_its_proof(gw: Gateway) -> None:
    line = Kept()
    session = LineSession(gw, line)
    session.on_frame("hello", hello("th-1"))
    session.on_frame("telemetry", b"{}")
    assert gw.store.device("th-1") is None and gw.rejects == {"unproven": 1}
    # and the device is told to prove itself first (once a second: a flood is not echoed)
    assert [(k, json.loads(p)["error"]) for k, p in line.sent] == [("auth", "unproven")]


def test_a_proven_device_is_listed_with_its_carrier(gw: Gateway) -> None:
    line = Kept()
    session = proven(gw, line)
    assert line.sent[-1] == ("auth", b'{"v": 1, "ok": true}') and gw.lines == {"th-1": session}
    session.on_frame("hello", hello("th-1"))
    d = gw.store.device("th-1")
    assert d is not None and d.carrier == "serial:/dev/test"


def test_a_proven_device_cannot_speak_for_another(gw: Gateway) -> None:
    session = proven(gw, Kept())
    session.on_frame("hello", hello("th-2"))  # its own line, another's id inside
    session.on_frame("../th-2/hello", hello("th-2"))
    assert gw.store.device("th-2") is None
    assert gw.counters["accepted"] == 0 and gw.counters["rejected"] == 2


def test_a_device_with_anothers_key_is_refused(gw: Gateway) -> None:
    line = Kept()
    proven(gw, line, "th-1", password="pw-th-2")
    assert gw.lines == {} and gw.rejects == {}  # (its own check of the gateway failed: it said nothing)
    # and one that answers anyway, with a MAC of its own making
    session = LineSession(gw, line)
    session.on_frame("auth", json.dumps({"v": 1, "dev": "th-1", "n": "0" * 32}).encode())
    session.on_frame("auth", json.dumps({"v": 1, "mac": "0" * 64}).encode())
    assert gw.lines == {} and gw.rejects == {"proof_refused": 1}
    assert json.loads(line.sent[-1][1])["error"] == "bad_proof"


async def test_what_is_sent_to_the_device_goes_down_its_line(gw: Gateway) -> None:
    line = Kept()
    proven(gw, line)
    await gw.publish("pb/th-1/ota/time", b'{"v": 1}', 1, False)
    assert line.sent[-1] == ("ota/time", b'{"v": 1}')


async def test_a_revoked_device_is_let_go_and_refused_at_its_next_proof(gw: Gateway) -> None:
    line = Kept()
    session = proven(gw, line)
    Registry(gw.store).revoke("th-1", 2.0)
    gw.revoked("th-1", True)
    assert gw.lines == {} and line.hung_up == ["th-1 is revoked"] and session.device is None
    proven(gw, line)
    assert gw.lines == {} and json.loads(line.sent[-1][1])["error"] == "revoked"


def test_a_lost_line_marks_its_device_offline(gw: Gateway) -> None:
    session = proven(gw, Kept())
    session.on_frame("hello", hello("th-1"))
    session.on_frame("state", json.dumps({"v": 1, "dev": "th-1", "state": "online", "ts": 1.0}).encode())
    assert gw.is_online("th-1")
    session.closed("the port hung up")
    d = gw.store.device("th-1")
    assert not gw.is_online("th-1") and d is not None and d.state_reason == "lost" and gw.lines == {}


@pytest.mark.parametrize("kind", ["#", "+", "cmd", "ota/chunk", "ota/offer", "hello/x", "a" * 32])
def test_a_proven_device_sending_an_odd_kind_is_refused_and_the_line_goes_on(gw: Gateway, kind: str) -> None:
    """A kind no device sends (a wildcard, one too deep, or one of the
    gateway's own, which a line does not echo): rejected, nothing acted on
    or stored; the device's next hello is taken."""
    session = proven(gw, Kept())
    session.on_frame(kind, b'{"v": 1, "dev": "th-1"}')
    assert gw.counters["rejected"] == 1 and gw.counters["ignored"] == gw.counters["accepted"] == 0
    if kind in ("cmd", "ota/chunk", "ota/offer"):
        assert gw.rejects == {"wrong_direction": 1}
    session.on_frame("hello", hello("th-1"))
    assert gw.counters["accepted"] == 1 and gw.store.device("th-1") is not None


def test_a_flood_of_refused_proofs_is_answered_once_a_second_and_a_good_proof_still_passes(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Each refused proof was answered, logged as a warning and counted in
    the database: 47,000 in 2 s from one serial line. After QUIET_AFTER in
    a row, once a second at most; the proof of the device whose key is put
    right then passes (it tries again a second or more apart)."""
    line = Kept()
    session = LineSession(gw, line)
    bad = json.dumps({"v": 1, "mac": "0" * 64}).encode()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="permabeta.gateway.lines"):
        for _ in range(5000):
            session.on_frame("auth", bad)
    seconds = time.monotonic() - t0
    allowed = QUIET_AFTER + 1 + seconds / QUIET_S
    assert len(line.sent) <= allowed and gw.rejects["proof_refused"] <= allowed, (len(line.sent), seconds)
    assert session.passed_over == 5000 - gw.rejects["proof_refused"]
    assert len([r for r in caplog.records if "proof refused" in r.getMessage()]) == QUIET_AFTER
    time.sleep(QUIET_S)
    device = Prover("th-1", link_key("th-1", "pw-th-1"))
    session.on_frame("auth", device.start().encode())
    reply, _ = device.on_auth(line.sent[-1][1])
    assert reply is not None
    session.on_frame("auth", reply.encode())
    assert device.on_auth(line.sent[-1][1]) == (None, True) and gw.lines == {"th-1": session}
    assert session.refused_in_row == 0
