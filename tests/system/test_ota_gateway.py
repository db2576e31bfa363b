"""End to end, the gateway's part of an update: a real Mosquitto with
per-device credentials and ACLs, `permabeta gateway run --keys DIR` as a
process holding only root.json and gateway.key, releases built and signed
with real keys and published with `permabeta ota publish`, and
`permabeta devices update` following the update live. The device is played
by a test client speaking docs/ota.md section 3 with the device's own
credentials: it checks the offer's freshness statement, the manifest's
signatures, every chunk and every blob, and reports its statuses."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware.pb.peer.ota_transfer import FLAG_ERROR, decode_chunk
from gateway.paths import firmware_dir
from ota.keys import GATEWAY_KEY, ROOT_FILE, Keys, keygen
from ota.release import ZLIB_WBITS, Release, build

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.ota import ErrorChunk, KeyedGatewayProcess, OtaDevice, accept_offer, check_manifest
from ..support.wait import wait_for


@dataclass
class OtaSetup:
    gw: KeyedGatewayProcess
    keys: Keys
    r2: Release  # thermostat@2
    r3: Release  # thermostat@3, with a file release 2 lacks


def gateway_keys(keys: Keys, folder: Path) -> Path:
    """What a gateway holds of the maker's keys: the root and its own key."""
    folder.mkdir(mode=0o700)
    shutil.copy(keys.path / ROOT_FILE, folder / ROOT_FILE)
    shutil.copy(keys.path / GATEWAY_KEY, folder / GATEWAY_KEY)
    (folder / GATEWAY_KEY).chmod(0o600)
    return folder


@pytest.fixture(scope="module")
def ota(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto) -> Iterator[OtaSetup]:
    tmp = tmp_path_factory.mktemp("ota-gateway")
    keys = keygen(tmp / "maker-keys")
    features = tmp / "features"
    shutil.copytree(
        firmware_dir() / "features" / "thermostat",
        features / "thermostat",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    r2 = build("thermostat", [features / "thermostat"], "2026.11.1", tmp / "r2", counter=2, keys=keys)
    (features / "thermostat" / "notes.txt").write_text("what changed in 2026.12\n")
    r3 = build("thermostat", [features / "thermostat"], "2026.12.0", tmp / "r3", counter=3, keys=keys)
    gw = KeyedGatewayProcess(
        mosquitto.gateway_url,
        tmp / "gateway.db",
        tmp / "gateway.log",
        ["--keys", str(gateway_keys(keys, tmp / "gateway-keys")), "--update-deadline", "120"],
    ).start()
    try:
        yield OtaSetup(gw, keys, r2, r3)
    finally:
        gw.stop()


def uid_of(output: str) -> str:
    m = re.search(r"^update ([0-9a-f]{12}): ", output, re.M)
    assert m, output
    return m.group(1)


def api_update(gw: KeyedGatewayProcess, uid: str) -> dict[str, Any]:
    from gateway.client import ApiClient

    return dict(ApiClient.from_db(gw.db).request("GET", f"/api/v1/updates/{uid}"))


def online_device(ota: OtaSetup, mosquitto: Mosquitto, make_device: MakeDevice) -> OtaDevice:
    """A provisioned device's credentials, played by OtaDevice, online at the gateway."""
    provisioned = make_device(mosquitto, "thermostat")  # not started: the test plays it
    dev = OtaDevice(mosquitto, provisioned.id, provisioned.password, chunk=512)
    dev.hello()
    wait_for(lambda: ota.gw.device(dev.id)["online"], 10, what=f"{dev.id} online")
    return dev


def two_updates(
    ota: OtaSetup, mosquitto: Mosquitto, make_device: MakeDevice
) -> tuple[OtaDevice, OtaDevice, str, str, dict[str, Any]]:
    """Two devices online, each with an update under way (the first to
    release 3, the other to release 2, both published): (first, other,
    first's update id, other's update id, first's offer)."""
    gw = ota.gw
    gw.cli("ota", "publish", str(ota.r2.path))
    gw.cli("ota", "publish", str(ota.r3.path))
    first = online_device(ota, mosquitto, make_device)
    other = online_device(ota, mosquitto, make_device)
    uid = uid_of(gw.cli("devices", "update", first.id, "thermostat@3", "--no-wait").stdout)
    mine = uid_of(gw.cli("devices", "update", other.id, "thermostat@2", "--no-wait").stdout)
    offer = first.offer()
    other.offer()
    return first, other, uid, mine, offer


def test_releases_are_published_and_listed(ota: OtaSetup) -> None:
    out = ota.gw.cli("ota", "publish", str(ota.r2.path)).stdout
    assert out.startswith("published thermostat@2 (2026.11.1)") and ota.r2.sha256 in out
    assert "already published: thermostat@2" in ota.gw.cli("ota", "publish", str(ota.r2.path)).stdout
    ota.gw.cli("ota", "publish", str(ota.r3.path))
    listing = ota.gw.cli("ota", "releases").stdout
    assert re.search(rf"^{ota.r2.sha256[:12]}\s+thermostat@2\s+2026\.11\.1\s", listing, re.M), listing
    assert re.search(rf"^{ota.r3.sha256[:12]}\s+thermostat@3\s+2026\.12\.0\s", listing, re.M), listing
    as_json = json.loads(ota.gw.cli("ota", "releases", "--json").stdout)
    assert [r["ref"] for r in as_json] == ["thermostat@2", "thermostat@3"]


def test_a_release_signed_by_someone_else_is_refused(ota: OtaSetup, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    rel = build(
        "thermostat",
        [firmware_dir() / "features" / "thermostat"],
        "2099.1.1",
        tmp_path / "forged",
        counter=99,
        keys=stranger,
    )
    out = ota.gw.cli("ota", "publish", str(rel.path), check=False)
    assert out.returncode == 1 and "release refused: unknown_key" in out.stderr
    assert "thermostat@99" not in ota.gw.cli("ota", "releases").stdout


def test_a_device_pulls_an_update_and_it_succeeds_only_at_committed(
    ota: OtaSetup, mosquitto: Mosquitto, make_device: MakeDevice
) -> None:
    gw = ota.gw
    gw.cli("ota", "publish", str(ota.r2.path))
    gw.cli("ota", "publish", str(ota.r3.path))
    dev = online_device(ota, mosquitto, make_device)
    peer = online_device(ota, mosquitto, make_device)
    try:
        # the peer has an update of its own, of release 3
        peer_uid = uid_of(gw.cli("devices", "update", peer.id, "2026.12.0", "--no-wait").stdout)
        watching = gw.popen_cli("devices", "update", dev.id, ota.r2.sha256[:8], "--timeout", "60")

        offer = dev.offer()
        uid = offer["id"]
        accept_offer(offer, ota.keys.root_bytes, "thermostat", 2, dev.id)
        manifest = dev.fetch(uid, "manifest", offer["size"], offer["manifest"])
        body = check_manifest(manifest, ota.keys.root_bytes)
        assert (body["model"], body["counter"]) == ("thermostat", 2)
        dev.status(uid, "offered", counter=2)

        blobs = {f["zsha256"]: f for f in body["files"]}
        total = sum(f["zsize"] for f in blobs.values())
        done = 0
        for zsha, f in blobs.items():
            dev.status(uid, "downloading", bytes=done, total=total, counter=2)
            blob = dev.fetch(uid, zsha, f["zsize"], zsha)
            content = zlib.decompress(blob, ZLIB_WBITS)
            assert (len(content), hashlib.sha256(content).hexdigest()) == (f["size"], f["sha256"])
            done += f["zsize"]
        dev.status(uid, "downloading", bytes=total, total=total, counter=2)

        # while it is in progress: another release's blob, and the peer's update, are refused
        only_in_3 = next(f for f in ota.r3.files if f.zsha256 not in blobs)
        with pytest.raises(ErrorChunk, match="not part of update"):
            dev.fetch(uid, only_in_3.zsha256, only_in_3.zsize, only_in_3.zsha256)
        with pytest.raises(ErrorChunk, match=f"no update {peer_uid}"):
            dev.fetch(peer_uid, only_in_3.zsha256, only_in_3.zsize, only_in_3.zsha256)
        flags, _, _, reason = dev.request(uid, "manifest", offer["size"] + 1, 16)
        assert flags & 2 and b"past the end" in reason

        for state in ("staged", "verified", "activating", "trial"):
            dev.status(uid, state, counter=2)
        u = wait_for(lambda: (x := api_update(gw, uid))["state"] == "trial" and x, 10, what="trial")
        assert u["success"] is False and u["ended"] is False
        assert watching.poll() is None, "the CLI must not finish before committed"

        dev.status(uid, "committed", counter=2)
        out, err = watching.communicate(timeout=20)
        assert watching.returncode == 0, (out, err)
        assert f"update {uid} committed: thermostat@2 (2026.11.1) on {dev.id}" in out
        states = re.findall(r"\]\s.*?\s(\w+)$", out, re.M)
        assert states[0] == "offered" and states[-1] == "committed" and "downloading" in states, out

        u = api_update(gw, uid)
        assert u["success"] is True and u["state"] == "committed" and u["finished"] is not None
        assert u["served"] == offer["size"] + total  # every byte once, nothing for the refused requests
        assert u["errors"] == 2 and u["bytes"] == u["total"] == total
        assert api_update(gw, peer_uid)["state"] == "offered"  # untouched by all this

        # the device comes back running the new set; `devices show` tells both
        dev.hello(counter=2, manifest=offer["manifest"])
        wait_for(lambda: (gw.device(dev.id).get("ota") or {}).get("counter") == 2, 10, what="new hello")
        shown = gw.cli("devices", "show", dev.id).stdout
        assert f"release: counter 2, committed, manifest {offer['manifest'][:12]}" in shown
        assert f"update {uid}: thermostat@2 (2026.11.1) committed" in shown
        assert json.loads(gw.cli("devices", "show", dev.id, "--json").stdout)["updates"][0]["id"] == uid
        # and the same release again is refused: the device runs it already
        again = gw.cli("devices", "update", dev.id, "thermostat@2", check=False)
        assert again.returncode == 1 and "runs release counter 2" in again.stderr
    finally:
        dev.close()
        peer.close()


def test_a_rolled_back_update_exits_non_zero_with_the_reason(
    ota: OtaSetup, mosquitto: Mosquitto, make_device: MakeDevice
) -> None:
    gw = ota.gw
    gw.cli("ota", "publish", str(ota.r3.path))
    dev = online_device(ota, mosquitto, make_device)
    try:
        watching = gw.popen_cli("devices", "update", dev.id, "thermostat@3", "--timeout", "60")
        offer = dev.offer()
        for state in ("offered", "staged", "verified", "activating", "trial"):
            dev.status(offer["id"], state, counter=3)
        dev.status(offer["id"], "rolled_back", reason="self-test of thermostat failed", counter=3)
        out, _ = watching.communicate(timeout=20)
        assert watching.returncode == 1
        assert f"update {offer['id']} rolled_back: self-test of thermostat failed" in out
    finally:
        dev.close()


def test_a_device_streams_a_release_under_a_small_window_with_acknowledgements(
    ota: OtaSetup, mosquitto: Mosquitto, make_device: MakeDevice
) -> None:
    gw = ota.gw
    gw.cli("ota", "publish", str(ota.r2.path))
    dev = online_device(ota, mosquitto, make_device)
    try:
        uid = uid_of(gw.cli("devices", "update", dev.id, "thermostat@2", "--no-wait").stdout)
        offer = dev.offer()
        (manifest,) = dev.stream(uid, [("manifest", offer["size"], offer["manifest"])], win=2, chunk=256)
        body = check_manifest(manifest, ota.keys.root_bytes)
        files = [(f["zsha256"], f["zsize"], f["zsha256"]) for f in body["files"]]
        # every blob in one stream, in chunks of 512 bytes, 4 of them out at a time
        blobs = dev.stream(uid, files, win=4, chunk=512)
        for f, blob in zip(body["files"], blobs, strict=True):
            content = zlib.decompress(blob, ZLIB_WBITS)
            assert (len(content), hashlib.sha256(content).hexdigest()) == (f["size"], f["sha256"])
        # the largest blob again, from its middle, with the largest window and chunk
        big = max(body["files"], key=lambda f: f["zsize"])
        whole = next(b for f, b in zip(body["files"], blobs, strict=True) if f is big)
        dev.stream(uid, [(big["zsha256"], big["zsize"], big["zsha256"])], win=64, chunk=4096)
        total = offer["size"] + sum(f["zsize"] for f in body["files"]) + len(whole)
        u = wait_for(lambda: (x := api_update(gw, uid))["served"] >= total and x, 10, what="bytes counted")
        assert u["errors"] == 0 and u["requests"] >= 3 and u["state"] == "offered"
        # an object past its end, or not of the release, is answered with an error chunk
        with pytest.raises(ErrorChunk, match="past the end"):
            dev.stream(uid, [("manifest", offer["size"] + 1, offer["manifest"])])
        only_in_3 = next(f for f in ota.r3.files if f.zsha256 not in {g[0] for g in files})
        with pytest.raises(ErrorChunk, match="not part of update"):
            dev.stream(uid, [(only_in_3.zsha256, only_in_3.zsize, only_in_3.zsha256)])
    finally:
        dev.close()


@pytest.mark.long  # (slow: make long)
def test_a_flood_of_bad_version_2_requests_does_not_stop_the_gateway_serving_another_device(
    ota: OtaSetup, mosquitto: Mosquitto, make_device: MakeDevice
) -> None:
    gw = ota.gw
    victim, attacker, uid, mine, offer = two_updates(ota, mosquitto, make_device)
    try:
        big = max(ota.r3.files, key=lambda f: f.zsize)
        good = {"v": 2, "dev": attacker.id, "id": mine, "s": 1, "objs": [["manifest", 0, 1]], "win": 1}
        garbage: list[bytes | str] = [
            b"\xff\xfe not json",
            "[]",
            '{"v": 2}',
            "[" * 5000 + "]" * 5000,
            json.dumps(good | {"chunk": 63}),
            json.dumps(good | {"chunk": 4096, "win": 65}),
            json.dumps(good | {"chunk": 4096, "objs": [["manifest", 2**32 - 1, 1]]}),
            json.dumps(good | {"chunk": 4096, "objs": [["manifest", 0, 1]] * 17}),
            json.dumps(good | {"chunk": 4096, "ack": 0}),
            json.dumps(good | {"chunk": 4096, "s": 2**32}),
            json.dumps(good | {"chunk": 4096, "dev": victim.id}),  # spoofed
            # valid, and refused: the victim's update, bytes past the end, an unknown update
            json.dumps(good | {"chunk": 4096, "id": uid, "objs": [[big.zsha256[:16], 0, big.zsize]]}),
            json.dumps(good | {"chunk": 64, "objs": [["manifest", 0, 2**31]]}),
            json.dumps(good | {"chunk": 64, "id": "0123456789ab"}),
            # the victim's stream acknowledged, with the victim's update id
            json.dumps({"v": 2, "dev": attacker.id, "id": uid, "s": 0, "ack": 0, "win": 64}),
        ]
        stop = threading.Event()
        sent = [0]

        def flood() -> None:
            # a burst, then a steady flood for as long as the victim downloads: about 1000 a
            # second, within what the gateway reads (faster, and the broker drops what it
            # cannot queue for the gateway, whoever sent it: docs/security.md 7)
            for _ in range(100):
                for g in garbage:
                    attacker.send(g)
                sent[0] += len(garbage)
            while not stop.is_set():
                for g in garbage:
                    attacker.send(g)
                sent[0] += len(garbage)
                time.sleep(len(garbage) / 1000)

        flooding = threading.Thread(target=flood, daemon=True)
        flooding.start()
        try:
            wait_for(lambda: sent[0] >= 100 * len(garbage), 20, what="the burst sent")
            (manifest,) = victim.stream(
                uid, [("manifest", offer["size"], offer["manifest"])], win=4, chunk=64
            )
            during, until = sent[0], time.monotonic() + 2.0
            files = [(f.zsha256, f.zsize, f.zsha256) for f in ota.r3.files]
            want = [ota.r3.blob_path(f).read_bytes() for f in ota.r3.files]
            rounds = 0
            while time.monotonic() < until:  # (the release again and again, in small chunks)
                assert victim.stream(uid, files, win=4, chunk=64) == want
                rounds += 1
            assert sent[0] > during + 1000, "the flood stopped before the downloads ended"
        finally:
            stop.set()
            flooding.join(10)
        check_manifest(manifest, ota.keys.root_bytes)
        assert rounds >= 3, rounds
        assert gw.proc is not None and gw.proc.poll() is None, "the gateway stopped"
        # it goes on serving once the flood is over
        assert victim.stream(uid, [(big.zsha256, big.zsize, big.zsha256)]) == [want[ota.r3.files.index(big)]]
        u = api_update(gw, uid)
        assert u["errors"] == 0 and u["state"] == "offered"
        assert api_update(gw, mine)["served"] == 0  # nothing it asked for existed
        # and the attacker saw none of the victim's bytes: only error chunks on its own topic
        seen = [m for m in attacker.client.messages(1.0) + attacker._backlog if m[0].endswith("/ota/chunk")]
        assert seen
        for topic, payload, _ in seen:
            assert topic == f"pb/{attacker.id}/ota/chunk"
            flags, *_, data = decode_chunk(payload)
            assert flags == FLAG_ERROR, bytes(data)
    finally:
        victim.close()
        attacker.close()


@pytest.mark.long  # (slow: make long)
def test_a_device_asking_for_its_own_update_again_and_again_does_not_starve_another_s_download(
    ota: OtaSetup, mosquitto: Mosquitto, make_device: MakeDevice
) -> None:
    # each request of about 500 bytes has 64 chunks queued: one device asking 500 times a
    # second once filled the gateway's queue, and another device's chunks were dropped
    gw = ota.gw
    victim, greedy, uid, mine, offer = two_updates(ota, mosquitto, make_device)
    try:
        big = max(ota.r2.files, key=lambda f: f.zsize)
        objs = [[big.zsha256[:16], 0, big.zsize]] * 16
        ask = {"v": 2, "dev": greedy.id, "id": mine, "objs": objs, "win": 64, "chunk": 64}
        stop = threading.Event()
        sent = [0]

        def greed() -> None:
            while not stop.is_set():
                greedy.send(json.dumps(ask | {"s": sent[0]}))
                sent[0] += 1
                time.sleep(0.002)

        asking = threading.Thread(target=greed, daemon=True)
        asking.start()
        try:
            wait_for(lambda: sent[0] >= 200, 20, what="the requests under way")
            before, started, slowest = sent[0], time.monotonic(), 0.0
            while time.monotonic() - started < 1.5:  # (the manifest again and again, meanwhile)
                t = time.monotonic()
                (manifest,) = victim.stream(
                    uid, [("manifest", offer["size"], offer["manifest"])], win=4, chunk=64, tries=3
                )
                slowest = max(slowest, time.monotonic() - t)
            during = sent[0] - before
        finally:
            stop.set()
            asking.join(10)
        check_manifest(manifest, ota.keys.root_bytes)
        assert during >= 300, f"only {during} requests while the victim downloaded"
        assert slowest < 2, f"the manifest ({offer['size']} bytes) took {slowest:.1f} s"
        assert api_update(gw, mine)["served"] > 0 and api_update(gw, uid)["errors"] == 0
    finally:
        victim.close()
        greedy.close()
