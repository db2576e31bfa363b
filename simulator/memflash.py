"""A virtual device's flash kept in RAM, with a board's power-cut semantics.

A fleet of many devices need not give each one a folder on disk: its flash
can be a MemFlash, reached at a path no disk has (/pbflash/<n>/<id>). The
firmware's own code reaches it unchanged: every module of it that touches
files is given this module's `open`, `os` and `fsync` (install()), which
serve paths under /pbflash/ from the device's MemFlash and pass every other
path to the real ones.

The semantics are those the firmware must survive on a board's filesystem
(littlefs under MicroPython's VFS, or FAT), taken at their strictest:
- a file's content becomes durable when it is synced: flush(), close() (and
  so `fsync`), as littlefs's lfs_file_sync;
- creating, renaming (over an existing file too), removing a file and making
  or removing a directory are atomic and durable at once (littlefs's
  metadata commits);
- a power cut keeps what was durable: of a file open for writing, what it
  gained since its last sync by appending is kept in part (torn: a random
  prefix, maybe none, maybe all of it; littlefs itself would keep none,
  FAT may keep a part) and what it changed in place is lost; its handles
  are then dead: what the cancelled code still writes or reads through
  them goes nowhere and raises nothing, and closing them syncs nothing.
Simplifications: the handles of one file share its content (a sync through
one makes the others' writes durable too); space is counted in bytes, not
blocks; the flash is written in binary modes only (the firmware's own way).

The factory features are the firmware's own folders, mounted read-only (a
board has them in its image): mount(). Capacity is the board's filesystem
size (free space as statvfs reports it, and ENOSPC when full); a device's
faults (simulator/faults.py) can make it full at any time.
"""

from __future__ import annotations

import builtins
import errno
import io
import itertools
import os as _os
import random
import weakref
from collections.abc import Callable
from typing import IO, Any, cast

PREFIX = "/pbflash/"
CAPACITY = 2 * 1024 * 1024  # MicroPython's ESP32 filesystem partition on a 4 MB board
BLOCK = 4096
_DIR_MODE = 0o040755
_FILE_MODE = 0o100644

_flashes: weakref.WeakValueDictionary[str, MemFlash] = weakref.WeakValueDictionary()
_numbers = itertools.count(1)
_fds: weakref.WeakValueDictionary[int, MemFile] = weakref.WeakValueDictionary()


def _err(code: int, path: str) -> OSError:
    return OSError(code, _os.strerror(code), path)


class _Node:
    """A file: its content as the device reads it, and what of it is durable."""

    __slots__ = ("copy", "data", "durable", "handles", "linked")

    def __init__(self) -> None:
        self.data = bytearray()
        self.durable = 0  # data[:durable] is on the medium (unless copy holds it)
        self.copy: bytes | None = None  # the durable content, once changed in place
        self.handles = 0  # open for writing
        self.linked = True  # in the flash's folders (a file removed while open is not)

    def sync(self) -> None:
        self.durable = len(self.data)
        self.copy = None

    def changing(self, start: int) -> None:
        """A write from byte start is coming: keep the durable content first
        if the write reaches into it."""
        if self.copy is None and start < self.durable:
            self.copy = bytes(self.data[: self.durable])

    def torn(self, rng: random.Random) -> None:
        if self.copy is not None:
            self.data = bytearray(self.copy)
        else:
            del self.data[self.durable + rng.randint(0, len(self.data) - self.durable) :]
        self.sync()


class MemFile(io.RawIOBase):
    """An open file of a MemFlash (binary; text modes wrap it)."""

    def __init__(self, flash: MemFlash, node: _Node, path: str, mode: str) -> None:
        super().__init__()
        self.flash = flash
        self.node = node
        self.name = path
        self.mode = mode
        self.pos = 0
        self._read = "r" in mode or "+" in mode
        self._write = any(c in mode for c in "wax+")
        self._append = "a" in mode
        self._dead = False
        self._fd = -next(_numbers)  # (a number no real file has: os.fsync(f.fileno()) syncs it)
        _fds[self._fd] = self
        if self._write:
            node.handles += 1
            flash.handles.add(self)

    def fileno(self) -> int:
        return self._fd

    def readable(self) -> bool:
        return self._read

    def writable(self) -> bool:
        return self._write

    def seekable(self) -> bool:
        return True

    def _alive(self) -> bool:
        """False once the power went: the cancelled code that still holds
        the handle reads nothing and writes into the void, and nothing it
        does raises (a board's code would not be running at all)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return not self._dead

    def _source(self) -> bytearray | None:
        """The content to read from (None: the power went, nothing is read)."""
        if not self._alive():
            return None
        if not self._read:
            raise io.UnsupportedOperation("not readable")
        return self.node.data

    def readinto(self, b: Any) -> int:
        data = self._source()
        if data is None:
            return 0
        view = memoryview(b).cast("B")
        n = max(0, min(len(view), len(data) - self.pos))
        view[:n] = data[self.pos : self.pos + n]
        self.pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        """(RawIOBase's reads through readinto, which would copy twice)"""
        data = self._source()
        if data is None:
            return b""
        end = len(data) if size is None or size < 0 else min(len(data), self.pos + size)
        got = bytes(data[self.pos : end]) if end > self.pos else b""
        self.pos += len(got)
        return got

    def readline(self, size: int | None = -1) -> bytes:
        """(IOBase's reads a byte at a time: a line of a need list cost 0.2 ms)"""
        data = self._source()
        if data is None:
            return b""
        end = data.find(b"\n", self.pos)
        end = len(data) if end < 0 else end + 1
        if size is not None and size >= 0:
            end = min(end, self.pos + size)
        got = bytes(data[self.pos : end]) if end > self.pos else b""
        self.pos += len(got)
        return got

    def write(self, b: Any) -> int:
        if not self._alive():
            return len(memoryview(b))
        if not self._write:
            raise io.UnsupportedOperation("not writable")
        data = self.node.data
        if self._append:
            self.pos = len(data)
        chunk = bytes(b)
        end = self.pos + len(chunk)
        if self.node.linked:
            self.flash.grow(self.name, max(0, end - len(data)))
        self.node.changing(self.pos)
        if self.pos > len(data):
            data.extend(bytes(self.pos - len(data)))
        data[self.pos : end] = chunk
        self.pos = end
        return len(chunk)

    def seek(self, offset: int, whence: int = 0) -> int:
        self._alive()
        if whence not in (0, 1, 2):
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        base = (0, self.pos, len(self.node.data))[whence]
        if base + offset < 0:
            raise _err(errno.EINVAL, self.name)
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        self._alive()
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        if not self._write:
            raise io.UnsupportedOperation("not writable")
        size = self.pos if size is None else size
        if not self._alive():
            return size
        data = self.node.data
        if size < len(data):
            self.node.changing(size)
            if self.node.linked:
                self.flash.used -= len(data) - size
            del data[size:]
        else:
            if self.node.linked:
                self.flash.grow(self.name, size - len(data))
            data.extend(bytes(size - len(data)))
        return size

    def flush(self) -> None:
        """The filesystem's sync (littlefs's lfs_file_sync): what was written is durable."""
        if self._dead or self.closed:
            return
        if self._write:
            self.node.sync()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            if self._write and not self._dead:
                self.node.handles -= 1
                self.flash.handles.discard(self)
            super().close()

    def kill(self) -> None:
        """The power went: this handle is gone, whatever it held unsynced."""
        self._dead = True
        self.node.handles -= 1


class MemFlash:
    """One device's flash in RAM at base (PREFIX + n + "/" + name)."""

    def __init__(self, name: str, capacity: int = CAPACITY, full: Callable[[], bool] = lambda: False) -> None:
        self.base = f"{PREFIX}{next(_numbers)}/{name}"
        self.capacity = capacity
        self.full = full  # the device's faults say its flash is full
        self.files: dict[str, _Node] = {}
        self.dirs: set[str] = {""}
        self.mounts: dict[str, str] = {}  # a read-only folder -> the real folder it shows
        self.handles: set[MemFile] = set()
        self.used = 0
        _flashes[self.base] = self

    # ---- paths ----------------------------------------------------------------------

    def rel(self, path: str) -> str:
        """path (under base) relative to base, normalised."""
        parts: list[str] = []
        for p in path[len(self.base) :].split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(p)
        return "/".join(parts)

    def mounted(self, rel: str) -> str | None:
        for m, real in self.mounts.items():
            if rel == m or rel.startswith(m + "/"):
                return real + rel[len(m) :]
        return None

    def _parent_ok(self, rel: str, path: str) -> None:
        parent = rel.rpartition("/")[0]
        if parent not in self.dirs:
            raise _err(errno.ENOENT, path)

    def mount(self, rel: str, real: str) -> None:
        """Show the real folder `real` read-only at rel (its parent exists)."""
        self._parent_ok(rel, rel)
        self.mounts[rel] = real.rstrip("/")

    def unmount(self, rel: str) -> None:
        self.mounts.pop(rel, None)

    # ---- what the firmware calls (through the module functions below) ----------------

    def grow(self, path: str, n: int) -> None:
        """n more bytes are about to be written: ENOSPC if they do not fit."""
        if n > 0 and (self.full() or self.used + n > self.capacity):
            raise _err(errno.ENOSPC, path)
        self.used += n

    def open(self, path: str, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
        rel = self.rel(path)
        real = self.mounted(rel)
        writing = any(c in mode for c in "wax+")
        if real is not None:
            if writing:
                raise _err(errno.EROFS, path)
            return builtins.open(real, mode, *args, **kwargs)
        if rel in self.dirs:
            raise _err(errno.EISDIR, path)
        if writing and "b" not in mode:
            # (the firmware writes bytes; a text layer's buffer would sync on its own terms)
            raise ValueError(f"a flash in RAM is written in binary modes only, not {mode!r}")
        node = self.files.get(rel)
        if writing and self.full():
            raise _err(errno.ENOSPC, path)  # (as a full flash folder refuses every open for writing)
        if node is None:
            if not writing or mode.startswith("r"):
                raise _err(errno.ENOENT, path)
            self._parent_ok(rel, path)
            node = self.files[rel] = _Node()
        elif "x" in mode:
            raise _err(errno.EEXIST, path)
        f = MemFile(self, node, path, mode)
        if "w" in mode:
            f.truncate(0)
        if "b" in mode:
            return cast(IO[Any], f)
        return io.TextIOWrapper(
            io.BufferedReader(f),
            encoding=kwargs.get("encoding") or "utf-8",
            errors=kwargs.get("errors"),
            newline=kwargs.get("newline"),
        )

    def stat(self, path: str) -> _os.stat_result:
        rel = self.rel(path)
        real = self.mounted(rel)
        if real is not None:
            return _os.stat(real)
        if rel in self.dirs:
            return _os.stat_result((_DIR_MODE, 0, 0, 1, 0, 0, 0, 0, 0, 0))
        node = self.files.get(rel)
        if node is None:
            raise _err(errno.ENOENT, path)
        return _os.stat_result((_FILE_MODE, 0, 0, 1, 0, 0, len(node.data), 0, 0, 0))

    def listdir(self, path: str) -> list[str]:
        rel = self.rel(path)
        real = self.mounted(rel)
        if real is not None:
            return _os.listdir(real)
        if rel not in self.dirs:
            raise _err(errno.ENOTDIR if rel in self.files else errno.ENOENT, path)
        prefix = rel + "/" if rel else ""
        names = {
            p[len(prefix) :]
            for p in itertools.chain(self.files, self.dirs, self.mounts)
            if p.startswith(prefix) and p != rel and "/" not in p[len(prefix) :]
        }
        return sorted(names)

    def mkdir(self, path: str, *args: Any) -> None:
        rel = self.rel(path)
        if rel in self.dirs or rel in self.files or rel in self.mounts:
            raise _err(errno.EEXIST, path)
        if self.mounted(rel) is not None:
            raise _err(errno.EROFS, path)
        self._parent_ok(rel, path)
        self.dirs.add(rel)

    def rmdir(self, path: str) -> None:
        rel = self.rel(path)
        if self.mounted(rel) is not None:
            raise _err(errno.EROFS, path)
        if rel not in self.dirs or not rel:
            raise _err(errno.ENOENT if rel not in self.files else errno.ENOTDIR, path)
        if self.listdir(path):
            raise _err(errno.ENOTEMPTY, path)
        self.dirs.discard(rel)

    def remove(self, path: str) -> None:
        rel = self.rel(path)
        if self.mounted(rel) is not None:
            raise _err(errno.EROFS, path)
        if rel in self.dirs:
            raise _err(errno.EISDIR, path)
        node = self.files.pop(rel, None)
        if node is None:
            raise _err(errno.ENOENT, path)
        self._unlink(node)

    def _unlink(self, node: _Node) -> None:
        """A file left the folders (removed, or renamed over): its space is
        free, and a handle still open on it writes outside the count."""
        node.linked = False
        self.used -= len(node.data)

    def rename(self, src: str, dst: str) -> None:
        a, b = self.rel(src), self.rel(dst)
        if self.mounted(a) is not None or self.mounted(b) is not None:
            raise _err(errno.EROFS, src)
        self._parent_ok(b, dst)
        if a in self.files:
            if b in self.dirs:
                raise _err(errno.EISDIR, dst)
            if a == b:
                return
            old = self.files.pop(b, None)
            if old is not None:
                self._unlink(old)
            self.files[b] = self.files.pop(a)
        elif a in self.dirs and a:
            if a == b:
                return
            if b in self.files or (b in self.dirs and self.listdir(dst)):
                raise _err(errno.ENOTEMPTY, dst)
            if b.startswith(a + "/"):
                raise _err(errno.EINVAL, dst)
            if any(m == a or m.startswith(a + "/") for m in self.mounts):
                raise _err(errno.EROFS, src)  # (the factory set stays where the image has it)
            for d in sorted(d for d in self.dirs if d == a or d.startswith(a + "/")):
                self.dirs.discard(d)
                self.dirs.add(b + d[len(a) :])
            for f in [f for f in self.files if f.startswith(a + "/")]:
                self.files[b + f[len(a) :]] = self.files.pop(f)
        else:
            raise _err(errno.ENOENT, src)

    def statvfs(self, path: str) -> _os.statvfs_result:
        free = max(0, self.capacity - self.used) // BLOCK if not self.full() else 0
        return _os.statvfs_result((BLOCK, BLOCK, self.capacity // BLOCK, free, free, 0, 0, 0, 0, 255))

    # ---- what the simulator does to it ----------------------------------------------

    def cut(self, rng: random.Random) -> None:
        """The power went: what was not synced is lost or torn, and every
        handle open for writing is dead."""
        for f in list(self.handles):
            f.kill()
        self.handles.clear()
        for node in self.files.values():
            if node.durable != len(node.data) or node.copy is not None:
                before = len(node.data)
                node.torn(rng)
                self.used -= before - len(node.data)

    def read(self, rel: str) -> bytes | None:
        """A file's content now (for a test or the simulator), or None."""
        real = self.mounted(rel)
        if real is not None:
            try:
                with builtins.open(real, "rb") as f:
                    return f.read()
            except OSError:
                return None
        node = self.files.get(rel)
        return bytes(node.data) if node is not None else None

    def walk(self, rel: str) -> list[str]:
        """Every file under rel (relative to rel), sorted; mounted folders too."""
        out: list[str] = []
        path = self.base + "/" + rel if rel else self.base
        try:
            names = self.listdir(path)
        except OSError:
            return out
        for name in names:
            sub = f"{rel}/{name}" if rel else name
            if self.stat(self.base + "/" + sub).st_mode & 0x4000:
                out += [f"{name}/{p}" for p in self.walk(sub)]
            else:
                out.append(name)
        return out

    def export(self, folder: str) -> None:
        """Write the flash's content into folder on disk (a device's folder
        asked for after the fact): files, and mounted folders as links."""
        for m, real in self.mounts.items():
            dst = _os.path.join(folder, m)
            _os.makedirs(_os.path.dirname(dst), exist_ok=True)
            if not _os.path.lexists(dst):
                _os.symlink(real, dst, target_is_directory=True)
        for d in self.dirs:
            _os.makedirs(_os.path.join(folder, d), exist_ok=True)
        for rel, node in self.files.items():
            with builtins.open(_os.path.join(folder, rel), "wb") as f:
                f.write(node.data)


class _Above:
    """The folders above the flashes (/pbflash, /pbflash/<n>): there, as
    folders no one may change."""

    def open(self, path: str, *args: Any, **kwargs: Any) -> IO[Any]:
        raise _err(errno.EISDIR, path)

    def stat(self, path: str) -> _os.stat_result:
        return _os.stat_result((_DIR_MODE, 0, 0, 1, 0, 0, 0, 0, 0, 0))

    def listdir(self, path: str) -> list[str]:
        return []

    def mkdir(self, path: str, *args: Any) -> None:
        raise _err(errno.EEXIST, path)

    def _refuse(self, path: str, *args: Any) -> Any:
        raise _err(errno.EROFS, path)

    rmdir = remove = rename = statvfs = _refuse


_ABOVE = _Above()


def find(path: Any) -> MemFlash | _Above | None:
    """The MemFlash holding path (or the folders above them all), or None
    for a path on disk. Raises OSError (ENODEV) for a flash gone."""
    if not isinstance(path, str):
        if not isinstance(path, _os.PathLike):
            return None
        path = _os.fspath(path)
        if not isinstance(path, str):
            return None
    if not path.startswith(PREFIX[:-1]):
        return None
    parts = [p for p in path.split("/") if p]
    if parts[0] != PREFIX.strip("/"):
        return None  # (/pbflashy)
    if len(parts) < 3:
        return _ABOVE
    flash = _flashes.get(f"{PREFIX}{parts[1]}/{parts[2]}")
    if flash is None:
        raise _err(errno.ENODEV, path)  # a flash gone with its device
    return flash


def flash_of(path: Any) -> MemFlash | None:
    """The MemFlash holding path, or None."""
    found = find(path)
    return found if isinstance(found, MemFlash) else None


# ---- the firmware's view: open, os and fsync routed by path ---------------------------

_real_open: Callable[..., IO[Any]] = builtins.open


def open_routed(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
    """open() for the firmware's filesystem: a flash in RAM, or a folder
    (through open_for_disk: a full flash folder refuses writes)."""
    flash = find(file)
    if flash is not None:
        return flash.open(_os.fspath(file), mode, *args, **kwargs)
    return _real_open(file, mode, *args, **kwargs)


def open_partition(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
    """open() for the app partitions' stand-in files: outside the
    filesystem on a board, so a full filesystem does not refuse them."""
    flash = find(file)
    if flash is not None:
        return flash.open(_os.fspath(file), mode, *args, **kwargs)
    return builtins.open(file, mode, *args, **kwargs)


class _RoutedOs:
    """The `os` module as the firmware sees it: the file calls routed by
    path, everything else os's own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_os, name)

    @staticmethod
    def _route(name: str, path: Any, *rest: Any) -> Any:
        flash = find(path)
        if flash is not None:
            return getattr(flash, name)(_os.fspath(path), *rest)
        return getattr(_os, name)(path, *rest)

    def stat(self, path: Any) -> Any:
        return self._route("stat", path)

    def listdir(self, path: Any = ".") -> Any:
        return self._route("listdir", path)

    def mkdir(self, path: Any, *mode: Any) -> Any:
        return self._route("mkdir", path, *mode)

    def rmdir(self, path: Any) -> Any:
        return self._route("rmdir", path)

    def remove(self, path: Any) -> Any:
        return self._route("remove", path)

    def statvfs(self, path: Any) -> Any:
        return self._route("statvfs", path)

    def fsync(self, fd: Any) -> None:
        f = _fds.get(fd) if isinstance(fd, int) else None
        if f is not None:
            f.flush()
        else:
            _os.fsync(fd)

    def rename(self, src: Any, dst: Any) -> Any:
        a, b = find(src), find(dst)
        if a is None and b is None:
            return _os.rename(src, dst)
        if a is not b:
            raise _err(errno.EXDEV, _os.fspath(dst))
        assert a is not None
        return a.rename(_os.fspath(src), _os.fspath(dst))


os = _RoutedOs()


def fsync_routed(f: Any) -> None:
    """compat.fsync, its os.fsync routed."""
    f.flush()
    os.fsync(f.fileno())


# every module of the firmware that touches the device's files (a test checks
# that none is missing: tests/simulator/test_memflash.py)
ROUTED = (
    "firmware.loader",
    "firmware.pb.store",
    "firmware.pb.manifest",
    "firmware.pb.ota.download",
    "firmware.pb.ota.files",
    "firmware.pb.ota.flash",
    "firmware.pb.ota.handover",
    "firmware.pb.ota.image",
    "firmware.pb.ota.install",
    "firmware.pb.ota.needs",
    "firmware.pb.ota.roots",
    "firmware.pb.net.tls",
    "firmware.pb.hal.partitions",
    "firmware.pb.hal.app_partition",
)

PARTITIONS = ("firmware.pb.hal.partitions", "firmware.pb.hal.app_partition")

_installed = [False]


def install(open_for_disk: Callable[..., IO[Any]] | None = None) -> None:
    """Give every module in ROUTED the routed open, os and fsync; paths on
    disk go to open_for_disk (default: the builtin open)."""
    global _real_open
    if open_for_disk is not None:
        _real_open = open_for_disk
    if _installed[0]:
        return
    import importlib

    for name in ROUTED:
        mod = importlib.import_module(name)
        mod.open = open_partition if name in PARTITIONS else open_routed  # type: ignore[attr-defined]
        if hasattr(mod, "os"):
            mod.os = os  # type: ignore[attr-defined]
        if hasattr(mod, "fsync"):
            mod.fsync = fsync_routed  # type: ignore[attr-defined]
    _installed[0] = True
