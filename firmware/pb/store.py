# Atomic JSON records on flash: write a temporary file, sync it, rename it
# over the old one. A power cut at any point leaves the old record or the
# new one, never a torn mix.
import json
import os

from .compat import fsync
from .errors import StoreError

_TMP = ".tmp"


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def makedirs(path):
    """mkdir -p, for the filesystems of both interpreters."""
    cur = ""
    for part in path.split("/"):
        if not part:
            cur = "/" if not cur else cur
            continue
        cur = cur + part if cur in ("", "/") else cur + "/" + part
        if not exists(cur):
            os.mkdir(cur)


def write_atomic(path, data):
    """Replace path's content with data as one step: bytes, or an iterator
    of bytes written in turn (a record streamed, never whole in RAM)."""
    tmp = path + _TMP
    try:
        try:
            with open(tmp, "wb") as f:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    f.write(data)
                else:
                    for part in data:
                        f.write(part)
                fsync(f)
        except OSError:
            # a tmp not written whole is no pending replacement (read_bytes
            # would take it for one where path is missing): none is left
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
        try:
            os.rename(tmp, path)
        except OSError:
            # FAT cannot rename over an existing file: remove, then rename.
            # A cut between the two leaves only tmp, which read_bytes() takes.
            os.remove(path)
            os.rename(tmp, path)
    except OSError as exc:
        raise StoreError("cannot write %s: %s" % (path, exc)) from exc


def read_bytes(path):
    """Content of path, or of its pending replacement if a rename was cut
    short; None if neither exists."""
    for p in (path, path + _TMP):
        try:
            with open(p, "rb") as f:
                return f.read()
        except OSError:
            continue
    return None


class Store:
    """Named JSON records in one directory, each written atomically."""

    def __init__(self, root):
        self.root = root
        try:
            makedirs(root)
        except OSError as exc:
            raise StoreError("cannot create store %s: %s" % (root, exc)) from exc

    def _path(self, name):
        return self.root + "/" + name + ".json"

    def load(self, name, default=None):
        """The record, or default if absent. Raises StoreError if it exists
        but is not valid JSON (the caller decides how to recover)."""
        data = read_bytes(self._path(name))
        if data is None:
            return default
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StoreError("record %s is corrupt: %s" % (name, exc)) from exc

    def save(self, name, value):
        write_atomic(self._path(name), json.dumps(value).encode("utf-8"))

    def delete(self, name):
        for p in (self._path(name), self._path(name) + _TMP):
            try:
                os.remove(p)
            except OSError:
                pass
