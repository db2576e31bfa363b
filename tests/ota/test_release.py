"""Building, reading and signing releases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import pytest

from firmware.pb.errors import TrustError
from firmware.pb.manifest import check_manifest as check_feature_manifest
from firmware.pb.ota import trust
from ota.errors import BuildError, KeyStoreError, ReleaseError
from ota.keys import Keys, load_keys
from ota.release import Release, build, read, sign
from ota.verify import verify_release

from .helpers import edit_manifest, write_feature


def test_build_the_thermostat(release: Release, features_dir: Path) -> None:
    src = features_dir / "thermostat"
    body = release.body
    assert (body["v"], body["type"], body["model"], body["counter"]) == (1, "release", "thermostat", 2)
    assert body["version"] == "2026.11.1" and body["api"] == 1
    assert body["requires"] == ["relay", "temperature"]
    assert body["features"] == {
        "thermostat": {
            "version": "1.1.0",
            "permissions": {
                "reads": ["temperature"],
                "drives": ["relay"],
                "publishes": ["setpoint", "heating", "mode", "offset"],
            },
        }
    }
    assert [f.path for f in release.files] == ["thermostat/__init__.py", "thermostat/manifest.json"]
    for f in release.files:
        content = (src / f.path.split("/", 1)[1]).read_bytes()
        blob = release.blob_path(f).read_bytes()
        assert release.blob_path(f).name == hashlib.sha256(content).hexdigest() + ".z"
        assert (f.size, f.sha256) == (len(content), hashlib.sha256(content).hexdigest())
        assert (f.zsize, f.zsha256) == (len(blob), hashlib.sha256(blob).hexdigest())
        assert blob[0] == 0x28  # zlib header: deflate, window 2^(2+8)
        assert zlib.decompressobj(10).decompress(blob) == content
    assert sorted(p.name for p in release.path.iterdir()) == ["blobs", "manifest.json"]
    assert release.sha256 == hashlib.sha256((release.path / "manifest.json").read_bytes()).hexdigest()


def test_build_skips_caches_compiled_files_and_dotfiles(tmp_path: Path, features_dir: Path) -> None:
    src = features_dir / "thermostat"
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (src / "old.pyc").write_bytes(b"\0")
    (src / ".DS_Store").write_bytes(b"\0")
    (src / ".git").mkdir()
    (src / ".git" / "config").write_text("x")
    (src / "lib").mkdir()
    (src / "lib" / "curve.py").write_text("X = 1\n")
    rel = build("thermostat", [src], "1", tmp_path / "r", counter=1, forms=("py",))
    assert [f.path for f in rel.files] == [
        "thermostat/__init__.py",
        "thermostat/lib/curve.py",
        "thermostat/manifest.json",
    ]


def test_counter_defaults_to_the_time(tmp_path: Path, features_dir: Path) -> None:
    rel = build(
        "thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", now=1795400000.7, forms=("py",)
    )
    assert rel.counter == 1795400000 and rel.body["created"] == 1795400000


def test_unsigned_build_and_sign_keep_the_signed_string(
    tmp_path: Path, keys: Keys, features_dir: Path
) -> None:
    rel = build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))
    assert rel.signatures == ()
    before = json.loads(rel.manifest)["signed"]
    signed = sign(rel.path, keys)
    assert json.loads(signed.manifest)["signed"] == before
    assert len(signed.signatures) == 1
    assert sign(rel.path, keys).signatures == signed.signatures  # signing again changes nothing
    verify_release(rel.path, keys.path)


def test_build_compiles_modules_with_mpy_cross(tmp_path: Path, features_dir: Path) -> None:
    rel = build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("mpy",))
    assert [f.path for f in rel.files] == ["thermostat/__init__.mpy", "thermostat/manifest.json"]
    mpy = zlib.decompress(rel.blob_path(rel.files[0]).read_bytes())
    assert mpy[:1] == b"M"


def test_build_refuses_a_feature_that_does_not_compile(tmp_path: Path, features_dir: Path) -> None:
    (features_dir / "thermostat" / "broken.py").write_text("def (:\n")
    with pytest.raises(BuildError, match=r"mpy-cross failed on thermostat/broken\.py"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("mpy",))
    assert not (tmp_path / "r").exists()


def test_path_escape_is_refused_at_build(tmp_path: Path, features_dir: Path) -> None:
    outside = tmp_path / "secrets"
    outside.mkdir()
    (outside / "wifi.txt").write_text("password")
    (features_dir / "thermostat" / "data").symlink_to(outside)
    with pytest.raises(BuildError, match="symbolic link"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))
    (features_dir / "thermostat" / "data").unlink()
    (features_dir / "thermostat" / "wifi.txt").symlink_to(outside / "wifi.txt")
    with pytest.raises(BuildError, match="symbolic link"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["README.md", "a b.py", "ünï.py"])
def test_bad_file_name_is_refused_at_build(tmp_path: Path, features_dir: Path, name: str) -> None:
    (features_dir / "thermostat" / name).write_text("x")
    with pytest.raises(BuildError, match=r"cannot ship: .* character outside a-z 0-9 _ \. -"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))


def test_too_long_path_is_refused_at_build(tmp_path: Path, features_dir: Path) -> None:
    (features_dir / "thermostat" / ("x" * 90 + ".py")).write_text("x")
    with pytest.raises(BuildError, match="1-96 characters"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))


def test_feature_name_must_match_its_folder(tmp_path: Path, features_dir: Path) -> None:
    os.rename(features_dir / "thermostat", features_dir / "heater")
    with pytest.raises(BuildError, match="does not match folder 'heater'"):
        build("thermostat", [features_dir / "heater"], "1", tmp_path / "r", counter=1, forms=("py",))


def test_invalid_feature_manifest_is_refused(tmp_path: Path, features_dir: Path) -> None:
    edit_manifest(features_dir / "thermostat", version="one")
    with pytest.raises(BuildError, match="semver"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))
    (features_dir / "thermostat" / "manifest.json").write_text("{")
    with pytest.raises(BuildError, match="not JSON"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))
    with pytest.raises(BuildError, match="not a feature"):
        build("thermostat", [tmp_path], "1", tmp_path / "r", counter=1, forms=("py",))


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        (
            {"comfort": {"better": "lower", "of": {"median": "sensors.temperature"}}},
            "unknown aggregation 'median'",
        ),
        ({"comfort": {"better": "less", "of": {"mean": "sensors.temperature"}}}, "better must be"),
        ({"comfort": {"better": "lower", "of": {"mean": "sensors.humidity"}}}, "does not require 'humidity'"),
        (
            {"comfort": {"better": "lower", "of": {"mean": "features.thermostat.target"}}},
            "does not publish 'target'",
        ),
    ],
)
def test_a_malformed_metrics_declaration_is_refused(
    tmp_path: Path, features_dir: Path, metrics: dict[str, Any], message: str
) -> None:
    # the device's own check lets the key pass (it ignores keys it does not
    # know); the build refuses what a rollout could not judge by
    edit_manifest(features_dir / "thermostat", metrics=metrics)
    mf = features_dir / "thermostat" / "manifest.json"
    check_feature_manifest(json.loads(mf.read_text()), "thermostat")
    with pytest.raises(BuildError) as exc:
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))
    assert str(exc.value).startswith(f"{mf.resolve()}: feature thermostat: metric 'comfort': ")
    assert message in str(exc.value)
    assert not (tmp_path / "r").exists()


def test_unknown_model_is_refused(tmp_path: Path, features_dir: Path) -> None:
    with pytest.raises(BuildError, match=r"unknown model 'toaster' \(known: shirt, thermostat\)"):
        build("toaster", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))


def test_hardware_no_board_of_the_model_has_is_refused(tmp_path: Path, features_dir: Path) -> None:
    with pytest.raises(BuildError, match=r"no thermostat board can have .*thermostat-v1 lacks vent"):
        build(
            "thermostat",
            [features_dir / "thermostat", features_dir / "vent"],
            "1",
            tmp_path / "r",
            counter=1,
            forms=("py",),
        )


def test_features_must_agree_on_the_api(tmp_path: Path, features_dir: Path, eco: Path) -> None:
    edit_manifest(eco, api=2)
    with pytest.raises(BuildError, match=r"different runtime APIs .*eco needs 2, thermostat needs 1"):
        build("thermostat", [features_dir / "thermostat", eco], "1", tmp_path / "r", counter=1, forms=("py",))


def test_requires_is_the_union_of_the_features(tmp_path: Path, features_dir: Path, eco: Path) -> None:
    edit_manifest(eco, requires=["temperature", "humidity"])
    rel = build(
        "thermostat", [eco, features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",)
    )
    assert rel.body["requires"] == ["humidity", "relay", "temperature"]
    assert list(rel.features) == ["eco", "thermostat"]
    assert [f.path for f in rel.files][:2] == ["eco/__init__.py", "eco/manifest.json"]


def test_a_feature_given_twice_is_refused(tmp_path: Path, features_dir: Path) -> None:
    t = features_dir / "thermostat"
    with pytest.raises(BuildError, match="given twice"):
        build("thermostat", [t, t], "1", tmp_path / "r", counter=1, forms=("py",))


def test_identical_files_share_one_blob(tmp_path: Path, features_dir: Path) -> None:
    (features_dir / "thermostat" / "a.txt").write_text("same")
    (features_dir / "thermostat" / "b.txt").write_text("same")
    rel = build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))
    assert len({f.sha256 for f in rel.files}) == 3 == len(list((rel.path / "blobs").iterdir()))


@pytest.mark.parametrize("counter", [0, -1, True])
def test_bad_counter_is_refused(tmp_path: Path, features_dir: Path, counter: int) -> None:
    with pytest.raises(BuildError, match="counter"):
        build(
            "thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=counter, forms=("py",)
        )


def test_more_files_than_a_device_takes_are_refused(tmp_path: Path, features_dir: Path) -> None:
    for i in range(80):
        (features_dir / "thermostat" / f"part_{i:03d}.py").write_text(f"X = {i}\n")
    with pytest.raises(BuildError, match=r"more than 64 files"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))


def test_a_manifest_larger_than_a_device_reads_is_refused(tmp_path: Path, features_dir: Path) -> None:
    for i in range(60):
        name = f"a_rather_long_module_name_to_fill_the_manifest_{i:03d}.py"
        (features_dir / "thermostat" / name).write_text(f"X = {i}\n")
    with pytest.raises(BuildError, match=r"exceeds the 16384 a device accepts .*ship fewer files"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))


def test_an_existing_release_is_never_overwritten(
    tmp_path: Path, release: Release, features_dir: Path
) -> None:
    before = release.manifest
    with pytest.raises(BuildError, match="never overwritten"):
        build("thermostat", [features_dir / "thermostat"], "2", release.path, counter=3, forms=("py",))
    assert read(release.path).manifest == before
    (tmp_path / "empty").mkdir()
    assert (
        build(
            "thermostat", [features_dir / "thermostat"], "2", tmp_path / "empty", counter=3, forms=("py",)
        ).counter
        == 3
    )


def test_a_failed_build_leaves_nothing(tmp_path: Path, features_dir: Path) -> None:
    (features_dir / "thermostat" / "BAD").write_text("x")
    with pytest.raises(BuildError):
        build(
            "thermostat", [features_dir / "thermostat"], "1", tmp_path / "out" / "r", counter=1, forms=("py",)
        )
    assert list(tmp_path.glob("**/*.tmp")) == [] and not (tmp_path / "out" / "r").exists()


def test_build_signs_only_with_a_release_key(tmp_path: Path, keys: Keys, features_dir: Path) -> None:
    (keys.path / "release.key").unlink()
    with pytest.raises(KeyStoreError, match=r"no release\.key"):
        build(
            "thermostat",
            [features_dir / "thermostat"],
            "1",
            tmp_path / "r",
            counter=1,
            keys=load_keys(keys.path),
            forms=("py",),
        )
    assert not (tmp_path / "r").exists()


def test_read_a_release_with_a_missing_blob(release: Release) -> None:
    release.blob_path(release.files[0]).unlink()
    with pytest.raises(ReleaseError, match=r"blob of thermostat/__init__\.py is missing") as err:
        read(release.path)
    assert err.value.code == "missing_blob"


def test_read_what_is_not_a_release(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match=r"no manifest\.json"):
        read(tmp_path)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ReleaseError) as err:
        read(tmp_path)
    assert err.value.code == "bad_envelope"


def test_sign_refuses_a_tampered_blob(release: Release, keys: Keys) -> None:
    blob = release.blob_path(release.files[0])
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    with pytest.raises(ReleaseError) as err:
        sign(release.path, keys)
    assert err.value.code == "mismatch"


def test_a_feature_of_my_own(tmp_path: Path) -> None:
    f = write_feature(
        tmp_path / "src" / "vent_log",
        {"name": "vent_log", "version": "0.1.0-beta", "api": 1, "requires": ["vent"]},
    )
    rel = build("shirt", [f], "0.1", tmp_path / "r", counter=5, forms=("py",))
    assert rel.body["features"]["vent_log"]["permissions"] == {"reads": [], "drives": [], "publishes": []}
    trust.check_manifest(rel.body)


# ---- both forms of the modules in one release ----------------------------------


def test_by_default_a_release_carries_both_forms_of_every_module(tmp_path: Path, features_dir: Path) -> None:
    rel = build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1)
    assert [f.path for f in rel.files] == [
        "thermostat/__init__.mpy",
        "thermostat/__init__.py",
        "thermostat/manifest.json",
    ]
    assert rel.forms == ("py", "mpy")
    by_path = {f.path: f for f in rel.files}
    source = (features_dir / "thermostat" / "__init__.py").read_bytes()
    assert zlib.decompress(rel.blob_path(by_path["thermostat/__init__.py"]).read_bytes()) == source
    assert zlib.decompress(rel.blob_path(by_path["thermostat/__init__.mpy"]).read_bytes())[:1] == b"M"
    # each device takes its own form, and the files every device needs
    assert [f.path for f in rel.files_for("py")] == ["thermostat/__init__.py", "thermostat/manifest.json"]
    assert [f.path for f in rel.files_for("mpy")] == ["thermostat/__init__.mpy", "thermostat/manifest.json"]


@pytest.mark.parametrize(("form", "other"), [("py", "mpy"), ("mpy", "py")])
def test_a_release_of_one_form_is_refused_by_devices_of_the_other(
    tmp_path: Path, features_dir: Path, form: str, other: str
) -> None:
    rel = build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=(form,))
    assert rel.forms == (form,)
    assert [f.path for f in rel.files_for(form)] == [
        f"thermostat/__init__.{form}",
        "thermostat/manifest.json",
    ]
    with pytest.raises(ReleaseError) as err:
        rel.files_for(other)
    assert err.value.code == "wrong_form"
    assert err.value.message.startswith(f"thermostat/__init__.{form} has no .{other} form")


def test_a_module_shipped_compiled_only_cannot_go_into_a_release_of_both_forms(
    tmp_path: Path, features_dir: Path
) -> None:
    (features_dir / "thermostat" / "table.mpy").write_bytes(b"M\x06")
    with pytest.raises(BuildError, match=r"thermostat/table\.mpy has no \.py form.*ship both forms"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1)
    assert not (tmp_path / "r").exists()


def test_too_many_files_for_both_forms_says_to_ship_one(tmp_path: Path, features_dir: Path) -> None:
    for i in range(40):  # 80 module files in both forms, 40 in one
        (features_dir / "thermostat" / f"m{i:02d}.py").write_text(f"X = {i}\n")
    with pytest.raises(BuildError, match=r"more than 64 files.*one form of the modules \(forms py or mpy\)"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1)
    rel = build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("mpy",))
    assert len(rel.files) == 42


@pytest.mark.parametrize("forms", [(), ("pyc",), ("py", "py")])
def test_forms_are_py_mpy_or_both(tmp_path: Path, features_dir: Path, forms: tuple[str, ...]) -> None:
    with pytest.raises(BuildError, match="forms must be one or both of py, mpy"):
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=forms)


# ---- a release that carries the runtime ----------------------------------------


def test_build_with_a_runtime_ships_pb_as_provisioning_does(tmp_path: Path, features_dir: Path) -> None:
    from gateway.paths import firmware_dir
    from gateway.provision import device_files
    from ota.release import HOST_ONLY

    pb = firmware_dir() / "pb"
    rel = build("thermostat", [features_dir / "thermostat"], "rt", tmp_path / "r", 3, ("mpy",), runtime=pb)
    version = (pb / "__init__.py").read_text().split('VERSION = "', 1)[1].split('"', 1)[0]
    assert rel.body["runtime"] == version
    shipped = {f.path: f for f in rel.files if f.path.startswith("pb/")}
    assert "pb/__init__.mpy" in shipped and "pb/start.mpy" in shipped
    assert not [p for p in shipped if p.startswith(HOST_ONLY)]
    # the same bytes as a provisioned device holds: a device downloads only what changed
    config = {"board": "thermostat-v1"}
    provisioned = dict(device_files(config, [], compile_mpy=True))
    # (the board file goes with the runtime: pb/boards/<board>.json, docs/ota.md 2.1)
    board = shipped.pop("pb/boards/thermostat-v1.json")
    assert hashlib.sha256(provisioned["boards/thermostat-v1.json"]).hexdigest() == board.sha256
    assert not [p for p in shipped if p.startswith("pb/boards/")]  # (only the model's boards)
    assert all(hashlib.sha256(provisioned[p]).hexdigest() == f.sha256 for p, f in shipped.items())
    assert set(shipped) == {p for p in provisioned if p.startswith("pb/")}
    # and `ota inspect` says so
    from ota.inspect import describe

    info = describe(rel)
    assert info.runtime == version and info.to_dict()["runtime"] == version
    assert f"carries runtime {version} (pb/)" in info.to_text()
    assert describe(read(rel.path)).runtime == version


def test_a_runtime_carries_the_board_files_of_its_own_folder(tmp_path: Path, features_dir: Path) -> None:
    from gateway.paths import firmware_dir

    pb = tmp_path / "rt" / "pb"
    shutil.copytree(firmware_dir() / "pb", pb, ignore=shutil.ignore_patterns("__pycache__"))
    (pb / "boards").mkdir()
    board = json.loads((firmware_dir() / "boards" / "thermostat-v1.json").read_text())
    board["capabilities"]["relay"]["pin"] = 27  # the maker moved the relay
    (pb / "boards" / "thermostat-v1.json").write_text(json.dumps(board))
    rel = build("thermostat", [features_dir / "thermostat"], "rt", tmp_path / "r", 3, ("mpy",), runtime=pb)
    entry = next(f for f in rel.files if f.path == "pb/boards/thermostat-v1.json")
    assert entry.sha256 == hashlib.sha256((pb / "boards" / "thermostat-v1.json").read_bytes()).hexdigest()
    # a board file named for another board is refused before anything is written
    (pb / "boards" / "thermostat-v2.json").write_text(json.dumps(board))
    with pytest.raises(BuildError, match="a board file is named after its board"):
        build("thermostat", [features_dir / "thermostat"], "rt", tmp_path / "r2", 4, ("mpy",), runtime=pb)
    assert not (tmp_path / "r2").exists()


def _runtime_of_api(tmp_path: Path, api: int) -> Path:
    """A copy of the firmware's pb/ that states runtime API api."""
    import re
    import shutil

    from gateway.paths import firmware_dir

    pb = tmp_path / "runtime" / "pb"
    shutil.copytree(firmware_dir() / "pb", pb, ignore=shutil.ignore_patterns("__pycache__"))
    init = pb / "__init__.py"
    init.write_text(re.sub(r"^API = \d+", f"API = {api}", init.read_text(), count=1, flags=re.M))
    return pb


def _feature_of_api(tmp_path: Path, features_dir: Path, api: int) -> Path:
    import shutil

    feature = tmp_path / "src" / "thermostat"
    shutil.copytree(features_dir / "thermostat", feature, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = json.loads((feature / "manifest.json").read_text())
    (feature / "manifest.json").write_text(json.dumps(manifest | {"api": api}))
    return feature


def test_build_refuses_a_runtime_whose_api_is_not_the_features(tmp_path: Path, features_dir: Path) -> None:
    from firmware.pb import API

    pb = _runtime_of_api(tmp_path, API + 1)
    with pytest.raises(
        BuildError, match=rf"the features need runtime API {API}, the runtime in .* has API {API + 1}"
    ):
        build("thermostat", [features_dir / "thermostat"], "rt", tmp_path / "r", 3, ("mpy",), runtime=pb)
    # features written against the runtime they come with
    feature = _feature_of_api(tmp_path, features_dir, API + 1)
    rel = build("thermostat", [feature], "rt", tmp_path / "r2", 3, ("mpy",), runtime=pb)
    assert rel.body["api"] == API + 1


def test_a_release_that_carries_its_runtime_is_not_held_to_the_running_api(release: Release) -> None:
    from firmware.pb import API

    body = json.loads(json.dumps(release.body)) | {"api": API + 1}
    with pytest.raises(TrustError) as exc:
        trust.check_for_device(body, "thermostat", API, 0)
    assert exc.value.code == "wrong_api"
    trust.check_for_device(body | {"runtime": "0.3.0"}, "thermostat", API, 0)


def test_a_manifest_without_runtime_may_not_ship_pb(release: Release) -> None:
    body = json.loads(json.dumps(release.body))
    body["files"].insert(0, {**body["files"][0], "path": "pb/__init__.py"})
    with pytest.raises(TrustError) as exc:
        trust.check_manifest(body)
    assert exc.value.code == "bad_path"
    body["runtime"] = "0.3.0"
    assert trust.check_manifest(body) is body
    body["files"].pop(0)  # a runtime without its pb/__init__
    with pytest.raises(TrustError, match="needs pb/__init__"):
        trust.check_manifest(body)


def test_no_feature_may_be_named_pb(release: Release) -> None:
    body = json.loads(json.dumps(release.body))
    body["features"]["pb"] = body["features"]["thermostat"]
    with pytest.raises(TrustError, match="no feature may be named pb"):
        trust.check_manifest(body)


def test_a_runtime_board_file_may_not_drop_what_the_features_need(tmp_path: Path, features_dir: Path) -> None:
    from gateway.paths import firmware_dir

    pb = tmp_path / "rt" / "pb"
    shutil.copytree(firmware_dir() / "pb", pb, ignore=shutil.ignore_patterns("__pycache__"))
    (pb / "boards").mkdir()
    board = json.loads((firmware_dir() / "boards" / "thermostat-v1.json").read_text())
    del board["capabilities"]["relay"]  # the thermostat feature drives it
    (pb / "boards" / "thermostat-v1.json").write_text(json.dumps(board))
    with pytest.raises(BuildError, match=r"thermostat needs temperature, relay, .*thermostat-v1 lacks relay"):
        build("thermostat", [features_dir / "thermostat"], "rt", tmp_path / "r", 3, ("mpy",), runtime=pb)
