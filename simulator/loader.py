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

import atexit
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from firmware.pb.errors import FeatureError

from .memflash import MemFlash, flash_of

# digest -> (module, the folder it was imported from)
_cache: dict[str, tuple[ModuleType, Path]] = {}


def _files(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and not f.endswith(".pyc")]
    return sorted(found)


def _digest_of(files: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for rel, data in files:
        h.update(b"%d:%s%d:" % (len(rel), rel.encode(), len(data)))
        h.update(data)
    return h.hexdigest()


def digest(folder: Path) -> str:
    """SHA-256 over the relative paths and contents of a feature folder."""
    return _digest_of([(p.relative_to(folder).as_posix(), p.read_bytes()) for p in _files(folder)])


_released: list[Path] = []  # the folder feature code kept in RAM is imported from


def _from_flash(flash: MemFlash, root: str, name: str) -> tuple[Path, str]:
    """(a folder on disk holding the feature root/name of a flash kept in
    RAM, its key): a mounted factory feature's own folder, else a copy
    written once per content and shared by every device holding it."""
    rel = flash.rel(f"{root}/{name}")
    real = flash.mounted(rel)
    if real is not None:
        folder = Path(real)
        if not (folder / "__init__.py").is_file():
            raise FeatureError(f"feature {name} has no __init__.py in {root}")
        return folder, f"{name}:{digest(folder)}"
    files = []
    for sub in flash.walk(rel):
        last = sub.rsplit("/", 1)[-1]
        if not any(p.startswith(".") or p == "__pycache__" for p in sub.split("/")) and not last.endswith(
            ".pyc"
        ):
            files.append((sub, flash.read(f"{rel}/{sub}") or b""))
    if not any(sub == "__init__.py" for sub, _ in files):
        raise FeatureError(f"feature {name} has no __init__.py in {root}")
    d = _digest_of(files)
    if not _released:
        _released.append(Path(tempfile.mkdtemp(prefix="pb-features-")))
        atexit.register(shutil.rmtree, _released[0], True)
    home = _released[0] / f"{name}.{d}"  # (the digest covers the files, not the name)
    folder = home / name
    if not folder.is_dir():
        tmp = _released[0] / f".{name}.{d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for sub, data in files:
            (tmp / name / sub).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name / sub).write_bytes(data)
        os.rename(tmp, home)
    return folder, f"{name}:{d}"


def import_feature(root: str, name: str) -> ModuleType:
    """The feature package root/name, imported under a private name (the
    runtime's importer hook). Raises FeatureError if there is none."""
    flash = flash_of(root)
    if flash is not None:
        folder, key = _from_flash(flash, root, name)
    else:
        folder = Path(root) / name
        if not (folder / "__init__.py").is_file():
            raise FeatureError(f"feature {name} has no __init__.py in {root}")
        key = f"{name}:{digest(folder)}"
    init = folder / "__init__.py"
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
