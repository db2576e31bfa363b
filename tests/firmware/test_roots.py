"""The trusted root at boot (firmware/pb/ota/roots.py, docs/ota.md 1.1): a
root provisioned is taken, a root the gateway sent is trusted only if the
current root's keys sign it, and a power cut anywhere leaves a root trusted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.pb.ota import flash, roots
from ota import keys as ota_keys
from ota.envelope import sign_envelope


def _chain(tmp_path: Path, n: int, **rotate: bool) -> list[bytes]:
    """Roots 1..n of one keys folder."""
    folder = tmp_path / "keys"
    ota_keys.keygen(folder)
    for _ in range(n - 1):
        ota_keys.rotate_root(folder, **rotate)
    return [(folder / f"root.{v}.json").read_bytes() for v in range(1, n + 1)]


def _device(tmp_path: Path, root: bytes | None = None) -> Path:
    base = tmp_path / "dev"
    (base / "ota").mkdir(parents=True, exist_ok=True)
    if root is not None:
        (base / flash.ROOT).write_bytes(root)
    return base


def _reports(base: Path) -> list[dict[str, object]]:
    return flash.take_reports(str(base))


def test_a_provisioned_root_is_taken_at_boot_as_its_version(tmp_path: Path) -> None:
    (r1,) = _chain(tmp_path, 1)
    base = _device(tmp_path, r1)
    assert roots.root_waits(str(base))
    assert roots.settle(str(base), 0) == 1
    assert roots.trusted_root(str(base)) == (1, r1)
    assert not (base / flash.ROOT).exists() and not roots.root_waits(str(base))
    assert _reports(base) == []


def test_a_root_sent_is_trusted_when_the_current_root_signs_it(tmp_path: Path) -> None:
    r1, r2, r3 = _chain(tmp_path, 3, new_release_key=True)
    base = _device(tmp_path, r1)
    roots.settle(str(base), 0)
    for want, sent in ((2, r2), (3, r3)):
        (base / flash.ROOT_NEXT).write_bytes(sent)
        assert roots.settle(str(base), 0) == want
        assert roots.trusted_root(str(base)) == (want, sent)
    assert roots.root_versions(str(base)) == [3]  # the older ones went
    assert not (base / flash.ROOT_NEXT).exists() and _reports(base) == []


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("skips a version", "bad_root"),
        ("older", "rollback"),
        ("signed by its own keys only", "unknown_key"),
        ("not JSON", "bad_envelope"),
    ],
)
def test_a_root_the_current_root_does_not_sign_is_refused(tmp_path: Path, case: str, code: str) -> None:
    r1, r2, r3 = _chain(tmp_path, 3)
    base = _device(tmp_path, r2)
    roots.settle(str(base), 0)
    if case == "skips a version":
        sent = r3
        (base / (flash.ROOTS % 2)).unlink()
        (base / (flash.ROOTS % 1)).write_bytes(r1)  # a device on root 1 sent root 3
    elif case == "older":
        sent = r1
    elif case == "signed by its own keys only":
        other = ota_keys.keygen(tmp_path / "thief")
        body = json.loads(json.loads(other.root_bytes)["signed"]) | {"version": 3}
        sent = sign_envelope(body, list(other.root_keys))
    else:
        sent = b"{not json"
    (base / flash.ROOT_NEXT).write_bytes(sent)
    before = roots.trusted_root(str(base))
    roots.settle(str(base), 1795400000.0)
    assert roots.trusted_root(str(base)) == before
    (report,) = _reports(base)
    assert report["state"] == "failed" and report["id"] == "-" and report["ts"] == 1795400000.0
    assert str(report["reason"]).startswith(f"root refused: {code}: "), report
    refused = (base / flash.ROOT_REFUSED).read_bytes()
    assert refused == hashlib.sha256(sent).hexdigest().encode()
    assert not (base / flash.ROOT_NEXT).exists()


def test_a_device_that_rotated_keeps_its_root_when_provisioned_again_with_an_older_one(
    tmp_path: Path,
) -> None:
    r1, r2 = _chain(tmp_path, 2)
    base = _device(tmp_path, r1)
    roots.settle(str(base), 0)
    (base / flash.ROOT_NEXT).write_bytes(r2)
    roots.settle(str(base), 0)
    (base / flash.ROOT).write_bytes(r1)  # provisioned again, with the root it was made with
    assert roots.settle(str(base), 0) == 2
    assert roots.trusted_root(str(base)) == (2, r2) and not (base / flash.ROOT).exists()


def test_no_root_to_check_with_refuses_a_root_sent(tmp_path: Path) -> None:
    _r1, r2 = _chain(tmp_path, 2)
    base = _device(tmp_path)
    (base / flash.ROOT_NEXT).write_bytes(r2)
    assert roots.settle(str(base), 0) == 0
    (report,) = _reports(base)
    assert str(report["reason"]).startswith("root refused: bad_root: ")
    assert roots.trusted_root(str(base)) == (0, None)


class _PowerCut(Exception):
    pass


def _cut_at(n: int) -> tuple[list[int], object]:
    """A fault point that cuts the power at its n-th call."""
    calls = [0]

    def fault(_name: str) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise _PowerCut()

    return calls, fault


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, 2), max_size=4), torn=st.booleans())
def test_a_power_cut_anywhere_leaves_a_root_trusted(
    tmp_path_factory: pytest.TempPathFactory, cuts: list[int], torn: bool
) -> None:
    tmp_path = tmp_path_factory.mktemp("cut")
    r1, r2 = _chain(tmp_path, 2, new_release_key=True, new_gateway_key=True)
    base = _device(tmp_path, r1)
    (base / flash.ROOT_NEXT).write_bytes(r2)
    if torn:  # the power went while root 2 was being written: a torn .tmp
        (base / ((flash.ROOTS % 2) + ".tmp")).write_bytes(r2[:100])
    for n in cuts:
        _calls, fault = _cut_at(n)
        try:
            roots.settle(str(base), 0, fault)
        except _PowerCut:
            pass
        version, data = roots.trusted_root(str(base))
        assert (version, data) in ((0, r1), (1, r1), (2, r2))
    assert roots.settle(str(base), 0) == 2
    assert roots.trusted_root(str(base)) == (2, r2)
    assert not (base / flash.ROOT_NEXT).exists() and not (base / flash.ROOT).exists()
    assert _reports(base) == []  # nothing was refused on the way
