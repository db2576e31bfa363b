"""The device's clock (docs/ota.md 2.3): the SNTP client against a real SNTP
server on a loopback UDP port, on the MicroPython unix port and under
CPython; the floor that only a verified time statement raises and that never
moves back; the trusted now of a freshness check."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.pb.errors import TrustError
from firmware.pb.net import sntp
from firmware.pb.ota import clock, flash, trust
from ota import keys as ota_keys
from ota.envelope import public_bytes, sign_envelope, verify_signature

from ..support import micropython
from ..support.sntp import ERA, Answer, SntpServer, ntp_reply


@pytest.fixture
def sntp_server() -> Iterator[Callable[[Answer], SntpServer]]:
    made: list[SntpServer] = []

    def make(answer: Answer) -> SntpServer:
        made.append(SntpServer(answer))
        return made[-1]

    yield make
    for s in made:
        s.close()


T = 1795400123.25  # the time the test's server states


def _good(req: bytes) -> bytes:
    return ntp_reply(req, T)


def _silent(req: bytes) -> None:
    return None


def _garbage(req: bytes) -> bytes:
    return b"\x00garbage" * 3


def _foreign(req: bytes) -> bytes:
    return ntp_reply(req, T, echo=False)  # an answer to someone else's question


def _unsynchronised(req: bytes) -> bytes:
    return ntp_reply(req, T, stratum=0)  # a kiss-o'-death


ON_THE_UNIX_PORT = """
import sys, json
import asyncio
from pb.net import sntp
server = open(sys.argv[1]).read()
async def main():
    try:
        print(json.dumps({"t": await sntp.query(server, 800)}))
    except OSError as exc:
        print(json.dumps({"error": str(exc)}))
asyncio.run(main())
"""


def _query_cpython(server: str) -> dict[str, Any]:
    try:
        return {"t": asyncio.run(sntp.query(server, 800))}
    except OSError as exc:
        return {"error": str(exc)}


def _query_unix_port(server: str) -> dict[str, Any]:
    out = micropython.run(ON_THE_UNIX_PORT, server.encode(), heap="256K")
    return dict(json.loads(out.strip().splitlines()[-1]))


QUERIES = {"unix-port": _query_unix_port, "cpython": _query_cpython}


@pytest.mark.parametrize("where", list(QUERIES))
def test_sntp_takes_the_time_from_a_real_server(
    where: str, sntp_server: Callable[[Answer], SntpServer]
) -> None:
    srv = sntp_server(_good)
    got = QUERIES[where](srv.address)
    assert abs(got["t"] - T) < 1.0, got
    (req,) = srv.requests
    assert len(req) == 48 and req[0] == 0x23  # version 4, client


@pytest.mark.parametrize("where", list(QUERIES))
@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (_silent, "no answer"),
        (_garbage, "answer of"),
        (_foreign, "answer to another request"),
        (_unsynchronised, "not a synchronised server's answer"),
    ],
    ids=["silent", "garbage", "foreign", "kiss-of-death"],
)
def test_sntp_believes_no_bad_answer(
    where: str, answer: Answer, why: str, sntp_server: Callable[[Answer], SntpServer]
) -> None:
    srv = sntp_server(answer)
    got = QUERIES[where](srv.address)
    assert "t" not in got and why in got["error"], got


def test_a_garbage_answer_does_not_hide_the_real_one(sntp_server: Callable[[Answer], SntpServer]) -> None:
    srv = sntp_server(_good)
    srv._replies = lambda data: [b"\xff" * 48, ntp_reply(data, T, echo=False), _good(data)]  # type: ignore[method-assign]
    assert abs(_query_unix_port(srv.address)["t"] - T) < 1.0


def test_server_names() -> None:
    assert sntp.server("pool.ntp.org") == ("pool.ntp.org", 123)
    assert sntp.server("127.0.0.1:5123") == ("127.0.0.1", 5123)


def test_ntp_times_after_2036_wrap_into_the_next_era() -> None:
    nonce = bytes(range(8))
    req = b"\x23" + bytes(39) + nonce
    later = 2**32 - ERA + 1000.0  # 2036-02-07 and 1000 s
    assert sntp.parse(ntp_reply(req, later), nonce) == later


# ---- the floor -------------------------------------------------------------------

GATEWAY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def _root(key: Ed25519PrivateKey) -> dict[str, Any]:
    kid = ota_keys.key_id(key)
    pub = public_bytes(key).hex()
    role = {"keyids": [kid], "threshold": 1}
    return {"keys": {kid: pub}, "roles": {"root": role, "release": role, "gateway": role}}


ROOT = _root(GATEWAY)


def _verify(pub: bytes, msg: bytes, sig: bytes) -> bool:
    return verify_signature(pub, msg, sig)


def statement(kind: str, t: int, device: str = "th-1") -> bytes:
    body = {"v": 1, "type": "time", "device": device, "time": t}
    if kind == "good":
        return sign_envelope(body, [GATEWAY])
    if kind == "other_key":
        return sign_envelope(body, [OTHER])
    if kind == "other_device":
        return sign_envelope({**body, "device": "th-2"}, [GATEWAY])
    if kind == "unsigned":
        return json.dumps(
            {"signed": json.dumps({"v": 1, "type": "time", "device": device, "time": t}), "signatures": []}
        ).encode()
    if kind == "freshness":  # signed by the gateway, but not a time statement
        return sign_envelope({"v": 1, "type": "freshness", "device": device, "time": t}, [GATEWAY])
    return b"\x00not json" + str(t).encode()


KINDS = ("good", "other_key", "other_device", "unsigned", "freshness", "garbage")


@settings(max_examples=60, deadline=None)
@given(
    floor=st.integers(0, 2**41),
    items=st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 2**41)), max_size=6),
)
def test_the_floor_is_the_highest_verified_time_and_never_moves_back(
    floor: int, items: list[tuple[str, int]]
) -> None:
    want = floor
    for kind, t in items:
        before = floor
        try:
            floor = clock.accept(floor, statement(kind, t), "th-1", ROOT, _verify)
        except TrustError as exc:
            assert kind != "good"
            assert exc.code in ("bad_envelope", "unknown_key", "bad_signature", "mismatch")
        else:
            assert kind == "good"
        if kind == "good":
            want = max(want, t)
        assert floor >= before
        assert floor == want


@settings(max_examples=200, deadline=None)
@given(
    body=st.dictionaries(
        st.sampled_from(["type", "time", "device", "v"]),
        st.one_of(
            st.integers(-5, 2**53), st.text(max_size=5), st.none(), st.booleans(), st.floats(allow_nan=False)
        ),
    )
)
def test_the_time_parser_takes_only_a_time_statement_for_this_device(body: dict[str, Any]) -> None:
    ok = body.get("type") == "time" and body.get("device") == "th-1"
    t = body.get("time")
    ok = ok and isinstance(t, int) and not isinstance(t, bool) and t >= 0
    try:
        got = trust.check_time(body, "th-1")
    except TrustError:
        assert not ok
    else:
        assert ok and got == t


class _Hal:
    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def set_time(self, t: float) -> None:
        self.t = t


def _device(tmp_path: Path, keys: ota_keys.Keys) -> Path:
    (tmp_path / "ota").mkdir()
    (tmp_path / flash.ROOT).write_bytes(keys.root_bytes)
    return tmp_path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> ota_keys.Keys:
    return ota_keys.keygen(tmp_path_factory.mktemp("keys") / "k")


def _floor_after(base: Path, data: bytes, hal: _Hal) -> int:
    assert clock.keep(str(base), data)
    floor = clock.settle(str(base), "th-1", hal)
    assert not (base / flash.TIME).exists()  # verified or refused, it goes
    return floor


def test_a_verified_time_raises_the_floor_and_sets_a_clock_behind_it(
    tmp_path: Path, keys: ota_keys.Keys
) -> None:
    base = _device(tmp_path, keys)
    hal = _Hal(946684800.0)  # 2000-01-01
    assert _floor_after(base, ota_keys.time_statement(keys, "th-1", T), hal) == int(T * 1000)
    assert json.loads((base / flash.TRUST_STATE).read_text())["time"] == int(T * 1000)
    assert hal.t == int(T * 1000) / 1000
    assert flash.floor_ms(str(base)) == int(T * 1000)


def test_a_forged_time_statement_does_not_move_the_floor(
    tmp_path: Path, keys: ota_keys.Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _device(tmp_path, keys)
    attacker = ota_keys.keygen(tmp_path / "attacker")
    hal = _Hal(946684800.0)
    for forged in (
        ota_keys.time_statement(attacker, "th-1", T),
        json.dumps(
            {
                "signed": json.dumps({"v": 1, "type": "time", "device": "th-1", "time": 2**40}),
                "signatures": [],
            }
        ).encode(),
        ota_keys.time_statement(keys, "th-2", T),  # genuine, for another device
    ):
        assert _floor_after(base, forged, hal) == 0
    assert hal.t == 946684800.0
    assert not (base / flash.TRUST_STATE).exists()
    out = capsys.readouterr().out
    assert "unknown_key" in out and "mismatch" in out


def test_a_lower_signed_time_does_not_move_the_floor_back(tmp_path: Path, keys: ota_keys.Keys) -> None:
    base = _device(tmp_path, keys)
    hal = _Hal(0.0)
    assert _floor_after(base, ota_keys.time_statement(keys, "th-1", T), hal) == int(T * 1000)
    assert _floor_after(base, ota_keys.time_statement(keys, "th-1", T - 86400), hal) == int(T * 1000)
    assert json.loads((base / flash.TRUST_STATE).read_text())["time"] == int(T * 1000)


def test_a_statement_too_large_is_not_kept(tmp_path: Path) -> None:
    (tmp_path / "ota").mkdir()
    assert not clock.keep(str(tmp_path), b" " * (clock.MAX_STATEMENT + 1))
    assert not (tmp_path / flash.TIME).exists()


def test_the_time_statement_the_gateway_signs_is_one_a_device_takes() -> None:
    data = ota_keys.time_statement(GATEWAY, "th-1", time.time())
    assert clock.accept(0, data, "th-1", ROOT, _verify) > 1.7e12
