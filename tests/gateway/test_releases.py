"""The gateway's release store, on real SQLite and real files: releases are
verified against the gateway's root before anything is kept, blobs are
stored by their own hash, and releases are found by id, prefix,
MODEL@COUNTER or version. And the upgrade of a version 1 database."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway import store as store_module
from gateway.accounts import Accounts
from gateway.errors import OtaDisabledError, ReleaseNotFoundError, ReleaseRefusedError, StoreError
from gateway.metrics import declared
from gateway.paths import firmware_dir
from gateway.releases import ReleaseStore, blobs_dir
from gateway.settings import DeviceSettings, SettingsTable
from gateway.store import SCHEMA_VERSION, Store
from ota.keys import Keys, keygen
from ota.release import Release, build

from ..conftest import DbAt
from .conftest import MakeRelease

T0 = 1_800_000_000.0


@pytest.fixture
def db(db_at: DbAt) -> Store:
    return Store(db_at())


@pytest.fixture
def releases(db: Store, keys: Keys) -> ReleaseStore:
    return ReleaseStore(db, root=keys.root_bytes)


def test_a_release_is_verified_stored_and_its_blobs_kept_by_zsha256(
    releases: ReleaseStore, release: Release, db: Store
) -> None:
    stored, new = releases.add(release.path, T0)
    assert new and stored.id == release.sha256 and stored.ref == "thermostat@2"
    assert stored.manifest == release.manifest and stored.version == "2026.11.2"
    assert stored.files == len(release.files)
    assert releases.blobs == db.beside(".blobs")
    if db.db.kind == "sqlite":
        assert releases.blobs == db.path.with_name("gw.db.blobs") == blobs_dir(db.path)
    for f in release.files:
        blob = releases.blobs / f.zsha256
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == f.zsha256
        assert blob.read_bytes() == release.blob_path(f).read_bytes()
    assert releases.read(stored, "manifest", 10, 20) == release.manifest[10:30]
    f = release.files[0]
    assert releases.read(stored, f.zsha256, 5, 7) == release.blob_path(f).read_bytes()[5:12]
    assert set(stored.objects) == {"manifest"} | {f.zsha256 for f in release.files}


def test_adding_the_same_release_again_changes_nothing(releases: ReleaseStore, release: Release) -> None:
    first, _ = releases.add(release.path, T0)
    again, new = releases.add(release.path, T0 + 60)
    assert not new and again == first and again.added == T0
    assert len(releases.list()) == 1


def test_a_lost_blob_file_is_put_back_by_adding_again(releases: ReleaseStore, release: Release) -> None:
    releases.add(release.path, T0)
    lost = releases.blobs / release.files[0].zsha256
    lost.unlink()
    releases.add(release.path, T0)
    assert hashlib.sha256(lost.read_bytes()).hexdigest() == release.files[0].zsha256


def test_a_release_signed_by_another_maker_is_refused(
    releases: ReleaseStore, make_release: MakeRelease, tmp_path: Path
) -> None:
    stranger = keygen(tmp_path / "stranger")
    rel = make_release(3, signer=stranger)
    with pytest.raises(ReleaseRefusedError, match="unknown_key") as exc:
        releases.add(rel.path, T0)
    assert exc.value.code == "unknown_key"
    assert releases.list() == []
    assert not releases.blobs.exists() or not any(releases.blobs.iterdir())  # nothing kept


def test_a_forged_signature_is_refused(releases: ReleaseStore, release: Release) -> None:
    env = json.loads(release.manifest)
    sig = env["signatures"][0]["sig"]
    env["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    (release.path / "manifest.json").write_text(json.dumps(env))
    with pytest.raises(ReleaseRefusedError) as exc:
        releases.add(release.path, T0)
    assert exc.value.code == "bad_signature"


def test_a_tampered_blob_is_refused(releases: ReleaseStore, release: Release) -> None:
    blob = release.blob_path(release.files[0])
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(ReleaseRefusedError) as exc:
        releases.add(release.path, T0)
    assert exc.value.code == "mismatch" and releases.list() == []


def test_the_feature_manifests_of_a_stored_release_come_from_its_blobs(
    releases: ReleaseStore, keys: Keys, tmp_path: Path
) -> None:
    features = firmware_dir() / "features"
    rel = build(
        "thermostat",
        [features / "thermostat", features / "eco"],
        "2026.12.1",
        tmp_path / "r",
        counter=5,
        keys=keys,
        forms=("py",),
    )
    stored, _ = releases.add(rel.path, T0)
    manifests = releases.feature_manifests(stored)
    assert manifests == {
        n: json.loads((features / n / "manifest.json").read_text()) for n in ("eco", "thermostat")
    }
    # what a rollout of it is judged by
    assert [d.key for d in declared(manifests)] == ["thermostat.heater_duty", "thermostat.setpoint_error"]


def test_a_feature_manifest_whose_blob_changed_or_went_is_not_read(
    releases: ReleaseStore, release: Release
) -> None:
    stored, _ = releases.add(release.path, T0)
    entry = next(e for e in stored.entries if e.path == "thermostat/manifest.json")
    blob = releases.blob_path(entry.zsha256)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(ReleaseRefusedError, match=r"thermostat/manifest\.json") as exc:
        releases.feature_manifests(stored)
    assert exc.value.code == "mismatch"
    blob.unlink()
    if releases.shared:
        # (on PostgreSQL the database keeps the blobs too: this machine's copy is fetched again,
        # and checked; gone from both, it is missing)
        assert "thermostat" in releases.feature_manifests(stored)
        assert blob.read_bytes() != bytes(data)
        releases.store.db.execute("DELETE FROM release_blobs")
        blob.unlink()
    with pytest.raises(ReleaseRefusedError) as exc:
        releases.feature_manifests(stored)
    assert exc.value.code == "missing_blob"


def test_a_blob_the_database_holds_wrong_is_not_taken(releases: ReleaseStore, release: Release) -> None:
    """On PostgreSQL a blob missing from this machine's folder is fetched from
    the database only if it is the one its name says."""
    if not releases.shared:
        pytest.skip("SQLite's blobs are in its machine's folder alone")
    stored, _ = releases.add(release.path, T0)
    entry = next(e for e in stored.entries if e.path == "thermostat/manifest.json")
    (releases.blobs / entry.zsha256).unlink()
    releases.store.db.execute(
        "UPDATE release_blobs SET data = ? WHERE zsha256 = ?", (b"forged", entry.zsha256)
    )
    with pytest.raises(ReleaseRefusedError) as exc:
        releases.feature_manifests(stored)
    assert exc.value.code == "missing_blob" and not (releases.blobs / entry.zsha256).exists()


def test_an_unsigned_release_is_refused(releases: ReleaseStore, release: Release) -> None:
    env = json.loads(release.manifest)
    env["signatures"] = []
    (release.path / "manifest.json").write_text(json.dumps(env))
    with pytest.raises(ReleaseRefusedError, match="permabeta ota sign"):
        releases.add(release.path, T0)


def test_a_model_counter_names_one_release(releases: ReleaseStore, make_release: MakeRelease) -> None:
    releases.add(make_release(2).path, T0)
    other = make_release(2, extra="different content, same counter")
    with pytest.raises(ReleaseRefusedError, match="thermostat@2 is already release") as exc:
        releases.add(other.path, T0)
    assert exc.value.code == "counter_taken"


def test_a_release_without_the_runtime_an_earlier_one_carried_is_refused(
    releases: ReleaseStore, make_release: MakeRelease, keys: Keys, tmp_path: Path
) -> None:
    """A device installs a release as its whole set: after a release that
    carried the runtime, one without would take devices back to their
    factory runtime."""
    releases.add(make_release(2).path, T0)  # (no runtime before it: taken)
    with_runtime = build(
        "thermostat",
        [firmware_dir() / "features" / "thermostat"],
        "rt-3",
        tmp_path / "rt-3",
        counter=3,
        forms=("mpy",),
        keys=keys,
        runtime=firmware_dir() / "pb",
    )
    releases.add(with_runtime.path, T0)
    with pytest.raises(ReleaseRefusedError, match="thermostat@4 carries no runtime, and thermostat@3") as exc:
        releases.add(make_release(4).path, T0)
    assert exc.value.code == "runtime_dropped"
    assert [r.counter for r in releases.list()] == [2, 3]


def test_a_gateway_without_keys_adds_nothing(db: Store, release: Release) -> None:
    with pytest.raises(OtaDisabledError, match="start it with --keys DIR"):
        ReleaseStore(db).add(release.path, T0)


def test_releases_are_found_by_id_prefix_model_counter_and_version(
    releases: ReleaseStore, make_release: MakeRelease
) -> None:
    r2, _ = releases.add(make_release(2).path, T0)
    r3, _ = releases.add(make_release(3, version="2026.12.0").path, T0)
    r4, _ = releases.add(make_release(4, version="2026.12.0", extra="x").path, T0)
    assert releases.find(r3.id) == r3
    assert releases.find(r3.id[:8]) == r3 and releases.find(r3.id[:8].upper()) == r3
    assert releases.find("thermostat@2") == r2
    assert releases.find("2026.11.2") == r2
    with pytest.raises(ReleaseNotFoundError, match="several releases") as exc:
        releases.find("2026.12.0")
    assert exc.value.code == "ambiguous"
    with pytest.raises(ReleaseNotFoundError, match="needs 8 hex digits"):
        releases.find(r3.id[:5])
    with pytest.raises(ReleaseNotFoundError, match="no release thermostat@9"):
        releases.find("thermostat@9")
    with pytest.raises(ReleaseNotFoundError, match="MODEL@COUNTER"):
        releases.find("thermostat@latest")
    with pytest.raises(ReleaseNotFoundError):
        releases.find("nothing-like-this")
    assert [r.counter for r in releases.list()] == [2, 3, 4]
    assert releases.list("shirt") == []
    assert r4.summary()["features"] == {"thermostat": r4.body["features"]["thermostat"]["version"]}


# ---- the database upgrade ----------------------------------------------------------


def version_1_database(path: Path) -> None:
    """A database as the first gateway left it: schema 1, one device."""
    con = sqlite3.connect(path)
    con.executescript(store_module._SCHEMA)
    con.execute("INSERT INTO meta VALUES ('schema', '1')")
    con.execute("INSERT INTO devices (id, model, first_seen, last_seen) VALUES ('th-1', 'thermostat', 1, 2)")
    con.commit()
    con.close()


def test_a_version_1_database_is_upgraded_and_keeps_its_devices(
    tmp_path: Path, keys: Keys, release: Release
) -> None:
    path = tmp_path / "old.db"
    version_1_database(path)
    with Store(path, readonly=True) as ro:  # the CLI reads an old database as it is
        assert ro.schema == 1 and ReleaseStore(ro).list() == []
    with Store(path) as s:
        assert s.schema == SCHEMA_VERSION and s.get_meta("schema") == str(SCHEMA_VERSION)
        assert s.device("th-1") is not None
        columns = {r[1] for r in s.db.execute("PRAGMA table_info(updates)")}
        assert "deferred_since" in columns
        assert SettingsTable(s).get("th-1") == DeviceSettings("th-1")  # the defaults: stable, auto
        assert Accounts(s).owner_of("th-1") is None and Accounts(s).all() == []
        assert s.db.execute("SELECT count(*) FROM twin_previews").fetchone()[0] == 0
        ReleaseStore(s, root=keys.root_bytes).add(release.path, T0)
    with Store(path) as s:  # opening again migrates nothing twice
        assert [r.ref for r in ReleaseStore(s).list()] == ["thermostat@2"]


def test_a_failed_upgrade_leaves_the_database_at_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.db"
    version_1_database(path)
    broken = store_module._MIGRATIONS[2] + "\nCREATE TABLE releases (x);"  # fails half-way
    monkeypatch.setitem(store_module._MIGRATIONS, 2, broken)
    with pytest.raises(StoreError, match="cannot upgrade"):
        Store(path)
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("1",)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "releases" not in tables and "updates" not in tables
    con.close()


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_releases_survive_in_a_copy_of_the_folder(tmp_path: Path, keys: Keys, release: Release) -> None:
    # the database and its blob folder are the whole release store
    with Store(tmp_path / "a" / "gw.db") as s:
        ReleaseStore(s, root=keys.root_bytes).add(release.path, T0)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with Store(tmp_path / "b" / "gw.db") as s:
        rs = ReleaseStore(s)
        stored = rs.find("thermostat@2")
        f = release.files[0]
        assert rs.read(stored, f.zsha256, 0, 10**6) == release.blob_path(f).read_bytes()
