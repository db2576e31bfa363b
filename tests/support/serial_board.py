"""A board on a serial port without a board: the real MicroPython unix port
behind a pty that socat makes, its REPL on the pty as a board's is on its USB
UART, its working folder playing the board's flash. Killing socat is
pulling the cable."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from pathlib import Path

from .processes import MICROPYTHON, SMALL_HEAP
from .wait import wait_for

SOCAT = "socat"


class SerialBoard:
    """socat PTY,link=port EXEC:'micropython' with the flash folder as its cwd;
    or, with program, any other program behind the pty (cat: a port that
    echoes and never answers as a REPL, or as an ESP chip)."""

    def __init__(self, folder: Path, program: str | None = None, heap: str = SMALL_HEAP) -> None:
        self.folder = folder
        self.flash = folder / "flash"
        self.port = str(folder / "tty")
        self.program = program or f"{shlex.quote(str(MICROPYTHON))} -X heapsize={heap}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SerialBoard:
        self.flash.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.port)  # a link a killed socat left behind
        self.proc = subprocess.Popen(
            [
                SOCAT,
                f"PTY,link={self.port},raw,echo=0",
                f"EXEC:{self.program},pty,raw,echo=0,stderr",
            ],
            cwd=self.flash,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: os.path.exists(self.port), 5, what="socat's pty")
        return self

    def unplug(self) -> None:
        """The cable pulled: socat and what runs behind it go at once."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.port)

    def files(self) -> set[str]:
        return {p.relative_to(self.flash).as_posix() for p in self.flash.rglob("*") if p.is_file()}
