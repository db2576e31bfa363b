"""The module names the firmware lets go of (compat.forget) or imports one at
a time are strings: a module renamed without them would stay loaded, or the
import would fail on the board only. These tests fail when a name goes
stale: every name imports on the real MicroPython unix port, and what the
boot lets go is gone after it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from firmware.pb import prepare, runtime, start, startup
from firmware.pb.ota import download, updates

from ..support import micropython

PB = Path(__file__).resolve().parents[2] / "firmware" / "pb"

LISTS = {
    "prepare.BOOT_ONLY_MODULES": prepare.BOOT_ONLY_MODULES,
    "prepare.CLOCK_MODULES": prepare.CLOCK_MODULES,
    "start.RUNTIME_MODULES": start.RUNTIME_MODULES,
    "runtime.COMMAND_MODULES": runtime.COMMAND_MODULES,
    "startup.DISCOVERY_MODULES": startup.DISCOVERY_MODULES,
    "runtime.STARTUP_MODULES": runtime.STARTUP_MODULES,
    "updates.SESSION_MODULES": updates.SESSION_MODULES,
    "download.CHECK_MODULES": download.CHECK_MODULES,
}


def _literal_forgets() -> set[str]:
    """Module names written out in forget((...)) calls anywhere in pb/."""
    names = set()
    for path in PB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "forget" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Tuple):
                    names |= {e.value for e in arg.elts if isinstance(e, ast.Constant)}
    return names


def _module_exists(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PB.parent / rel).with_suffix(".py").is_file() or (PB.parent / rel / "__init__.py").is_file()


def test_every_listed_module_exists() -> None:
    names = {n for names in LISTS.values() for n in names} | _literal_forgets()
    assert len(names) > 20
    stale = sorted(n for n in names if not _module_exists(n))
    assert not stale, f"module names that name no module: {stale}"


IMPORT_ALL = """
import json, sys
names = json.load(open(sys.argv[1]))
for n in names:
    __import__(n)
    assert n in sys.modules, n
print(json.dumps(sorted(names)))
"""


@pytest.mark.micropython
def test_every_listed_module_imports_on_micropython() -> None:
    names = sorted({n for names in LISTS.values() for n in names} | _literal_forgets())
    assert micropython.run_json(IMPORT_ALL, names) == names


# A device folder with a staged update that cannot install (its manifest is
# missing):
# the boot loads the install's code, refuses the update, and resets (Reboot
# on the host backend). The next boot chooses the set; then the modules only
# the boot needs must be gone.
BOOT = """
import json, sys
from pb.hal import Reboot
from pb.ota import flash
from pb.prepare import BOOT_ONLY_MODULES, prepare
folder = json.load(open(sys.argv[1]))
seen = set()
try:
    prepare(folder)
except Reboot:
    seen = set(n for n in BOOT_ONLY_MODULES if n in sys.modules)
config, hal, chosen, lean, data = prepare(folder)
left = [n for n in BOOT_ONLY_MODULES if n in sys.modules]
print(json.dumps({"seen": sorted(seen), "left": left, "chosen": chosen[0]}))
"""


@pytest.mark.micropython
def test_what_the_boot_lets_go_was_loaded_and_is_gone(tmp_path: Path) -> None:
    from gateway.broker import BrokerUrl
    from gateway.provision import provision_into

    dev = provision_into(tmp_path / "dev", "thermostat", "th-1", BrokerUrl.parse("mqtt://127.0.0.1:1883"))
    (dev.path / "ota").mkdir(exist_ok=True)
    job = {"id": "5f2a9c01b7e4", "manifest": "ab" * 32, "size": 10, "freshness": {}, "counter": 2}
    job |= {"offered_at": 0, "phase": "staged"}
    (dev.path / "ota" / "job.json").write_text(json.dumps(job))
    got = micropython.run_json(BOOT, str(dev.path))
    # the first boot loaded the install's code (and refused the update: no root)
    assert {"pb.ota.install", "loader", "pb.ota.flash", "pb.ota.files", "pb.ota.report"} <= set(got["seen"])
    assert got["left"] == [], f"still loaded after the boot: {got['left']}"
    assert got["chosen"].endswith("/features")
    reports = json.loads((dev.path / "ota" / "reports.json").read_text())
    assert [r["state"] for r in reports] == ["failed"] and reports[0]["reason"].startswith("mismatch")


def test_the_root_paths_handover_writes_out_are_flashs() -> None:
    # pb/ota/handover.py names them without importing pb/ota/flash.py (RAM)
    from firmware.pb.ota import flash

    source = (PB / "ota" / "handover.py").read_text()
    assert f'"/{flash.ROOT_NEXT}"' in source and f'"/{flash.ROOT_REFUSED}"' in source


def test_the_images_record_the_hello_reads_is_flashs() -> None:
    # pb/hello.py reads it without importing pb/ota/flash.py: on trial, at 128 KB, that
    # module was more than the heap had room for, and the hello never went
    from firmware.pb import hello
    from firmware.pb.ota import flash

    assert (hello.IMAGES, hello.HELLO) == (flash.IMAGES, flash.HELLO)
    assert "ota.flash" not in (PB / "hello.py").read_text()
