"""A virtual device's flash folder and the feature loader: factory files
shared through links, feature modules shared by content and never mixed
between releases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from firmware.loader import decide
from gateway.paths import firmware_dir
from simulator.device import provision
from simulator.loader import import_feature

FEATURES = firmware_dir() / "features"


def test_provisioning_links_the_factory_set_and_writes_the_root(tmp_path: Path) -> None:
    from ota.keys import keygen

    keys = keygen(tmp_path / "keys")
    for dev in ("a", "b"):
        provision(tmp_path / dev, ["thermostat"], keys.root_bytes)
        link = tmp_path / dev / "features" / "thermostat"
        assert link.is_symlink() and link.resolve() == (FEATURES / "thermostat").resolve()
        assert (tmp_path / dev / "ota" / "root.json").read_bytes() == keys.root_bytes
    # the boot loader finds the factory set
    root, pointer, trial, _ = decide(str(tmp_path / "a"))
    assert root == str(tmp_path / "a") + "/features" and pointer is None and not trial
    # provisioning again keeps what the device wrote
    (tmp_path / "a" / "data" / "state.json").write_text(json.dumps({"boot_count": 3}))
    provision(tmp_path / "a", ["thermostat"], keys.root_bytes)
    assert json.loads((tmp_path / "a" / "data" / "state.json").read_text()) == {"boot_count": 3}


def test_devices_share_a_release_s_modules_and_keep_releases_apart(tmp_path: Path) -> None:
    for dev in ("a", "b"):
        provision(tmp_path / dev, ["vent"])
    shared = import_feature(str(tmp_path / "a" / "features"), "vent")
    assert import_feature(str(tmp_path / "b" / "features"), "vent") is shared
    # another release of vent in a's slot: another module, with its own curve
    slot = tmp_path / "a" / "ota" / "a" / "features"
    shutil.copytree(FEATURES / "vent", slot / "vent", ignore=shutil.ignore_patterns("__pycache__"))
    (slot / "vent" / "curve.py").write_text("POINTS = ((0.0, 0.0), (0.3, 0.6), (1.0, 1.0))\n")
    steeper = import_feature(str(slot), "vent")
    assert steeper is not shared
    assert steeper.POINTS == ((0.0, 0.0), (0.3, 0.6), (1.0, 1.0)) and shared.POINTS[1] == (1.0, 1.0)
    # the slot reused for yet another release: the folder is the same, the module is not
    (slot / "vent" / "curve.py").write_text("POINTS = ((0.0, 0.0), (1.0, 0.5))\n")
    assert import_feature(str(slot), "vent").POINTS == ((0.0, 0.0), (1.0, 0.5))
