"""The boot loader (firmware/loader.py): the one part of a device no update
changes. It imports nothing of pb/, so the few names it shares with the
runtime are written in both; these tests hold them equal, and check that
it chooses a slot's runtime only when the slot carries one."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from firmware import loader
from firmware.pb.ota import flash, trust

LOADER = Path(loader.__file__)


def test_the_loader_imports_nothing_of_the_runtime() -> None:
    tree = ast.parse(LOADER.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    # (esp32, machine: the board's own modules: which image runs, a reset)
    assert imported <= {"json", "os", "sys", "hashlib", "esp32", "machine"}, imported


def test_the_loader_is_small_enough_to_review() -> None:
    assert len(LOADER.read_text().splitlines()) < 250


def test_the_names_the_runtime_shares_with_the_loader_are_equal() -> None:
    assert (flash.FACTORY, flash.POINTER, flash.REPORTS, flash.JOB) == (
        loader.FACTORY,
        loader.POINTER,
        loader.REPORTS,
        loader.JOB,
    )
    assert trust.RUNTIME == loader.RUNTIME
    assert set(flash.SLOTS) == {"ota/a", "ota/b"}


def _slot(base: Path, name: str, runtime: bool) -> None:
    """A complete slot with one feature file (and pb/__init__.py)."""
    files = []
    for rel, where, data in (
        ("thermostat/manifest.json", f"{name}/features/thermostat/manifest.json", b"{}"),
        *([("pb/__init__.py", f"{name}/pb/__init__.py", b"VERSION = '9'\n")] if runtime else []),
    ):
        (base / where).parent.mkdir(parents=True, exist_ok=True)
        (base / where).write_bytes(data)
        files.append({"path": rel, "size": len(data), "sha256": trust.sha256_hex(data)})
    (base / name / "manifest.json").write_text(json.dumps({"signed": json.dumps({"files": files})}))


def _boot(base: Path, slot: str, runtime: bool, state: str) -> tuple[list[str], tuple]:
    """sys.path as the loader leaves it, and its choice, for a device whose
    pointer names a slot in state."""
    (base / "features").mkdir()
    _slot(base, slot, runtime)
    (base / "ota" / "active.json").write_text(json.dumps({"set": slot, "counter": 2, "state": state}))
    path = list(sys.path)
    try:
        chosen = loader.boot(str(base))
        return list(sys.path), chosen
    finally:
        sys.path[:] = path


def test_a_slot_with_a_runtime_goes_first_on_the_path(tmp_path: Path) -> None:
    path, (root, p, trial, report) = _boot(tmp_path, "ota/b", True, "committed")
    assert path[0] == f"{tmp_path}/ota/b" and path[1:] == sys.path
    assert (root, p["set"], trial, report) == (f"{tmp_path}/ota/b/features", "ota/b", False, None)


def test_a_slot_without_a_runtime_runs_the_factory_one(tmp_path: Path) -> None:
    path, (root, p, trial, report) = _boot(tmp_path, "ota/a", False, "trial")
    assert path == sys.path and root == f"{tmp_path}/ota/a/features"
    assert trial and p["boots"] == 1 and report is None


def test_a_trial_whose_runtime_was_changed_rolls_back_runtime_and_features(tmp_path: Path) -> None:
    (tmp_path / "features").mkdir()
    _slot(tmp_path, "ota/a", runtime=True)
    _slot(tmp_path, "ota/b", runtime=True)
    (tmp_path / "ota/b/pb/__init__.py").write_text("VERSION = 'X'\n")  # not the signed bytes
    prev = {"set": "ota/a", "counter": 1, "manifest": "ab" * 32}
    pointer = {
        "set": "ota/b",
        "prev": prev,
        "counter": 2,
        "manifest": "cd" * 32,
        "state": "trial",
        "boots": 0,
    }
    (tmp_path / "ota" / "active.json").write_text(json.dumps({**pointer, "update": "5f2a9c01b7e4"}))
    path = list(sys.path)
    try:
        root, p, trial, report = loader.boot(str(tmp_path))
        assert (root, p["set"], p["state"], trial) == (
            f"{tmp_path}/ota/a/features",
            "ota/a",
            "committed",
            False,
        )
        assert sys.path[0] == f"{tmp_path}/ota/a"  # the previous set's runtime with its features
        assert (
            report["state"] == "rolled_back"
            and report["reason"] == "pb/__init__.py does not match its manifest"
        )
    finally:
        sys.path[:] = path


def _image_trial(base: Path, job_phase: str | None) -> None:
    """ota/b on trial with the image of partition ota_1; a job of that update
    in job_phase (None: no job)."""
    (base / "features").mkdir()
    _slot(base, "ota/a", runtime=False)
    _slot(base, "ota/b", runtime=False)
    pointer = {
        "set": "ota/b",
        "prev": {"set": "ota/a", "counter": 1, "manifest": "ab" * 32},
        "counter": 2,
        "manifest": "cd" * 32,
        "state": "trial",
        "boots": 0,
        "update": "5f2a9c01b7e4",
        "image": "ota_1",
    }
    (base / "ota" / "active.json").write_text(json.dumps(pointer))
    if job_phase is not None:
        (base / "ota" / "job.json").write_text(json.dumps({"id": "5f2a9c01b7e4", "phase": job_phase}))


def test_a_trial_runs_on_the_image_it_was_installed_with(tmp_path: Path) -> None:
    _image_trial(tmp_path, None)
    root, p, trial, report = loader.decide(str(tmp_path), "ota_1")
    assert (root, p["boots"], trial, report) == (f"{tmp_path}/ota/b/features", 1, True, None)


def test_a_trial_whose_image_the_bootloader_left_rolls_back_the_set(tmp_path: Path) -> None:
    # the new image was never marked valid: at the reset the bootloader went
    # back to ota_0; the set that needs ota_1 must not run on it
    _image_trial(tmp_path, None)
    root, p, trial, report = loader.decide(str(tmp_path), "ota_0")
    assert (root, p["set"], p["state"], trial) == (f"{tmp_path}/ota/a/features", "ota/a", "committed", False)
    assert report["state"] == "rolled_back"
    assert report["reason"] == "the new MicroPython image did not start (ota_0 runs)"


def test_an_install_cut_before_it_chose_the_image_is_left_to_finish(tmp_path: Path) -> None:
    # the pointer switched, the power went before set_boot: the install,
    # which runs next at this boot, chooses the image and resets
    _image_trial(tmp_path, "staged")
    root, p, trial, report = loader.decide(str(tmp_path), "ota_0")
    assert (root, p["set"], trial, report) == (f"{tmp_path}/ota/b/features", "ota/b", True, None)


def test_a_committed_set_whose_image_the_bootloader_took_back_rolls_back(tmp_path: Path) -> None:
    # the power went after the commit and before the image was marked valid
    _image_trial(tmp_path, None)
    p = json.loads((tmp_path / "ota" / "active.json").read_text())
    p["state"] = "committed"
    del p["boots"]
    (tmp_path / "ota" / "active.json").write_text(json.dumps(p))
    assert loader.decide(str(tmp_path), "ota_1")[1]["set"] == "ota/b"  # (on its image: runs)
    root, q, trial, report = loader.decide(str(tmp_path), "ota_0")
    assert (root, q["set"], trial) == (f"{tmp_path}/ota/a/features", "ota/a", False)
    assert report["reason"] == "the new MicroPython image was not marked valid (ota_0 runs)"
