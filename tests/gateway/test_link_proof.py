"""The proof of identity on a serial or Bluetooth line (docs/protocol.md 17):
the device's end (firmware/pb/net/proof.py, the same code on the board) and
the gateway's (gateway/link_proof.py) against each other, the hand-written
HMAC against Python's and against the MicroPython unix port's run, and one
test per attack."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.pb.net.proof import Prover, link_key, mac
from gateway.link_proof import LineProof, ProofRefused, registry_keys
from gateway.registry import Registry
from gateway.store import Store

from ..support import micropython

PASSWORD = "correct horse battery staple"
HASH = "$7$101$" + "A" * 16 + "$" + "B" * 86 + "=="


def keys_of(**devices: str) -> Callable[[str], bytes]:
    def key_of(dev: str) -> bytes:
        if dev not in devices:
            raise ProofRefused("unknown_device", f"{dev} was never provisioned for this gateway")
        return link_key(dev, devices[dev])

    return key_of


def prove(device: Prover, gateway: LineProof) -> tuple[object, str | None]:
    """Run a proof to its end: (the device's outcome, the id the gateway took)."""
    answer, proven = gateway.on_auth(device.start().encode())
    assert answer is not None and proven is None
    reply, outcome = device.on_auth(answer)
    if reply is None:
        return outcome, None
    answer, proven = gateway.on_auth(reply.encode())
    assert answer is not None
    _, outcome = device.on_auth(answer)
    return outcome, proven


@settings(max_examples=200)
@given(key=st.binary(max_size=130), msg=st.binary(max_size=300))
def test_the_hand_written_hmac_is_rfc_2104s(key: bytes, msg: bytes) -> None:
    assert mac(key, msg) == hmac.new(key, msg, hashlib.sha256).hexdigest()


@pytest.mark.skipif(not micropython.MICROPYTHON.exists(), reason="no micropython unix port")
def test_the_board_computes_the_same_key_and_macs() -> None:
    out = micropython.run(
        "from pb.net.proof import link_key, mac\n"
        "k = link_key('th-1', 'pw')\n"
        "print(mac(k, 'pb1 device ' + 'a' * 32 + ' ' + 'b' * 32 + ' th-1'))\n"
        "print(mac(b'k' * 100, b'm'))\n"
    ).split("\n")
    k = link_key("th-1", "pw")
    assert (
        out[0] == hmac.new(k, b"pb1 device " + b"a" * 32 + b" " + b"b" * 32 + b" th-1", "sha256").hexdigest()
    )
    assert out[1] == hmac.new(b"k" * 100, b"m", "sha256").hexdigest()


def test_a_device_and_its_gateway_prove_themselves_to_each_other() -> None:
    gateway = LineProof(keys_of(**{"th-1": PASSWORD}))
    outcome, proven = prove(Prover("th-1", link_key("th-1", PASSWORD)), gateway)
    assert outcome is True and proven == "th-1" and gateway.proven == "th-1"


def test_an_advertiser_claiming_another_devices_id_is_refused() -> None:
    """It holds its own credentials, not the other device's: the gateway's
    own proof checks out, its answer does not."""
    gateway = LineProof(keys_of(**{"th-1": PASSWORD, "th-2": "another"}))
    outcome, proven = prove(Prover("th-1", link_key("th-2", "another")), gateway)
    assert proven is None and gateway.proven is None
    assert isinstance(outcome, str) and "did not prove it holds the device's key" in outcome
    # (the impostor, holding the wrong key, took the gateway's proof for a false one: it answered nothing)
    assert gateway.refusals == 0


def test_an_impostor_that_guesses_the_answer_is_refused() -> None:
    gateway = LineProof(keys_of(**{"th-1": PASSWORD}))
    answer, _ = gateway.on_auth(json.dumps({"v": 1, "dev": "th-1", "n": "0" * 32}).encode())
    assert answer is not None
    got, proven = gateway.on_auth(json.dumps({"v": 1, "mac": "0" * 64}).encode())
    assert proven is None and gateway.proven is None
    assert json.loads(got or b"") == {
        "v": 1,
        "error": "bad_proof",
        "message": "the line did not prove it is th-1",
    }


def test_a_recorded_answer_replayed_on_a_new_challenge_is_refused() -> None:
    key = link_key("th-1", PASSWORD)
    gateway = LineProof(keys_of(**{"th-1": PASSWORD}))
    device = Prover("th-1", key)
    first = json.loads(device.start())
    answer, _ = gateway.on_auth(json.dumps(first).encode())
    recorded, _ = device.on_auth(answer or b"")
    assert recorded is not None
    # the recording, played to the gateway's next challenge with the same device nonce
    gateway.on_auth(json.dumps(first).encode())
    got, proven = gateway.on_auth(recorded.encode())
    assert proven is None and json.loads(got or b"")["error"] == "bad_proof"


def test_a_gateway_without_the_key_gets_no_answer_from_the_device() -> None:
    """A stranger on the device's line (a phone posing as the gateway):
    the device says nothing that proves it, and takes no command."""
    device = Prover("th-1", link_key("th-1", PASSWORD))
    stranger = LineProof(keys_of(**{"th-1": "a guess"}))
    answer, _ = stranger.on_auth(device.start().encode())
    reply, outcome = device.on_auth(answer or b"")
    assert reply is None and outcome == "the gateway did not prove it holds the device's key"


def test_an_ok_without_a_proof_does_not_bring_the_device_up() -> None:
    device = Prover("th-1", link_key("th-1", PASSWORD))
    device.start()
    reply, outcome = device.on_auth(b'{"v": 1, "ok": true}')
    assert reply is None and outcome == "the gateway accepted a proof not given"


def test_an_answer_with_no_challenge_is_refused() -> None:
    gateway = LineProof(keys_of(**{"th-1": PASSWORD}))
    got, proven = gateway.on_auth(b'{"v": 1, "mac": "' + b"0" * 64 + b'"}')
    assert proven is None and json.loads(got or b"")["error"] == "unasked"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xfe", "a proof message that is not JSON (or nested too deep)"),
        # (json's RecursionError, no ValueError: it escaped the line's session, and the frames
        # after it in the same read were lost)
        (b"[" * 4000, "a proof message that is not JSON (or nested too deep)"),
        (b"[1]", 'a proof message must be a JSON object with "v": 1'),
        (
            b'{"v": 2, "dev": "th-1", "n": "' + b"0" * 32 + b'"}',
            'a proof message must be a JSON object with "v": 1',
        ),
        (b'{"v": 1}', 'a proof message carries "dev" and "n", or "mac"'),
        (
            b'{"v": 1, "dev": "TH 1", "n": "' + b"0" * 32 + b'"}',
            "the device id is not one (docs/protocol.md 2.1)",
        ),
        (b'{"v": 1, "dev": "th-1", "n": "short"}', "the device's nonce must be 16-64 characters"),
        (
            b'{"v": 1, "dev": "th-9", "n": "' + b"0" * 32 + b'"}',
            "th-9 was never provisioned for this gateway",
        ),
    ],
)
def test_a_malformed_proof_message_gets_a_specific_refusal(payload: bytes, message: str) -> None:
    gateway = LineProof(keys_of(**{"th-1": PASSWORD}))
    got, proven = gateway.on_auth(payload)
    assert proven is None and json.loads(got or b"")["message"] == message


@settings(max_examples=300)
@given(
    payload=st.binary(max_size=200)
    | st.dictionaries(st.text(max_size=5), st.integers() | st.text()).map(
        lambda d: json.dumps({"v": 1, **d}).encode()
    )
)
def test_no_message_from_a_line_proves_anything_by_itself(payload: bytes) -> None:
    gateway = LineProof(keys_of(**{"th-1": PASSWORD}))
    _, proven = gateway.on_auth(payload)
    assert proven is None and gateway.proven is None
    device = Prover("th-1", link_key("th-1", PASSWORD))
    device.start()
    reply, outcome = device.on_auth(payload)
    assert reply is None and outcome is not True


def test_a_proof_message_nested_too_deep_is_refused_at_either_end() -> None:
    device = Prover("th-1", link_key("th-1", PASSWORD))
    device.start()
    assert device.on_auth(b"[" * 4000 + b"]" * 4000) == (None, "the gateway's proof message is not JSON")


def test_the_registry_holds_the_keys_of_devices_provisioned_and_not_revoked(gw_db: Path | str) -> None:
    with Store(gw_db) as store:
        reg = Registry(store)
        reg.register("th-1", "thermostat", "thermostat-v1", HASH, 1.0, link_key("th-1", PASSWORD).hex())
        reg.register("th-old", "thermostat", "thermostat-v1", HASH, 1.0)
        reg.register("th-gone", "thermostat", "thermostat-v1", HASH, 1.0, link_key("th-gone", "x").hex())
        reg.revoke("th-gone", 2.0)
        key_of = registry_keys(store)
        assert key_of("th-1") == link_key("th-1", PASSWORD)
        shown = reg.get("th-1")
        assert shown is not None and shown.as_dict()["link_key"] is True  # (whether it has one, not the key)
        assert link_key("th-1", PASSWORD).hex() not in json.dumps(shown.as_dict())
        for dev, code in (("th-nobody", "unknown_device"), ("th-old", "no_link_key"), ("th-gone", "revoked")):
            with pytest.raises(ProofRefused) as refused:
                key_of(dev)
            assert refused.value.code == code
        outcome, proven = prove(Prover("th-gone", link_key("th-gone", "x")), LineProof(key_of))
        assert proven is None and outcome == "the gateway refused the device: revoked: th-gone is revoked"
