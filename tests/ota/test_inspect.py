"""Describing a release and what it changes, for makers and owners."""

from __future__ import annotations

import json
from pathlib import Path

from ota.inspect import compare, describe
from ota.keys import Keys
from ota.release import Release, build

from .helpers import edit_manifest


def test_describe_spells_out_permissions(release: Release) -> None:
    d = describe(release)
    text = d.to_text()
    assert text.splitlines()[0] == "thermostat release 2026.11.1 (counter 2, runtime API 1)"
    assert "needs hardware: relay, temperature" in text
    assert "  thermostat 1.1.0" in text
    assert "    reads      temperature" in text and "(sensors it may read)" in text
    assert "    drives     relay" in text and "(hardware it may switch or move)" in text
    assert "    publishes  setpoint, heating, mode" in text and "(data it may send off the device)" in text
    for f in release.files:
        assert f"{f.size:>8} {f.zsize:>8}  {f.path}" in text
    out = d.to_dict()
    assert out["features"]["thermostat"]["permissions"]["drives"] == ["relay"]
    assert out["size"] == sum(f.size for f in release.files)
    assert out["manifest_sha256"] == release.sha256
    json.dumps(out)


def test_describe_says_what_the_devices_of_each_form_take(tmp_path: Path, features_dir: Path) -> None:
    both = describe(build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "both", counter=1))
    text = both.to_text()
    for form, runs in (("py", "CPython"), ("mpy", "MicroPython")):
        info = both.form(form)
        assert info is not None and info.refused is None
        assert [f.path for f in info.files] == [f"thermostat/__init__.{form}", "thermostat/manifest.json"]
        line = f"  {form}: 2 files, {info.size} bytes ({info.zsize} compressed) for {runs}"
        assert line in text, text
        assert both.to_dict()["forms"][form] == {
            "runs": info.runs,
            "files": 2,
            "size": info.size,
            "zsize": info.zsize,
        }
    source = describe(
        build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "py", counter=1, forms=("py",))
    )
    refused = source.to_dict()["forms"]["mpy"]["refused"]
    assert refused.startswith("wrong_form: thermostat/__init__.py has no .mpy form")
    assert f"  mpy: REFUSED by MicroPython (boards, the unix port): {refused}" in source.to_text()


def test_describe_an_unsigned_release(tmp_path: Path, features_dir: Path) -> None:
    rel = build("thermostat", [features_dir / "thermostat"], "1", tmp_path / "r", counter=1, forms=("py",))
    assert "UNSIGNED" in describe(rel).to_text()


def _modified(tmp_path: Path, keys: Keys, features_dir: Path, eco: Path) -> Release:
    """thermostat 1.2.0: changed code, now also reads humidity, no longer
    publishes mode (nor has a metric that needs it); plus the new feature eco."""
    t = features_dir / "thermostat"
    shipped = json.loads((t / "manifest.json").read_text())
    metrics = shipped["metrics"]
    del metrics["setpoint_error"]["when"]
    edit_manifest(
        t,
        version="1.2.0",
        metrics=metrics,
        streams={k: v for k, v in shipped["streams"].items() if k in ("setpoint", "heating")},
        requires=["temperature", "relay", "humidity"],
        permissions={
            "reads": ["temperature", "humidity"],
            "drives": ["relay"],
            "publishes": ["setpoint", "heating"],
        },
    )
    with (t / "__init__.py").open("a") as f:
        f.write("\n# humidity compensation\n")
    return build("thermostat", [t, eco], "2026.11.2", tmp_path / "r2", counter=3, keys=keys, forms=("py",))


def test_against_a_modified_release(
    tmp_path: Path, keys: Keys, release: Release, features_dir: Path, eco: Path
) -> None:
    new = _modified(tmp_path, keys, features_dir, eco)
    c = compare(release, new)
    text = c.to_text()
    assert text.splitlines()[0].startswith(
        "thermostat release 2026.11.2 (counter 3) against 2026.11.1 (counter 2"
    )
    assert "  + eco 1.0.0 (new)" in text
    assert "  ^ thermostat 1.1.0 -> 1.2.0 (upgraded)" in text
    assert "  ! eco 1.0.0 (new) reads: temperature" in text
    assert "  ! eco 1.0.0 (new) publishes: boost" in text
    assert "  ! thermostat 1.2.0 now also reads: humidity" in text
    assert "    thermostat 1.2.0 no longer publishes: mode" in text
    old_files = {f.path: f for f in release.files}
    new_files = {f.path: f for f in new.files}
    init_old, init_new = old_files["thermostat/__init__.py"], new_files["thermostat/__init__.py"]
    assert f"~ thermostat/__init__.py    {init_old.size} -> {init_new.size} bytes" in text
    assert f"+ eco/__init__.py           {new_files['eco/__init__.py'].size} bytes" in text
    assert "  = " not in text  # every file changed here
    fetched = sum(f.zsize for f in new.files)  # both thermostat files changed, eco is new
    assert (c.download_files, c.download_bytes) == (4, fetched)
    assert f"downloads 4 files, {fetched} bytes compressed" in text
    assert "hardware the older release did not: humidity" in text

    d = c.to_dict()
    assert d["download"] == {"files": 4, "bytes": fetched, "by_form": {"py": {"files": 4, "bytes": fetched}}}
    assert {p["text"] for p in d["permissions"] if p["gained"]} == {
        "eco 1.0.0 (new) reads: temperature",
        "eco 1.0.0 (new) publishes: boost",
        "thermostat 1.2.0 now also reads: humidity",
    }
    assert [(f["name"], f["change"]) for f in d["features"]] == [("eco", "new"), ("thermostat", "upgraded")]
    assert {f["path"]: f["change"] for f in d["files"]} == {
        "eco/__init__.py": "added",
        "eco/manifest.json": "added",
        "thermostat/__init__.py": "changed",
        "thermostat/manifest.json": "changed",
    }
    json.dumps(d)


def test_back_again_removes_a_feature(
    tmp_path: Path, keys: Keys, release: Release, features_dir: Path, eco: Path
) -> None:
    """Going back is a new release: the comparison shows eco removed, and a
    device on R2 downloads only what it lacks (the old thermostat files)."""
    r2 = _modified(tmp_path, keys, features_dir, eco)
    back = build("thermostat", [eco], "2026.11.3", tmp_path / "r3", counter=4, keys=keys, forms=("py",))
    c = compare(r2, back)
    text = c.to_text()
    assert "  - thermostat 1.2.0 (removed)" in text
    assert "  = eco 1.0.0 (unchanged)" in text
    assert "  = 2 files unchanged" in text
    assert "- thermostat/__init__.py" in text
    assert "permission changes (! = the owner grants something new):\n  none" in text
    assert (c.download_files, c.download_bytes) == (0, 0)
    assert c.warnings == ()


def test_only_unheld_content_is_downloaded(tmp_path: Path, release: Release, features_dir: Path) -> None:
    (features_dir / "thermostat" / "notes.txt").write_text("x" * 500)
    r2 = build(
        "thermostat", [features_dir / "thermostat"], "2026.11.2", tmp_path / "r2", counter=3, forms=("py",)
    )
    c = compare(release, r2)
    (added,) = [f for f in c.files if f.change == "added"]
    assert added.new is not None
    assert (c.download_files, c.download_bytes) == (1, added.new.zsize)
    assert "  = thermostat 1.1.0 (files changed, same version)" not in c.to_text()
    assert "  ~ thermostat 1.1.0 (files changed, same version)" in c.to_text()


def test_warnings_a_maker_needs(tmp_path: Path, release: Release, features_dir: Path) -> None:
    older = build(
        "thermostat", [features_dir / "thermostat"], "2026.10", tmp_path / "r0", counter=2, forms=("py",)
    )
    c = compare(release, older)
    assert "counter 2 is not above 2: a device on the older release refuses it" in c.to_text()
    assert c.download_bytes == 0
    shirt = build("shirt", [features_dir / "vent"], "1", tmp_path / "s", counter=9, forms=("py",))
    assert "different models (thermostat, shirt)" in compare(release, shirt).to_text()
