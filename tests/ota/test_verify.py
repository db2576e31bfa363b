"""Verifying releases: one test per attack, named after it, and the device's
own rules (firmware.pb.ota.trust with its pure-Python Ed25519) agreeing."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.pb.errors import TrustError
from firmware.pb.ota import trust
from gateway.paths import firmware_dir
from ota.envelope import key_id, public_bytes, sign_envelope
from ota.errors import VerifyError
from ota.keys import Keys, freshness, keygen, rotate_root
from ota.release import Release, blob_path, build, read
from ota.verify import Device, verify_release

from .helpers import THERMOSTAT_BOARD, device_verify, resign, signed_body

THERMOSTAT = Device.for_board(THERMOSTAT_BOARD, counter=1)


def refused(release: Path, root: Any, code: str, device: Device | None = None) -> VerifyError:
    with pytest.raises(VerifyError) as err:
        verify_release(release, root, device)
    assert err.value.code == code, str(err.value)
    return err.value


def test_verify_release_passes(release: Release, keys: Keys) -> None:
    for root in (keys.path, keys.path / "root.json", keys.root_bytes, keys):
        got = verify_release(release.path, root, THERMOSTAT)
        assert got.sha256 == release.sha256


def test_the_shipped_thermostat_builds_and_verifies(tmp_path: Path, keys: Keys) -> None:
    src = firmware_dir() / "features" / "thermostat"
    rel = build("thermostat", [src], "2026.11.1", tmp_path / "r", counter=1, keys=keys, forms=("py",))
    assert verify_release(rel.path, keys.path, Device.for_board(THERMOSTAT_BOARD)) == rel
    assert {f.path for f in rel.files} == {"thermostat/__init__.py", "thermostat/manifest.json"}


def test_the_device_policy_agrees(release: Release, keys: Keys) -> None:
    """What a device does with the release, step by step, with pb.ota.trust and
    the device's own Ed25519 code."""
    root = trust.load_root(keys.root_bytes, device_verify)
    now = 1795400000
    ids = ("th-1", "5f2a9c01b7e4")
    fresh = freshness(
        keys, "thermostat", release.counter, release.sha256, ttl_s=600, now=now, device=ids[0], update=ids[1]
    )
    raw, fbody, fsigs = trust.open_envelope(fresh)
    trust.check_role(root, "gateway", raw, fsigs, device_verify)
    trust.check_freshness(fbody, "thermostat", release.sha256, release.counter, now + 1, 0, *ids)

    data = (release.path / "manifest.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == fbody["manifest"]
    raw, body, sigs = trust.open_envelope(data)
    trust.check_role(root, "release", raw, sigs, device_verify)
    trust.check_manifest(body)
    trust.check_for_device(body, "thermostat", 1, 1)
    for f in body["files"]:
        blob = blob_path(release.path, f["sha256"]).read_bytes()
        assert (len(blob), trust.sha256_hex(blob)) == (f["zsize"], f["zsha256"])
        content = zlib.decompressobj(10).decompress(blob)
        assert (len(content), trust.sha256_hex(content)) == (f["size"], f["sha256"])


def test_tampered_blob(release: Release, keys: Keys) -> None:
    blob = release.blob_path(release.files[0])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    err = refused(release.path, keys, "mismatch")
    assert "thermostat/__init__.py" in err.message


def test_replaced_blob_of_valid_zlib(release: Release, keys: Keys) -> None:
    f = release.files[0]
    release.blob_path(f).write_bytes(zlib.compress(b"import os\nos.remove('boot.py')\n"))
    refused(release.path, keys, "mismatch")


def test_truncated_blob(release: Release, keys: Keys) -> None:
    blob = release.blob_path(release.files[0])
    blob.write_bytes(blob.read_bytes()[:-5])
    refused(release.path, keys, "mismatch")


def test_missing_blob(release: Release, keys: Keys) -> None:
    release.blob_path(release.files[1]).unlink()
    refused(release.path, keys, "missing_blob")


def test_tampered_manifest(release: Release, keys: Keys) -> None:
    mf = release.path / "manifest.json"
    env = json.loads(mf.read_bytes())
    env["signed"] = env["signed"].replace('"counter":2', '"counter":9999')
    mf.write_text(json.dumps(env))
    err = refused(release.path, keys, "bad_signature")
    assert "0 of 1 required release signatures" in err.message


def test_reserialised_manifest_is_tampered(release: Release, keys: Keys) -> None:
    """The same content serialised otherwise is other bytes: not what was signed."""
    mf = release.path / "manifest.json"
    env = json.loads(mf.read_bytes())
    env["signed"] = json.dumps(json.loads(env["signed"]), indent=1)
    mf.write_text(json.dumps(env))
    refused(release.path, keys, "bad_signature")


def test_signed_by_unknown_key(release: Release, keys: Keys, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other")
    resign(release.path, [other.release_key()])
    refused(release.path, keys, "unknown_key")
    verify_release(release.path, other)  # fine under the root that knows it


def test_signed_by_the_gateway_key(release: Release, keys: Keys) -> None:
    """A compromised gateway can delay updates but cannot install code."""
    resign(release.path, [keys.gateway_key()], lambda b: b.update(counter=99))
    refused(release.path, keys, "unknown_key")


def test_signed_by_a_root_key(release: Release, keys: Keys) -> None:
    resign(release.path, [keys.root_keys[0]])
    refused(release.path, keys, "unknown_key")


def test_unsigned_release(tmp_path: Path, keys: Keys, features_dir: Path) -> None:
    rel = build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))
    err = refused(rel.path, keys, "unknown_key")
    assert "ota sign" in err.message


def _root_with_two_release_keys(keys: Keys, a: Ed25519PrivateKey, b: Ed25519PrivateKey) -> bytes:
    body = json.loads(json.dumps(keys.root))
    for k in (a, b):
        body["keys"][key_id(k)] = public_bytes(k).hex()
    body["roles"]["release"] = {"keyids": [key_id(a), key_id(b)], "threshold": 2}
    return sign_envelope(body, keys.root_keys)


def test_threshold_not_met(release: Release, keys: Keys) -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    root = _root_with_two_release_keys(keys, a, b)
    resign(release.path, [a])
    err = refused(release.path, root, "bad_signature")
    assert "1 of 2 required release signatures" in err.message
    resign(release.path, [a, a])  # one key twice is still one key
    refused(release.path, root, "bad_signature")
    resign(release.path, [a, b])
    verify_release(release.path, root)


def test_threshold_with_a_bad_signature(release: Release, keys: Keys) -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    root = _root_with_two_release_keys(keys, a, b)
    resign(release.path, [a, b])
    mf = release.path / "manifest.json"
    env = json.loads(mf.read_bytes())
    env["signatures"][1]["sig"] = env["signatures"][0]["sig"]  # b's slot carries a's signature
    mf.write_text(json.dumps(env))
    refused(release.path, root, "bad_signature")


def test_untrusted_root(release: Release, keys: Keys) -> None:
    env = json.loads(keys.root_bytes)
    env["signatures"] = []
    refused(release.path, json.dumps(env).encode(), "unknown_key")


def test_release_key_of_a_rotated_root(release: Release, keys: Keys) -> None:
    old_root = keys.root_bytes
    new = rotate_root(keys.path, new_release_key=True)
    resign(release.path, [new.release_key()])
    verify_release(release.path, new)
    refused(release.path, old_root, "unknown_key")  # a device must get root 2 first


@pytest.mark.parametrize(
    ("device", "code"),
    [
        (Device("shirt", frozenset(THERMOSTAT_BOARD["capabilities"]), 1, 1), "wrong_model"),
        (Device("thermostat", frozenset(THERMOSTAT_BOARD["capabilities"]), 2, 1), "wrong_api"),
        (Device("thermostat", frozenset(THERMOSTAT_BOARD["capabilities"]), 1, 2), "rollback"),
    ],
)
def test_not_for_this_device(release: Release, keys: Keys, device: Device, code: str) -> None:
    refused(release.path, keys, code, device)


def test_a_board_without_a_features_hardware_takes_the_release(release: Release, keys: Keys) -> None:
    """requires is the features', not the release's: the feature waits for its hardware."""
    assert verify_release(release.path, keys, Device("thermostat", frozenset({"temperature"}), 1, 0))


def _rewrite_blob(release: Path, keys: Keys, path: str, blob: bytes, size: int | None = None) -> None:
    """Replace a file's blob and sign a manifest describing it, as a maker
    with the release key (or a broken build tool) could."""
    body = signed_body(release)
    (entry,) = [f for f in body["files"] if f["path"] == path]
    blob_path(release, entry["sha256"]).write_bytes(blob)
    entry.update(zsize=len(blob), zsha256=hashlib.sha256(blob).hexdigest())
    if size is not None:
        entry["size"] = size
    resign(release, [keys.release_key()], lambda b: b.update(files=body["files"]))


def test_blob_with_a_window_larger_than_1kb(release: Release, keys: Keys) -> None:
    content = zlib.decompress(release.blob_path(release.files[0]).read_bytes())
    c = zlib.compressobj(9, zlib.DEFLATED, 15)
    _rewrite_blob(release.path, keys, "thermostat/__init__.py", c.compress(content) + c.flush())
    err = refused(release.path, keys, "mismatch")
    assert "1 KB window" in err.message


def test_endless_data(release: Release, keys: Keys) -> None:
    """A blob that inflates to more than the size signed stops at once."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, 10)
    blob = bomb.compress(b"\0" * 10_000_000) + bomb.flush()
    _rewrite_blob(release.path, keys, "thermostat/__init__.py", blob, size=100)
    err = refused(release.path, keys, "mismatch")
    assert "more than the 100 signed" in err.message


def test_blob_with_trailing_bytes(release: Release, keys: Keys) -> None:
    f = release.files[0]
    blob = release.blob_path(f).read_bytes() + b"extra"
    _rewrite_blob(release.path, keys, f.path, blob)
    refused(release.path, keys, "mismatch")


def test_path_escape_in_a_signed_manifest(release: Release, keys: Keys) -> None:
    """Even a manifest signed by the release key may not place a file outside
    its feature's folder."""
    for bad in ("thermostat/../boot.py", "/thermostat/x.py", "boot.py", "vent/x.py"):

        def change(b: dict[str, Any], bad: str = bad) -> None:
            b["files"][0]["path"] = bad
            b["files"].sort(key=lambda f: f["path"])

        resign(release.path, [keys.release_key()], change)
        refused(release.path, keys, "bad_path")


def test_oversized_manifest(release: Release, keys: Keys) -> None:
    (release.path / "manifest.json").write_bytes(b" " * 16385)
    refused(release.path, keys, "bad_envelope")


def test_no_manifest(tmp_path: Path, keys: Keys) -> None:
    refused(tmp_path, keys, "bad_envelope")


def test_device_check_is_the_trust_module(release: Release) -> None:
    """verify_release and the device share their judgement: same code, same message."""
    body = read(release.path).body
    with pytest.raises(TrustError) as device:
        trust.check_for_device(body, "shirt", 1, 0)
    with pytest.raises(VerifyError) as tool:
        verify_release(release.path, release.path.parent / "keys", Device("shirt", frozenset(), 1, 0))
    assert (tool.value.code, tool.value.message) == (device.value.code, device.value.message)
