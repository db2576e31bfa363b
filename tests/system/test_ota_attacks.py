"""One test per attack (docs/security.md), each named after it, on the real
MicroPython unix port. The attacker owns the gateway and the network: the
test plays the gateway's update side (tests/support/ota_server.py) and
misbehaves on purpose. Every attack must leave the device on its old set,
with staging cleared and a clear reason reported."""

from __future__ import annotations

import json
import random
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from ota import keys as ota_keys
from ota.envelope import sign_envelope
from ota.release import Release, build

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.ota_server import Offer, sha256
from ..support.processes import DeviceProcess
from ..support.wait import wait_for
from .conftest import FEATURES, assert_on_factory, offer_of, ota_device, running_set, serve

pytestmark = pytest.mark.slow


def refused(mosquitto: Mosquitto, dev: DeviceProcess, offer: Offer, tamper: Any = None) -> str:
    """Offer; the update must fail; returns the reason."""
    srv = serve(mosquitto, dev, offer, tamper)
    try:
        st = srv.wait_for(("failed", "committed", "rolled_back"), 90)
    finally:
        srv.close()
    assert st["state"] == "failed", (st, srv.seen)
    time.sleep(0.5)  # the device tidies up after reporting
    return str(st["reason"])


def body_of(release: Release) -> dict[str, Any]:
    return dict(json.loads(json.loads(release.manifest)["signed"]))


def signed_offer(body: dict[str, Any], blobs: dict[str, bytes], keys: ota_keys.Keys, key: Any) -> Offer:
    """An offer of a manifest body signed by key, fresh by the real gateway key."""
    manifest = sign_envelope(body, [key])
    return Offer(manifest, blobs, fresh_for(keys, body["model"], body["counter"], manifest))


def fresh_for(keys: ota_keys.Keys, model: str, counter: int, manifest: bytes) -> Any:
    """Freshness statements for manifest, made by the real gateway key for
    the device and update they are offered to."""
    now = time.time()

    def fresh(dev: str, uid: str) -> bytes:
        return ota_keys.freshness(keys, model, counter, sha256(manifest), 3600, now, device=dev, update=uid)

    return fresh


def blobs_of(release: Release) -> dict[str, bytes]:
    return {f.zsha256: release.blob_path(f).read_bytes() for f in release.files}


def test_tampered_file(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys
) -> None:
    victim = next(f for f in release2.files if f.path.startswith("eco/tables/"))

    def flip(obj: str, off: int, data: bytes) -> list[tuple[int, bytes]] | None:
        if obj == victim.zsha256 and off == 0:
            return [(off, bytes([data[0] ^ 1]) + data[1:])]
        return None

    reason = refused(mosquitto, device, offer_of(release2, keys), flip)
    assert reason.startswith("mismatch:") and victim.path in reason
    assert_on_factory(device)


def test_tampered_manifest(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys
) -> None:
    env = json.loads(release2.manifest)
    env["signed"] = env["signed"].replace('"version":"2.0"', '"version":"6.6"')
    manifest = json.dumps(env).encode()
    assert manifest != release2.manifest
    reason = refused(
        mosquitto, device, Offer(manifest, blobs_of(release2), fresh_for(keys, "thermostat", 2, manifest))
    )
    assert reason.startswith("bad_signature:")
    assert_on_factory(device)


def test_signature_by_unknown_key(
    mosquitto: Mosquitto,
    device: DeviceProcess,
    release2: Release,
    keys: ota_keys.Keys,
    attacker: ota_keys.Keys,
) -> None:
    offer = signed_offer(body_of(release2), blobs_of(release2), keys, attacker.release_key())
    reason = refused(mosquitto, device, offer)
    assert reason.startswith("unknown_key:")
    assert_on_factory(device)


def test_lower_release_counter(
    mosquitto: Mosquitto,
    make_device: MakeDevice,
    release2: Release,
    keys: ota_keys.Keys,
    tmp_path: Path,
) -> None:
    dev = ota_device(mosquitto, make_device, keys)
    srv = serve(mosquitto, dev, offer_of(release2, keys))
    assert srv.wait_for(("committed", "failed", "rolled_back"), 90)["state"] == "committed"
    srv.close()
    # a validly signed but older release: what was signed once stays signed
    older = build("thermostat", [FEATURES / "thermostat"], "1.0", tmp_path / "r1", 1, ("mpy",), keys)
    reason = refused(mosquitto, dev, offer_of(older, keys))  # (an update id of its own)
    assert reason.startswith("rollback:")
    assert running_set(dev)[:2] == (2, release2.sha256)


def test_stale_freshness(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys
) -> None:
    offer = offer_of(release2, keys, ttl=600, now=time.time() - 3600)  # expired 50 minutes ago
    reason = refused(mosquitto, device, offer)
    assert reason.startswith("freeze:")
    assert_on_factory(device)


def test_manifest_for_another_model(
    mosquitto: Mosquitto, device: DeviceProcess, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    shirt = build("shirt", [FEATURES / "vent"], "1.1", tmp_path / "shirt", 5, ("mpy",), keys)
    reason = refused(mosquitto, device, offer_of(shirt, keys))
    assert reason.startswith("wrong_model:")
    assert_on_factory(device)


def test_refused_in_update_mode(
    mosquitto: Mosquitto, make_device: MakeDevice, keys: ota_keys.Keys, tmp_path: Path
) -> None:
    # a board that downloads only in update mode (too little RAM beside its
    # features) refuses there just the same, says why, and goes back to them
    dev = ota_device(mosquitto, make_device, keys, ota_mode="lean")
    shirt = build("shirt", [FEATURES / "vent"], "1.1", tmp_path / "shirt", 5, ("mpy",), keys)
    reason = refused(mosquitto, dev, offer_of(shirt, keys))
    assert reason.startswith("wrong_model:")
    wait_for(lambda: dev.output().count("booted (") >= 2, 30, what="the features back")
    assert "update mode: downloading" in dev.output()
    assert_on_factory(dev)
    last = json.loads((dev.path / "ota" / "status.json").read_text())
    assert (last["state"], last["reason"]) == ("failed", reason)  # said again at the next connect


@pytest.mark.parametrize("path", ["thermostat/../../boot.py", "/boot.py", "thermostat//x.py"])
def test_path_escape(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys, path: str
) -> None:
    # even a manifest signed with the real release key (a stolen key, a broken
    # build tool) cannot write outside the features folder
    body = body_of(release2)
    content = b"print('owned')\n"
    blob = zlib.compress(content, 9)
    entry = {
        "path": path,
        "size": len(content),
        "sha256": sha256(content),
        "zsize": len(blob),
        "zsha256": sha256(blob),
    }
    body["files"] = sorted([*body["files"], entry], key=lambda f: f["path"])
    offer = signed_offer(body, {**blobs_of(release2), entry["zsha256"]: blob}, keys, keys.release_key())
    reason = refused(mosquitto, device, offer)
    assert reason.startswith("bad_path:")
    assert_on_factory(device)
    assert (device.path / "boot.py").read_text().startswith("# Runs first at every start")


@pytest.mark.long  # (make long: make test stays within 10 minutes)
def test_endless_data(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys
) -> None:
    victim = next(f for f in release2.files if f.path.startswith("eco/tables/"))
    sizes: list[int] = []

    def longer(obj: str, off: int, data: bytes) -> list[tuple[int, bytes]] | None:
        if obj == victim.zsha256:
            return [(off, data + b"\0" * 512)]  # more than asked, for ever
        return None

    def watch() -> None:
        stage = device.path / "ota" / "stage"
        if stage.exists():
            sizes.extend(p.stat().st_size for p in stage.glob(f"{victim.sha256}*"))

    srv = serve(mosquitto, device, offer_of(release2, keys), longer)
    try:
        deadline = time.monotonic() + 90
        while True:
            watch()
            try:
                st = srv.wait_for(("failed", "committed", "rolled_back"), 0.2)
                break
            except AssertionError:
                assert time.monotonic() < deadline, srv.seen
    finally:
        srv.close()
    assert st["state"] == "failed" and st["reason"].startswith("stalled:")
    assert all(s <= victim.zsize for s in sizes)  # never took a byte beyond what was signed
    time.sleep(0.5)
    assert_on_factory(device)


def test_endless_data_signed_short(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys
) -> None:
    # a manifest (validly signed) that says a file is shorter than what its
    # blob inflates to: the device stops at the signed length
    body = body_of(release2)
    victim = next(f for f in body["files"] if f["path"].startswith("eco/tables/"))
    victim["size"] -= 100
    reason = refused(mosquitto, device, signed_offer(body, blobs_of(release2), keys, keys.release_key()))
    assert reason.startswith("mismatch:") and "longer than signed" in reason
    assert_on_factory(device)


def test_mix_and_match(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, release3: Release, keys: ota_keys.Keys
) -> None:
    # release 3's signed t03.bin served where release 2's is asked for
    mine = next(f for f in release2.files if f.path == "eco/tables/t03.bin")
    theirs = next(f for f in release3.files if f.path == "eco/tables/t03.bin")
    assert mine.sha256 != theirs.sha256
    offer = offer_of(release2, keys)
    offer.objects[mine.zsha256] = release3.blob_path(theirs).read_bytes()
    reason = refused(mosquitto, device, offer)
    assert reason.startswith("mismatch:") and "eco/tables/t03.bin" in reason
    assert_on_factory(device)


@pytest.mark.long  # (make long: make test stays within 10 minutes)
def test_truncated_chunk_stream(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys
) -> None:
    victim = next(f for f in release2.files if f.path.startswith("eco/tables/"))

    def cut(obj: str, off: int, data: bytes) -> list[tuple[int, bytes]] | None:
        if obj == victim.zsha256 and off >= 4096:
            return [(off, data[: len(data) // 2])]  # short answers from here on
        return None

    reason = refused(mosquitto, device, offer_of(release2, keys), cut)
    assert reason.startswith("stalled:")
    assert_on_factory(device)


def test_duplicated_chunk_stream(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys
) -> None:
    victim = next(f for f in release2.files if f.path.startswith("eco/tables/"))
    blob = release2.blob_path(victim).read_bytes()

    def repeat(obj: str, off: int, data: bytes) -> list[tuple[int, bytes]] | None:
        if obj == victim.zsha256 and off == 4096:
            return [(off, blob[off - 2048 : off - 2048 + len(data)])]  # the chunk before, again
        return None

    reason = refused(mosquitto, device, offer_of(release2, keys), repeat)
    assert reason.startswith("mismatch:") and victim.path in reason
    assert_on_factory(device)


@pytest.mark.long  # (make long: make test stays within 10 minutes)
def test_repeated_and_reordered_deliveries_are_harmless(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys
) -> None:
    # a lossy broker or link may deliver a chunk twice or late: the device
    # takes each byte once, and the update completes
    rnd = random.Random(3)

    def noisy(obj: str, off: int, data: bytes) -> list[tuple[int, bytes]] | None:
        r = rnd.random()
        if r < 0.2:
            return [(off, data), (off, data)]
        if r < 0.3:
            return []  # lost: asked again after the timeout
        return None

    srv = serve(mosquitto, device, offer_of(release2, keys), noisy)
    try:
        st = srv.wait_for(("failed", "committed", "rolled_back"), 120)
    finally:
        srv.close()
    assert st["state"] == "committed", (st, srv.seen[-3:])
    assert running_set(device)[:2] == (2, release2.sha256)


def test_files_of_a_feature_outside_its_folder_never_land(
    mosquitto: Mosquitto, device: DeviceProcess, release2: Release, keys: ota_keys.Keys
) -> None:
    # a validly signed release may only name files under its own features:
    # a path into another feature's folder that the release does not list
    body = body_of(release2)
    body["files"][0] = {**body["files"][0], "path": "vent/__init__.py"}
    body["files"].sort(key=lambda f: f["path"])
    reason = refused(mosquitto, device, signed_offer(body, blobs_of(release2), keys, keys.release_key()))
    assert reason.startswith("bad_path:")
    assert_on_factory(device)
