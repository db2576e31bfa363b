"""A MicroPython board on a serial port, held in its raw REPL through
mpremote's transport: code sent to it runs there and its output comes back.

Every failure of the link or of the port becomes a BoardError with a message
a maker can act on (port missing, busy, silent, lost); the snippets that run
on the board are in gateway/board_code.py.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from types import TracebackType
from typing import Any

from .errors import BoardError, BoardFullError, LinkLostError

WRITE_CHUNK = 1024  # bytes of a file per exec: its repr compiles on the board's heap
_PTY_MAJORS = range(136, 144)  # Unix98 ptys: an emulated board (QEMU, the unix port)
# programs that hold a port open as the link itself, not to read it: `rfcomm connect` keeps
# a Bluetooth serial port's /dev/rfcommN open while it is connected
_LINK_KEEPERS = ("rfcomm",)


def _list_ports() -> str:
    from serial.tools.list_ports import comports

    ports = sorted(p.device for p in comports())
    return ", ".join(ports) if ports else "none"


def _is_pty(port: str) -> bool:
    try:
        st = os.stat(port)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_MAJORS


def holders(port: str) -> list[str]:
    """The other processes that hold port open, as "NAME (process PID)", read
    from /proc (none where there is no /proc, or what it does not let us read)."""
    target = os.path.realpath(port)  # (/dev/serial/by-id/... is a link to the device)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return []
    held = []
    for pid in pids:
        try:
            # (the links' text, never what they point to: a hung network mount is not touched)
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{pid}/fd")):
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
                if name not in _LINK_KEEPERS:
                    held.append(f"{name} (process {pid})")
        except OSError:
            continue  # (gone meanwhile, or not ours to read)
    return held


def open_port(port: str, baud: int) -> Any:
    """Open port exclusively with pyserial and return it, or raise BoardError
    naming why not: missing, busy, not allowed."""
    import serial

    if "://" not in port and not os.path.exists(port):
        raise BoardError(f"no serial port {port} (is the board plugged in? ports seen: {_list_ports()})")
    if "://" not in port and not _is_pty(port):
        # (a serial monitor that takes no lock, screen or cat, is not refused by pyserial's: both
        # would read the board's answers. An emulated board's pty is held by its emulator.)
        others = holders(port)
        if others:
            raise BoardError(
                f"{port} is busy: {', '.join(others)} {'holds' if len(others) == 1 else 'hold'} it "
                "(a serial monitor, mpremote, "
                "a second permabeta?); close it and try again"
            )
    try:
        return serial.serial_for_url(port, baudrate=baud, exclusive=True, timeout=0.2)
    except serial.SerialException as exc:
        code = exc.errno
        if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) or "exclusively lock" in str(exc):
            raise BoardError(
                f"{port} is busy: another program holds it (a serial monitor, mpremote, "
                "a second permabeta?); close it and try again"
            ) from exc
        if code == errno.EACCES:
            raise BoardError(
                f"no permission to open {port}: add yourself to its group (often dialout: "
                "sudo usermod -aG dialout $USER, then log in again)"
            ) from exc
        if code == errno.ENOENT:
            raise BoardError(f"no serial port {port} (ports seen: {_list_ports()})") from exc
        raise BoardError(f"cannot open {port}: {exc}") from exc


class Board:
    """A board in its raw REPL for the life of the context. timeout: seconds
    the board has to answer. A real board is soft reset first (its program
    stops, its heap is fresh); a pty (an emulated board) is taken as it is,
    as `mpremote resume` does. Raises BoardError, LinkLostError."""

    def __init__(self, port: str, *, baud: int = 115200, timeout: float = 10.0) -> None:
        self.port = port
        self.baud = baud
        self.timeout = timeout
        self.emulated = _is_pty(port)
        self._t: Any = None

    def __enter__(self) -> Board:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        open_port(self.port, self.baud).close()  # the clear message, before the transport's own
        try:
            self._t = SerialTransport(self.port, baudrate=self.baud, exclusive=True)
        except TransportError as exc:
            raise BoardError(f"cannot open {self.port}: {exc}") from exc
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints what it read instead
                self._t.enter_raw_repl(soft_reset=not self.emulated, timeout_overall=self.timeout)
        except (TransportError, OSError) as exc:
            self._close()
            raise BoardError(
                f"{self.port} did not answer as a MicroPython REPL within {self.timeout:g} s: is "
                f"MicroPython on it (permabeta flash --port {self.port}), and is the port the board's? "
                "A board provisioned with --close-repl answers only after "
                "`permabeta devices send ID repl open`, until its next reset"
            ) from exc
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is None:
            with contextlib.suppress(Exception):
                self._t.exit_raw_repl()
        self._close()

    def _close(self) -> None:
        if self._t is not None:
            with contextlib.suppress(Exception):
                self._t.close()
            self._t = None

    def exec(self, code: str, timeout: float | None = None) -> str:
        """Run code on the board; what it printed. Raises BoardError (the
        code raised: BoardFullError when the flash is full), LinkLostError."""
        from mpremote.transport import TransportError, TransportExecError

        try:
            out, err = self._t.exec_raw(code, timeout=timeout or self.timeout)
        except TransportExecError as exc:  # (exec_raw returns errors; kept for other versions)
            raise self._failed(str(exc.error_output)) from exc
        except (TransportError, OSError) as exc:
            raise LinkLostError(
                f"the link to {self.port} was lost ({exc}); run the same command again"
            ) from exc
        if err:
            raise self._failed(err.decode("utf-8", "replace"))
        return str(out.decode("utf-8", "replace"))

    def _failed(self, error: str) -> BoardError:
        last = error.strip().splitlines()[-1] if error.strip() else "an error"
        if "ENOSPC" in error or "Errno 28" in error:
            return BoardFullError(f"the flash of the board on {self.port} is full ({last})")
        return BoardError(f"the board on {self.port} failed: {last}")

    def write_file(self, path: str, data: bytes, before: str = "", after: str = "") -> None:
        """Write data to path on the board, chunk by chunk, never whole in its
        RAM; the code before and after runs in the same exchanges as its
        opening and its closing."""
        self.exec(f"{before}\n_f=open({path!r},'wb')")
        closed = False
        try:
            for i in range(0, len(data), WRITE_CHUNK):
                self.exec(f"_f.write({data[i : i + WRITE_CHUNK]!r})")
            closed = True
            self.exec(f"_f.close()\ndel _f\n{after}")
        finally:
            if not closed:
                with contextlib.suppress(BoardError):
                    self.exec("_f.close()\ndel _f")

    def restart(self) -> None:
        """Reset a real board so that it starts what is on it (an emulated one
        stays at its REPL: a reset would end it)."""
        if self.emulated:
            return
        with contextlib.suppress(Exception):
            self._t.exec_raw_no_follow("import machine\nmachine.reset()")
