"""A serial cable for tests: two ptys joined by socat, at fixed paths."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from .wait import wait_for


class Line:
    """Two ptys joined by socat, at fixed paths: dev for the device, gw for
    the gateway. An end closed and opened again (a program restarted) is no
    end of the cable (ignoreeof: socat would take a pty whose other side
    closed for the end of its input). Killing socat pulls the cable: both
    ptys hang up, and their paths go, as a USB adapter's device node goes
    with it (a link left behind would name whatever pty the system makes
    next under its number)."""

    def __init__(self, folder: Path) -> None:
        self.dev = str(folder / "dev")
        self.gw = str(folder / "gw")
        self.log = folder / "socat.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def plug(self) -> None:
        # the device's path appears once socat has set both ptys up: socat
        # makes its link before it sets its pty raw (VMIN 1), which would
        # undo the device's VMIN 0 had the device opened it in between
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *("socat", "-d", "-d"),
                    f"PTY,link={self.dev}.new,raw,echo=0,ignoreeof",
                    f"PTY,link={self.gw},raw,echo=0,ignoreeof",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_for(lambda: b"starting data transfer loop" in self.log.read_bytes(), 5, what="socat's ptys")
        os.rename(self.dev + ".new", self.dev)

    def pull(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        for path in (self.dev, self.gw):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
