"""Importing feature packages under CPython for many virtual devices.

Each (feature folder, name) is imported once under a private module name, so
devices on different releases of a feature can share one process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from firmware.pb.errors import FeatureError

_cache: dict[tuple[str, str], ModuleType] = {}


def import_feature(root: str, name: str) -> ModuleType:
    key = (str(Path(root).resolve()), name)
    mod = _cache.get(key)
    if mod is not None:
        return mod
    init = Path(key[0]) / name / "__init__.py"
    if not init.exists():
        raise FeatureError(f"feature {name} has no __init__.py in {root}")
    tag = hashlib.sha256(key[0].encode()).hexdigest()[:10]
    modname = f"_pbfeature_{tag}_{name}"
    spec = importlib.util.spec_from_file_location(
        modname, init, submodule_search_locations=[str(init.parent)]
    )
    if spec is None or spec.loader is None:
        raise FeatureError(f"cannot import feature {name} from {root}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[modname]
        raise
    _cache[key] = mod
    return mod
