"""An install that keeps running out of RAM fails the update saying where:
the real install on the MicroPython unix port, on heaps too small for it
(docs/ota.md 4.4). Each attempt that runs out of RAM is counted; the third
reports `install: out of RAM 3 times, last at <step> (MemoryError: ...)`."""

from __future__ import annotations

import json
import re
import shutil
import time
import zlib
from pathlib import Path

import pytest

from firmware.pb.ota import flash
from ota.keys import Keys, freshness, keygen
from ota.release import ZLIB_WBITS, Release, build

from ..support import micropython

FEATURES = Path(__file__).resolve().parents[2] / "firmware" / "features"
STEPS = ("reading the manifest", "checking signatures", "choosing the files", "assembling the set")

# (the boot loader is in RAM when a boot installs: main.py loaded it first)
INSTALL = """
import gc, json, sys
import loader
base, now = json.load(open(sys.argv[1]))
for i in range(3):
    gc.collect()
    try:
        from pb.ota import install

        install.install_staged(base, ("th-1", "thermostat", {"temperature": {}, "relay": {}}, 1), now)
        print(json.dumps("ended"))
        break
    except MemoryError:
        print(json.dumps("out of RAM"))
"""


def staged(base: Path, keys: Keys, rel: Release, now: float) -> None:
    """A device with the factory set, its root, and rel downloaded and staged."""
    shutil.copytree(FEATURES / "thermostat", base / "features" / "thermostat")
    stage = base / flash.STAGE
    stage.mkdir(parents=True)
    (base / flash.ROOT).write_bytes(keys.root_bytes)
    (stage / "manifest.json").write_bytes(rel.manifest)
    for f in rel.files_for("mpy"):
        (stage / f.sha256).write_bytes(zlib.decompress(rel.blob_path(f).read_bytes(), ZLIB_WBITS))
    job = {
        "id": "5f2a9c01b7e4",
        "manifest": rel.sha256,
        "size": len(rel.manifest),
        "freshness": json.loads(
            freshness(
                keys, "thermostat", rel.counter, rel.sha256, 3600, now, device="th-1", update="5f2a9c01b7e4"
            )
        ),
        "counter": rel.counter,
        "offered_at": now,
        "phase": "staged",
    }
    (base / flash.JOB).write_text(json.dumps(job))


@pytest.mark.slow
@pytest.mark.long  # (make long: make test stays within 10 minutes)
def test_an_install_out_of_ram_three_times_fails_saying_where(tmp_path: Path) -> None:
    keys = keygen(tmp_path / "keys")
    # (the whole runtime too: a manifest whose parse needs more than the imports)
    rel = build(
        "thermostat",
        [FEATURES / "thermostat"],
        "2",
        tmp_path / "r",
        2,
        ("mpy",),
        keys,
        runtime=FEATURES.parent / "pb",
    )
    now = time.time()
    failed = []
    # heaps around what the install needs: where the imports fit but not the
    # rest (which heap that is moves with the code, so several are tried)
    for kb in range(20, 129, 2):
        base = tmp_path / f"dev{kb}"
        staged(base, keys, rel, now)
        try:
            out = micropython.run_json_lines(INSTALL, [[str(base), now]], heap=f"{kb}K", compiled=True)
        except micropython.MicroPythonFailed as exc:
            # (import loader: too small a heap)
            assert "MemoryError" in str(exc) and "line 3," in str(exc), exc
            continue
        reports = json.loads((base / "ota" / "reports.json").read_text()) if out[-1] == "ended" else []
        for r in reports:
            if r["state"] == "failed":
                assert out == ["out of RAM", "out of RAM", "ended"], (kb, out)
                failed.append(r["reason"])
                # the update is given up: nothing activated, the staging gone
                assert not (base / "ota" / "active.json").exists() and not (base / flash.JOB).exists()
                assert not (base / flash.STAGE).exists()
    assert failed, "no heap made the install run out of RAM after its imports"
    steps = "|".join(STEPS)
    for reason in failed:
        assert re.fullmatch(
            rf"install: out of RAM 3 times, last at ({steps}) \(MemoryError: memory allocation failed, "
            r"allocating \d+ bytes\)",
            reason,
        ), reason
