"""Importing feature packages under CPython for many virtual devices.

Each feature package is imported once per distinct content under a private
module name (``_pbfeature_<digest>_<name>``): devices on different releases
of a feature share one process without colliding, and thousands of devices
on the same release share one module. Keyed by content, not by folder: the
update slots ota/a and ota/b are reused, so one folder holds different
releases over a device's life. A feature's module-level state is therefore
shared by the devices running that release; the shipped features keep theirs
in the object start() returns.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from firmware.pb.errors import FeatureError

# digest -> (module, the folder it was imported from)
_cache: dict[str, tuple[ModuleType, Path]] = {}


def _files(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and not f.endswith(".pyc")]
    return sorted(found)


def digest(folder: Path) -> str:
    """SHA-256 over the relative paths and contents of a feature folder."""
    h = hashlib.sha256()
    for path in _files(folder):
        rel = path.relative_to(folder).as_posix().encode()
        data = path.read_bytes()
        h.update(b"%d:%s%d:" % (len(rel), rel, len(data)))
        h.update(data)
    return h.hexdigest()


def import_feature(root: str, name: str) -> ModuleType:
    """The feature package root/name, imported under a private name (the
    runtime's importer hook). Raises FeatureError if there is none."""
    folder = Path(root) / name
    init = folder / "__init__.py"
    if not init.is_file():
        raise FeatureError(f"feature {name} has no __init__.py in {root}")
    key = f"{name}:{digest(folder)}"
    hit = _cache.get(key)
    if hit is not None:
        mod, origin = hit
        if origin != folder and (not origin.is_dir() or f"{name}:{digest(origin)}" != key):
            # where it came from holds something else now: submodules
            # imported later must come from a folder that holds this release
            mod.__path__ = [str(folder)]
            _cache[key] = (mod, folder)
        return mod
    modname = f"_pbfeature_{key.split(':')[1][:16]}_{name}"
    spec = importlib.util.spec_from_file_location(modname, init, submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise FeatureError(f"cannot import feature {name} from {root}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        for m in [m for m in sys.modules if m == modname or m.startswith(modname + ".")]:
            del sys.modules[m]
        raise
    _cache[key] = (mod, folder)
    return mod
