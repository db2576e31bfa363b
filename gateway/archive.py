"""A release folder as a tar archive, the form `permabeta ota publish` uploads.

The archive holds ``manifest.json`` and ``blobs/<sha256>.z`` and nothing
else. Unpacking trusts nothing in it: no absolute paths, no ``..``, no
links or devices, no other names, no repeats, bounded sizes; members are
copied out one by one (never extractall), so nothing lands outside the
destination. What it unpacks is then verified like any release.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path, PurePosixPath

from ota.release import BLOBS, MANIFEST, Release

from .errors import ReleaseRefusedError

TAR_TYPE = "application/x-tar"
MAX_ARCHIVE = 32 * 1024 * 1024  # bytes of an uploaded archive
MAX_MEMBERS = 200
_MAX_MANIFEST = 16384
_BLOB = re.compile(r"blobs/[0-9a-f]{64}\.z")


def pack_release(release: Release) -> bytes:
    """The archive of a release: its manifest.json, the blob of each file and of its notes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(release.path / MANIFEST, arcname=MANIFEST, recursive=False)
        done = set()
        notes = [release.notes_entry] if release.notes_entry is not None else []
        for entry in [*release.files, *notes]:
            if entry.sha256 not in done:
                done.add(entry.sha256)
                blob = release.blob_path(entry)
                tar.add(blob, arcname=f"{BLOBS}/{blob.name}", recursive=False)
    return buf.getvalue()


def _bad(message: str) -> ReleaseRefusedError:
    return ReleaseRefusedError(f"bad release archive: {message}", "bad_archive")


def _member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise _bad(f"{member.name[:80]!r} leaves the release folder")
    return name.rstrip("/")


def unpack_release(data: bytes, dest: Path) -> None:
    """Unpack an archive's manifest.json and blobs/*.z into the new folder
    dest. Raises ReleaseRefusedError bad_archive."""
    dest.mkdir(mode=0o700)
    (dest / BLOBS).mkdir()
    seen: set[str] = set()
    written = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for n, member in enumerate(tar, 1):
                if n > MAX_MEMBERS:
                    raise _bad(f"more than {MAX_MEMBERS} members")
                name = _member_name(member)
                if member.isdir() and name in ("", ".", BLOBS):
                    continue
                if not member.isfile() or member.issparse():
                    raise _bad(f"{member.name[:80]!r} is not a regular file")
                if name != MANIFEST and not _BLOB.fullmatch(name):
                    raise _bad(f"{member.name[:80]!r}: only {MANIFEST} and {BLOBS}/<sha256>.z belong in it")
                if name in seen:
                    raise _bad(f"{name} appears twice")
                if name == MANIFEST and member.size > _MAX_MANIFEST:
                    raise _bad(f"{MANIFEST} has {member.size} bytes, more than {_MAX_MANIFEST}")
                seen.add(name)
                src = tar.extractfile(member)
                if src is None:
                    raise _bad(f"{name} cannot be read")
                with src, (dest / name).open("xb") as out:
                    while chunk := src.read(65536):
                        written += len(chunk)
                        if written > MAX_ARCHIVE:
                            raise _bad(f"it unpacks to more than {MAX_ARCHIVE} bytes")
                        out.write(chunk)
    except (tarfile.TarError, EOFError) as exc:
        raise _bad(str(exc)) from exc
    if MANIFEST not in seen:
        raise _bad(f"it has no {MANIFEST}")
