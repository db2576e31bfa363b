"""Release notes (docs/ota.md 2.1): UTF-8 text of at most 8 KiB, signed in
the manifest as the hashes of their blob, which travels with the release
and which a device never fetches; refused clearly at build when they are
not text or too long; a notes blob or entry that is not what was signed
does not verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware.pb.ota import trust
from gateway.archive import pack_release, unpack_release
from ota.errors import BuildError, VerifyError
from ota.inspect import describe
from ota.keys import Keys, load_keys
from ota.release import MAX_NOTES, Release, build, compress, read
from ota.verify import Device, verify_release

from .helpers import resign

NOTES = "Gentler heating at night.\n\tNew: eco, which pre-heats while energy is cheap (ü, €)."


def _build(tmp_path: Path, features_dir: Path, keys: Keys, notes: str | None, name: str = "r") -> Release:
    return build(
        "thermostat", [features_dir / "thermostat"], "2.0", tmp_path / name, 2, ("py",), keys, notes=notes
    )


def test_notes_are_signed_with_the_release_and_read_back(
    tmp_path: Path, features_dir: Path, keys: Keys
) -> None:
    rel = _build(tmp_path, features_dir, keys, NOTES)
    entry = rel.body["notes"]
    assert set(entry) == {"size", "sha256", "zsize", "zsha256"} and entry["size"] == len(NOTES.encode())
    assert rel.notes == NOTES and verify_release(rel.path, keys).notes == NOTES
    assert (
        "release notes (signed with it):" in describe(rel).to_text()
        and describe(rel).to_dict()["notes"] == NOTES
    )
    # not a file of the set: nothing a device installs or fetches
    assert all(f.path != "notes" and f.sha256 != entry["sha256"] for f in rel.files)
    # a device takes the manifest as it takes one without notes
    _, body, _ = trust.open_envelope(rel.manifest)
    trust.check_manifest(body)
    trust.check_for_device(body, "thermostat", 1, 0)
    # the archive a maker publishes carries them
    unpack_release(pack_release(rel), tmp_path / "unpacked")
    assert verify_release(tmp_path / "unpacked", keys).notes == NOTES
    assert _build(tmp_path, features_dir, keys, None, "plain").notes is None


@pytest.mark.parametrize(
    ("notes", "words"),
    [
        ("x" * (MAX_NOTES + 1), "more than the 8192 bytes"),
        ("€" * (MAX_NOTES // 3 + 1), "more than the 8192 bytes"),
        ("ring the bell\a", "control character"),
        ("\x1b[31mred\x1b[0m", "control character"),
        ("half a pair \udc80", "not UTF-8 text"),
    ],
)
def test_notes_that_are_not_text_or_too_long_are_refused_at_build(
    tmp_path: Path, features_dir: Path, keys: Keys, notes: str, words: str
) -> None:
    with pytest.raises(BuildError, match=words):
        _build(tmp_path, features_dir, keys, notes)
    assert not (tmp_path / "r").exists()


def test_ota_build_takes_notes_from_a_file(
    tmp_path: Path, features_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    assert ota_cli_main("ota", "keygen", "--out", str(keys)) == 0
    (tmp_path / "notes.txt").write_text(NOTES)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe notes")
    words = ["ota", "build", "--model", "thermostat", "--features", str(features_dir / "thermostat")]
    words += ["--version", "2.0", "--counter", "2", "--keys", str(keys)]
    assert ota_cli_main(*words, "--out", str(tmp_path / "r"), "--notes", str(tmp_path / "notes.txt")) == 0
    assert read(tmp_path / "r").notes == NOTES
    capsys.readouterr()
    assert ota_cli_main(*words, "--out", str(tmp_path / "r2"), "--notes", str(tmp_path / "bin.txt")) == 1
    assert "not UTF-8 text" in capsys.readouterr().err and not (tmp_path / "r2").exists()
    assert ota_cli_main(*words, "--out", str(tmp_path / "r3"), "--notes", str(tmp_path / "none.txt")) == 1
    assert "cannot read the notes" in capsys.readouterr().err
    assert ota_cli_main("ota", "inspect", str(tmp_path / "r")) == 0
    assert "Gentler heating at night." in capsys.readouterr().out


def ota_cli_main(*words: str) -> int:
    """`permabeta WORDS...` in this process (the ota commands are registered by gateway.cli)."""
    from gateway.cli import main

    return main(list(words))


def test_notes_changed_after_signing_do_not_verify(tmp_path: Path, features_dir: Path, keys: Keys) -> None:
    rel = _build(tmp_path, features_dir, keys, NOTES)
    blob = rel.path / "blobs" / f"{rel.body['notes']['sha256']}.z"
    blob.write_bytes(compress(b"Nothing changes. Trust us."))
    with pytest.raises(VerifyError) as err:
        verify_release(rel.path, keys)
    assert err.value.code == "mismatch"
    blob.unlink()
    with pytest.raises(VerifyError) as err:
        verify_release(rel.path, keys)
    assert err.value.code == "missing_blob"


@pytest.mark.parametrize(
    "entry",
    [
        "see the web site",
        {"size": 10, "sha256": "0" * 64, "zsize": 10},
        {"size": MAX_NOTES + 1, "sha256": "0" * 64, "zsize": 10, "zsha256": "0" * 64},
        {"size": -1, "sha256": "0" * 64, "zsize": 10, "zsha256": "0" * 64},
        {"size": 10, "sha256": "X" * 64, "zsize": 10, "zsha256": "0" * 64},
    ],
)
def test_a_notes_entry_that_is_not_one_is_refused_even_when_signed(
    tmp_path: Path, features_dir: Path, keys: Keys, entry: object
) -> None:
    rel = _build(tmp_path, features_dir, keys, None)
    resign(rel.path, [load_keys(keys.path).release_key()], lambda body: body.update(notes=entry))
    with pytest.raises(VerifyError) as err:
        verify_release(rel.path, keys, Device("thermostat", frozenset({"temperature", "relay"}), 1, 0))
    assert err.value.code == "bad_manifest"


def test_micropython_takes_a_manifest_with_notes_as_one_without(
    tmp_path: Path, features_dir: Path, keys: Keys
) -> None:
    # the device's own check, on the MicroPython unix port: the notes entry is a field it skips
    from ..support.micropython import run

    rel = _build(tmp_path, features_dir, keys, "x" * MAX_NOTES)
    code = (
        "import sys\nfrom pb.ota import trust\n"
        "raw, body, sigs = trust.open_envelope(open(sys.argv[1], 'rb').read())\n"
        "trust.check_manifest(body)\n"
        "trust.check_for_device(body, 'thermostat', 1, 0)\n"
        "print(body['notes']['size'], len(raw))\n"
    )
    size, signed = run(code, rel.manifest).split()
    assert int(size) == MAX_NOTES and int(signed) < 2000  # 8 KiB of notes, a manifest of 1-2 KB
