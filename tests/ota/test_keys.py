"""The key store: keygen, loading, root rotation, freshness statements."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.pb.errors import TrustError
from firmware.pb.ota import trust
from ota.envelope import add_signatures, canonical, key_id, public_bytes, sign_envelope
from ota.errors import KeyStoreError
from ota.keys import Keys, freshness, keygen, load_keys, rotate_root

from .helpers import device_verify


def mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def root_of(data: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.loads(data)["signed"])
    return body


# ---- keygen ------------------------------------------------------------------


def test_keygen_writes_keys_with_safe_modes(tmp_path: Path) -> None:
    keys = keygen(tmp_path / "a" / "keys")
    folder = keys.path
    assert mode(folder) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == [
        "gateway.key",
        "release.key",
        "root-1.key",
        "root.1.json",
        "root.json",
    ]
    for name in ("gateway.key", "release.key", "root-1.key"):
        assert mode(folder / name) == 0o600
        assert (folder / name).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert mode(folder / "root.json") == 0o644
    assert (folder / "root.json").read_bytes() == (folder / "root.1.json").read_bytes()


def test_root_json_follows_the_spec(keys: Keys) -> None:
    data = (keys.path / "root.json").read_bytes()
    env = json.loads(data)
    assert set(env) == {"signed", "signatures"}
    body = json.loads(env["signed"])
    assert env["signed"] == canonical(body)
    assert body["v"] == 1 and body["type"] == "root" and body["version"] == 1
    for kid, pub in body["keys"].items():
        assert kid == hashlib.sha256(bytes.fromhex(pub)).hexdigest()
    roles = body["roles"]
    assert roles["root"] == {"keyids": [key_id(keys.root_keys[0])], "threshold": 1}
    assert roles["release"] == {"keyids": [key_id(keys.release_key())], "threshold": 1}
    assert roles["gateway"] == {"keyids": [key_id(keys.gateway_key())], "threshold": 1}
    # a device provisioned with it trusts it, with its own Ed25519 code
    assert trust.load_root(data, device_verify) == body == keys.root


def test_keygen_refuses_to_overwrite_existing_keys(tmp_path: Path) -> None:
    keys = keygen(tmp_path / "keys")
    before = {p.name: p.read_bytes() for p in keys.path.iterdir()}
    with pytest.raises(KeyStoreError, match="not empty"):
        keygen(tmp_path / "keys")
    assert {p.name: p.read_bytes() for p in keys.path.iterdir()} == before


def test_keygen_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "notes.txt").write_text("mine")
    with pytest.raises(KeyStoreError, match="not empty"):
        keygen(tmp_path / "keys")
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["notes.txt"]


def test_keygen_into_an_empty_folder_makes_it_private(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(mode=0o755)
    keygen(tmp_path / "keys")
    assert mode(tmp_path / "keys") == 0o700


def test_keygen_with_several_root_keys_and_a_threshold(tmp_path: Path) -> None:
    keys = keygen(tmp_path / "keys", root_keys=3, threshold=2)
    assert [p.name for p in sorted(keys.path.glob("root-*.key"))] == [
        "root-1.key",
        "root-2.key",
        "root-3.key",
    ]
    assert len(keys.root_keys) == 3
    assert keys.root["roles"]["root"]["threshold"] == 2
    env = json.loads(keys.root_bytes)
    assert len(env["signatures"]) == 3
    trust.load_root(keys.root_bytes, device_verify)


@pytest.mark.parametrize(("n", "t"), [(0, 1), (9, 1), (2, 3), (2, 0)])
def test_keygen_bad_counts(tmp_path: Path, n: int, t: int) -> None:
    with pytest.raises(KeyStoreError, match="root"):
        keygen(tmp_path / "keys", root_keys=n, threshold=t)
    assert not (tmp_path / "keys").exists()


# ---- loading -----------------------------------------------------------------


def test_load_keys_finds_every_key(keys: Keys) -> None:
    again = load_keys(keys.path)
    assert again.root == keys.root and again.root_bytes == keys.root_bytes
    assert [key_id(k) for k in again.root_keys] == [key_id(k) for k in keys.root_keys]
    assert key_id(again.release_key()) == key_id(keys.release_key())
    assert key_id(again.gateway_key()) == key_id(keys.gateway_key())


def test_load_keys_refuses_a_key_others_can_read(keys: Keys) -> None:
    (keys.path / "release.key").chmod(0o644)
    with pytest.raises(KeyStoreError, match="readable by others"):
        load_keys(keys.path)


def test_load_keys_refuses_a_key_of_another_root(tmp_path: Path, keys: Keys) -> None:
    other = keygen(tmp_path / "other")
    (keys.path / "release.key").unlink()
    shutil.copy2(other.path / "release.key", keys.path / "release.key")
    with pytest.raises(KeyStoreError, match="not a release key"):
        load_keys(keys.path)


def test_load_keys_refuses_a_tampered_root(keys: Keys) -> None:
    env = json.loads(keys.root_bytes)
    env["signed"] = env["signed"].replace('"version":1', '"version":7')
    (keys.path / "root.json").write_text(json.dumps(env))
    with pytest.raises(KeyStoreError, match="bad_signature"):
        load_keys(keys.path)


def test_a_gateway_needs_only_its_key_and_the_root(tmp_path: Path, keys: Keys) -> None:
    gw = tmp_path / "gw"
    gw.mkdir(mode=0o700)
    for name in ("root.json", "gateway.key"):
        shutil.copy2(keys.path / name, gw / name)
    loaded = load_keys(gw)
    assert loaded.root_keys == () and loaded.release is None
    assert key_id(loaded.gateway_key()) == key_id(keys.gateway_key())
    with pytest.raises(KeyStoreError, match=r"no release\.key"):
        loaded.release_key()


def test_load_keys_without_a_root(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match=r"no root\.json"):
        load_keys(tmp_path)


# ---- envelopes ---------------------------------------------------------------


def test_sign_envelope_signs_the_exact_signed_string(keys: Keys) -> None:
    body = {"v": 1, "type": "x", "b": [1, 2], "a": "é"}
    env = json.loads(sign_envelope(body, [keys.release_key()]))
    assert env["signed"] == json.dumps(body, sort_keys=True, separators=(",", ":"))
    (sig,) = env["signatures"]
    assert sig["keyid"] == key_id(keys.release_key())
    pub = public_bytes(keys.release_key())
    assert device_verify(pub, env["signed"].encode(), bytes.fromhex(sig["sig"]))


def test_add_signatures_never_reserialises(keys: Keys) -> None:
    # `signed` as another tool might write it: spaces, unsorted keys
    signed = '{"v": 1, "type": "x",  "z": 1, "a": 2}'
    data = json.dumps({"signed": signed, "signatures": []}).encode()
    once = add_signatures(data, [keys.release_key()])
    twice = add_signatures(once, [keys.release_key(), keys.gateway_key()])
    env = json.loads(twice)
    assert env["signed"] == signed
    assert [s["keyid"] for s in env["signatures"]] == [key_id(keys.release_key()), key_id(keys.gateway_key())]
    raw, _, sigs = trust.open_envelope(twice)
    assert raw == signed.encode()
    assert trust.count_valid(raw, sigs, keys.root["keys"], list(keys.root["keys"]), device_verify) == 2


# ---- freshness ---------------------------------------------------------------


def test_freshness_statement_is_what_a_device_accepts(keys: Keys) -> None:
    sha = "ab" * 32
    data = freshness(
        keys, "thermostat", 2, sha, ttl_s=3600, now=1795400123.456, device="th-1", update="5f2a9c01b7e4"
    )
    raw, body, sigs = trust.open_envelope(data)
    assert body == {
        "v": 1,
        "type": "freshness",
        "device": "th-1",
        "update": "5f2a9c01b7e4",
        "model": "thermostat",
        "version": 1795400123456,
        "counter": 2,
        "manifest": sha,
        "expires": 1795403723,
    }
    trust.check_role(keys.root, "gateway", raw, sigs, device_verify)
    trust.check_freshness(body, "thermostat", sha, 2, 1795400200, 1795400000000, "th-1", "5f2a9c01b7e4")
    with pytest.raises(TrustError) as err:
        trust.check_freshness(body, "thermostat", sha, 2, 1795403724, 0, "th-1", "5f2a9c01b7e4")
    assert err.value.code == "freeze"
    # another device's statement, or the same device's for another update, is of no use
    for dev, uid, what in (("th-2", "5f2a9c01b7e4", "device"), ("th-1", "5f2a9c01b7e5", "update")):
        with pytest.raises(TrustError, match=f"for another {what}") as err:
            trust.check_freshness(body, "thermostat", sha, 2, 1795400200, 0, dev, uid)
        assert err.value.code == "mismatch"
    # a gateway statement is no release signature
    with pytest.raises(TrustError) as err:
        trust.check_role(keys.root, "release", raw, sigs, device_verify)
    assert err.value.code == "unknown_key"


def test_freshness_with_a_bare_key_and_bad_input(keys: Keys) -> None:
    ids = {"device": "sh-1", "update": "0123456789ab"}
    data = freshness(keys.gateway_key(), "shirt", 1, "cd" * 32, ttl_s=60, now=10, **ids)
    assert json.loads(json.loads(data)["signed"])["expires"] == 70
    with pytest.raises(KeyStoreError, match="64 lowercase hex"):
        freshness(keys, "shirt", 1, "CD" * 32, ttl_s=60, now=10, **ids)
    with pytest.raises(KeyStoreError, match="positive"):
        freshness(keys, "shirt", 1, "cd" * 32, ttl_s=0, now=10, **ids)
    for update in ("upd-1", "0123456789AB", "0123456789abc", ""):
        with pytest.raises(KeyStoreError, match="not an update id"):
            freshness(keys, "shirt", 1, "cd" * 32, ttl_s=60, now=10, device="sh-1", update=update)
    with pytest.raises(KeyStoreError, match="not a device id"):
        freshness(keys, "shirt", 1, "cd" * 32, ttl_s=60, now=10, device="pb/#", update="0123456789ab")


# ---- root rotation -----------------------------------------------------------


def test_root_rotation(keys: Keys) -> None:
    old_root, old_release = keys.root, key_id(keys.release_key())
    new = rotate_root(keys.path, new_root_keys=2, threshold=2, new_gateway_key=True)
    assert new.version == 2
    data = (keys.path / "root.json").read_bytes()
    assert data == (keys.path / "root.2.json").read_bytes()
    assert (keys.path / "root.1.json").read_bytes() == keys.root_bytes
    # a device on root 1 moves to root 2, and trusts it from then on
    assert trust.rotate_root(old_root, data, device_verify) == new.root
    assert trust.load_root(data, device_verify) == new.root
    assert len(new.root_keys) == 2 and new.root["roles"]["root"]["threshold"] == 2
    assert key_id(new.release_key()) == old_release  # kept
    assert key_id(new.gateway_key()) != key_id(keys.gateway_key())  # replaced
    retired = keys.path / "retired" / "v1"
    assert sorted(p.name for p in retired.iterdir()) == ["gateway.key", "root-1.key"]
    assert mode(retired) == 0o700
    assert all(mode(p) == 0o600 for p in keys.path.glob("*.key"))


def test_root_rotation_twice_walks_a_chain(keys: Keys) -> None:
    rotate_root(keys.path)
    rotate_root(keys.path, new_release_key=True)
    r1 = keys.root
    r2 = trust.rotate_root(r1, (keys.path / "root.2.json").read_bytes(), device_verify)
    r3 = trust.rotate_root(r2, (keys.path / "root.3.json").read_bytes(), device_verify)
    assert r3["version"] == 3
    # root 1 cannot jump to root 3
    with pytest.raises(TrustError) as err:
        trust.rotate_root(r1, (keys.path / "root.3.json").read_bytes(), device_verify)
    assert err.value.code == "bad_root"


def _next_root(keys: Keys, new_root: Ed25519PrivateKey, version: int) -> dict[str, Any]:
    body = json.loads(json.dumps(keys.root))
    kid = key_id(new_root)
    body["version"] = version
    old_kid = body["roles"]["root"]["keyids"][0]
    del body["keys"][old_kid]
    body["keys"][kid] = public_bytes(new_root).hex()
    body["roles"]["root"] = {"keyids": [kid], "threshold": 1}
    return dict(body)


def test_root_rotation_requires_old_and_new_keys(keys: Keys) -> None:
    new_key = Ed25519PrivateKey.generate()
    body = _next_root(keys, new_key, 2)
    old_key = keys.root_keys[0]
    for signers in ([new_key], [old_key]):
        with pytest.raises(TrustError) as err:
            trust.rotate_root(keys.root, sign_envelope(body, signers), device_verify)
        assert err.value.code == "unknown_key"
    assert (
        trust.rotate_root(keys.root, sign_envelope(body, [old_key, new_key]), device_verify)["version"] == 2
    )


def test_root_rotation_version_must_increase_by_one(keys: Keys) -> None:
    new_key = Ed25519PrivateKey.generate()
    signers = [keys.root_keys[0], new_key]
    for version, code in ((3, "bad_root"), (1, "rollback")):
        data = sign_envelope(_next_root(keys, new_key, version), signers)
        with pytest.raises(TrustError) as err:
            trust.rotate_root(keys.root, data, device_verify)
        assert err.value.code == code


def test_root_rotation_with_a_threshold_of_old_keys(tmp_path: Path) -> None:
    keys = keygen(tmp_path / "keys", root_keys=3, threshold=2)
    (keys.path / "root-2.key").unlink()  # one holder lost their key: 2 of 3 remain
    new = rotate_root(keys.path)
    env = json.loads(new.root_bytes)
    assert len(env["signatures"]) == 3  # 2 old, 1 new
    trust.rotate_root(keys.root, new.root_bytes, device_verify)


def test_root_rotation_below_the_old_threshold_is_refused(tmp_path: Path) -> None:
    keys = keygen(tmp_path / "keys", root_keys=2, threshold=2)
    (keys.path / "root-1.key").unlink()
    with pytest.raises(KeyStoreError, match="needs 2 of its keys"):
        rotate_root(keys.path)
    assert load_keys(keys.path).version == 1
    assert not (keys.path / "retired").exists()
