"""MicroPython images in a release (ota/image.py, docs/ota.md 2.1 and 4.11):
the blob of segments, the manifest's entry and the device's rules for it,
`ota build --image` and `ota inspect`, and what the gateway keeps and serves.
Parsers meet arbitrary bytes here (hypothesis): a broken blob or entry is
always a ReleaseError or TrustError, never anything else."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.pb.errors import TrustError
from firmware.pb.ota import image as device_image
from firmware.pb.ota import trust
from gateway.cli import main
from gateway.releases import ReleaseStore
from gateway.store import Store
from ota import image as ota_image
from ota.errors import BuildError, ReleaseError, VerifyError
from ota.keys import Keys
from ota.release import build, read, sign
from ota.verify import verify_release

from ..support.images import app_image


@given(st.binary(min_size=1, max_size=20_000), st.sampled_from([4096, 8192, 65536]))
@settings(max_examples=60, deadline=None)
def test_a_packed_image_unpacks_to_itself(data: bytes, segment: int) -> None:
    blob = ota_image.pack(data, segment)
    e = ota_image.ImageEntry(
        "1.0",
        len(data),
        hashlib.sha256(data).hexdigest(),
        len(blob),
        hashlib.sha256(blob).hexdigest(),
        segment,
    )
    assert ota_image.unpack(blob, e) == data
    # as the device reads it: frame by frame, each naming its segment's hash
    at = 0
    while at < len(blob):
        n, sha = device_image.frame(blob[at : at + device_image.FRAME])
        assert hashlib.sha256(blob[at + 36 : at + 36 + n]).hexdigest() == sha
        at += 36 + n
    assert at == len(blob)


@given(st.binary(max_size=3000), st.integers(0, 2999), st.integers(1, 255))
@settings(max_examples=100, deadline=None)
def test_a_broken_image_blob_is_a_mismatch(data: bytes, at: int, flip: int) -> None:
    good = app_image(9000, 1)
    blob = bytearray(ota_image.pack(good, 4096))
    e = ota_image.ImageEntry(
        "1.0", len(good), hashlib.sha256(good).hexdigest(), len(blob), hashlib.sha256(blob).hexdigest(), 4096
    )
    blob[at % len(blob)] ^= flip
    for bad in (bytes(blob), data):
        with pytest.raises(ReleaseError) as err:
            ota_image.unpack(bad, e)
        assert err.value.code == "mismatch"


@given(
    st.dictionaries(
        st.sampled_from(["version", "size", "sha256", "zsize", "zsha256", "segment", "x"]),
        st.one_of(st.integers(-5, 2**40), st.text(max_size=70), st.none(), st.booleans()),
    )
)
@settings(max_examples=300, deadline=None)
def test_an_image_entry_is_checked_field_by_field(entry: dict[str, Any]) -> None:
    try:
        device_image.check_entry(entry)
    except TrustError as exc:
        assert exc.code == "bad_manifest" and exc.message.startswith("image")
    else:  # (only a complete, well-formed one passes)
        assert 0 < entry["size"] <= device_image.MAX_IMAGE and entry["segment"] % 4096 == 0


@given(st.binary(min_size=0, max_size=80))
def test_the_device_reads_any_frame_or_refuses_it(head: bytes) -> None:
    try:
        n, sha = device_image.frame(head)
    except device_image.Refused as exc:
        assert len(head) != device_image.FRAME and str(exc).startswith("mismatch:")
    else:
        assert 0 <= n < 2**32 and len(sha) == 64


def test_a_release_carries_an_image_built_verified_inspected_and_kept_by_the_gateway(
    tmp_path: Path, keys: Keys, features_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = tmp_path / "firmware.bin"
    img.write_bytes(app_image(100_000, 1))
    out = tmp_path / "r"
    code = main(
        [
            "ota", "build", "--model", "thermostat", "--features", str(features_dir / "thermostat"),
            "--version", "3.0", "--out", str(out), "--counter", "3", "--form", "mpy",
            "--image", str(img), "--image-version", "1.29.1", "--keys", str(keys.path),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    rel = verify_release(out, keys)
    assert rel.image is not None and rel.image.size == 100_000 and rel.image.version == "1.29.1"
    assert (
        rel.image_path is not None
        and rel.image_path.name == hashlib.sha256(img.read_bytes()).hexdigest() + ".z"
    )
    capsys.readouterr()
    assert main(["ota", "inspect", str(out)]) == 0
    assert "carries MicroPython image 1.29.1: 100000 bytes" in capsys.readouterr().out
    assert main(["ota", "inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image"]["sha256"] == rel.image.sha256
    # the gateway keeps the image's blob and serves it as an object of the release
    store = ReleaseStore(Store(tmp_path / "gw.db"), root=keys.root_bytes)
    stored, new = store.add(out, 1.0)
    assert new and stored.summary()["image"] == "1.29.1"
    assert stored.objects[rel.image.zsha256].size == rel.image.zsize
    assert store.read(stored, rel.image.zsha256, 0, 36) == rel.image_path.read_bytes()[:36]
    # a blob of the image changed after signing: refused, by the tools and the gateway
    blob = bytearray(rel.image_path.read_bytes())
    blob[100] ^= 1
    rel.image_path.write_bytes(bytes(blob))
    with pytest.raises(VerifyError) as err:
        verify_release(out, keys)
    assert err.value.code == "mismatch"


def test_ota_build_refuses_what_is_not_an_app_image(tmp_path: Path, keys: Keys, features_dir: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"MicroPython v1.29\n")
    with pytest.raises(BuildError, match="is not an ESP32 app image"):
        build(
            "thermostat",
            [features_dir / "thermostat"],
            "3",
            tmp_path / "r",
            3,
            image=bad,
            image_version="1.29",
        )
    with pytest.raises(BuildError, match="needs its version"):
        build("thermostat", [features_dir / "thermostat"], "3", tmp_path / "r2", 3, image=bad)


def test_a_release_whose_image_blob_is_gone_cannot_be_read_or_signed(
    tmp_path: Path, keys: Keys, features_dir: Path
) -> None:
    img = tmp_path / "firmware.bin"
    img.write_bytes(app_image(5000, 1))
    rel = build(
        "thermostat", [features_dir / "thermostat"], "3", tmp_path / "r", 3, image=img, image_version="1"
    )
    assert rel.image_path is not None
    rel.image_path.unlink()
    with pytest.raises(ReleaseError, match="the MicroPython image is missing"):
        read(rel.path)
    with pytest.raises(ReleaseError):
        sign(rel.path, keys)


def test_a_manifest_with_an_image_is_version_2_and_only_it(
    tmp_path: Path, keys: Keys, features_dir: Path
) -> None:
    img = tmp_path / "firmware.bin"
    img.write_bytes(app_image(5000, 1))
    rel = build(
        "thermostat", [features_dir / "thermostat"], "3", tmp_path / "r", 3, image=img, image_version="1"
    )
    assert rel.body["v"] == 2
    plain = build("thermostat", [features_dir / "thermostat"], "3", tmp_path / "p", 4)
    assert plain.body["v"] == 1
    # a runtime from before images reads only version 1: it refuses the release whole
    for body, code in (
        ({**plain.body, "v": 2}, "bad_envelope"),  # version 2 without an image
        ({**rel.body, "v": 1}, "bad_manifest"),  # an image in a version 1 manifest
    ):
        with pytest.raises(TrustError) as err:
            trust.check_manifest(trust.signed_object(json.dumps(body).encode()))
        assert err.value.code == code
