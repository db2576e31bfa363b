# Flash-side helpers of the update agent: streaming hash, copy,
# folder removal, free space. Everything streams through one small buffer;
# no file is ever held whole in RAM.
import hashlib
import os

from ..compat import const
from ..errors import StoreError
from ..store import exists, makedirs
from .flash import STAGE

_BUF = const(512)


def size(path):
    """Size of a file in bytes, or -1 if it does not exist."""
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def staged(base, name=""):
    """The staging folder (docs/ota.md 4.8), or a file in it."""
    return base + "/" + STAGE + ("/" + name if name else "")


def is_dir(path):
    """True if path is a directory."""
    try:
        return bool(os.stat(path)[0] & 0x4000)
    except OSError:
        return False


def file_sha256(path, limit=-1, start=0):
    """(size, SHA-256 hex) of a file, from byte start. With limit >= 0, stops
    after limit + 1 bytes, so a file longer than expected is seen without
    reading it all."""
    h = hashlib.sha256()
    buf = bytearray(_BUF)
    mv = memoryview(buf)
    n = 0
    with open(path, "rb") as f:
        if start:
            f.seek(start)
        while True:
            k = f.readinto(buf)
            if not k:
                break
            n += k
            h.update(mv[:k])
            if 0 <= limit < n:
                break
    return n, hex_of(h.digest())


def hex_of(b):
    return "".join("%02x" % x for x in b)


def remove_tree(path):
    """rm -r; a missing path is fine."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if st[0] & 0x4000:  # a directory
        for name in os.listdir(path):
            remove_tree(path + "/" + name)
        os.rmdir(path)
    else:
        os.remove(path)


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def walk(root, prefix=""):
    """Relative paths of every file under root, sorted."""
    out = []  # type: list[str]
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for name in names:
        if name.startswith(".") or name == "__pycache__":
            continue
        p = root + "/" + name
        rel = prefix + name
        if os.stat(p)[0] & 0x4000:
            out.extend(walk(p, rel + "/"))
        else:
            out.append(rel)
    return out


def held_files(root):
    """{sha256: path} of every file under root (None: no files)."""
    out = {}  # type: dict[str, str]
    if root is None:
        return out
    for rel in walk(root):
        out[file_sha256(root + "/" + rel)[1]] = root + "/" + rel
    return out


def free_bytes(path):
    """Free space on the filesystem holding path, or -1 if unknown."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return -1
    return st[0] * st[4]


def ensure_dir(path):
    try:
        makedirs(path)
    except OSError as exc:
        raise StoreError("cannot create %s: %s" % (path, exc)) from exc


__all__ = [
    "ensure_dir",
    "exists",
    "file_sha256",
    "free_bytes",
    "remove",
    "remove_tree",
    "size",
    "walk",
]
