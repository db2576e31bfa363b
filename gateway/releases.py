"""The gateway's release store (docs/ota.md 2 and 5).

A release is verified when it is added, exactly as a device would verify it
(ota.verify.verify_release against the gateway's trusted root: envelope,
release-role signatures, the manifest's rules, every blob compressed and
inflated), then kept in two places:

- the ``releases`` table of the gateway's database: ``manifest.json`` byte
  for byte and a summary (model, counter, version, sizes);
- its blobs, content-addressed, in a folder beside the database:
  ``<db>.blobs/<zsha256>``, the compressed bytes a device fetches, named by
  their own SHA-256 (the manifest's ``zsha256``; a release folder names them
  by the SHA-256 of the uncompressed content instead). Releases share equal
  blobs; a blob file is written once, to a temporary name, hashed while it is
  copied, then renamed into place.

Adding the same manifest again changes nothing (and puts back a blob file
that went missing). A model's counter names one release only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ota.errors import VerifyError
from ota.release import MANIFEST, NOTES, ZLIB_WBITS, FileEntry, Release
from ota.verify import verify_release

from .db import Row
from .errors import OtaDisabledError, ReleaseNotFoundError, ReleaseRefusedError
from .store import Store

BLOBS_SUFFIX = ".blobs"
MIN_PREFIX = 8
_COPY = 65536
log = logging.getLogger("permabeta.gateway.releases")
ABSENT_S = 10.0  # a blob the database lacks (or holds wrong) is not asked for again this long
_CACHE = 64
_HEX = frozenset("0123456789abcdef")


def blobs_dir(db: Path) -> Path:
    """Where the blobs of a database's releases live: ``<db>.blobs/``."""
    return db.with_name(db.name + BLOBS_SUFFIX)


BLOB_CACHE = 64 * 1024 * 1024  # bytes of blobs kept in memory while devices fetch them
BLOB_CACHED_MAX = 256 * 1024  # a larger blob is read a chunk at a time (256 fit the cache)


@dataclass(frozen=True)
class ObjectInfo:
    """An object a device may fetch: its size and its chunk tag (the first
    8 bytes of its SHA-256)."""

    size: int
    tag: bytes


@dataclass(frozen=True)
class StoredRelease:
    """A verified release as the gateway keeps it."""

    id: str  # sha256 of manifest.json
    model: str
    counter: int
    version: str
    manifest: bytes  # manifest.json, byte for byte
    body: dict[str, Any]  # its parsed `signed`
    files: int
    size: int
    zsize: int
    added: float

    @classmethod
    def from_row(cls, row: Row) -> StoredRelease:
        manifest = bytes(row["manifest"])
        body = json.loads(json.loads(manifest)["signed"])
        return cls(
            row["id"],
            row["model"],
            row["counter"],
            row["version"],
            manifest,
            body,
            row["files"],
            row["size"],
            row["zsize"],
            row["added"],
        )

    @property
    def ref(self) -> str:
        """``model@counter``: a release's short, unique name."""
        return f"{self.model}@{self.counter}"

    @property
    def entries(self) -> tuple[FileEntry, ...]:
        return tuple(FileEntry.from_dict(f) for f in self.body["files"])

    @property
    def notes_entry(self) -> FileEntry | None:
        """The blob of its release notes as signed (docs/ota.md 2.1), if it has notes."""
        d = self.body.get(NOTES)
        return FileEntry.from_dict({"path": NOTES, **d}) if isinstance(d, dict) else None

    @cached_property
    def objects(self) -> dict[str, ObjectInfo]:
        """What a device with an update of this release may fetch: ``manifest``
        (the envelope) and each blob by zsha256."""
        objs = {"manifest": ObjectInfo(len(self.manifest), bytes.fromhex(self.id)[:8])}
        for e in self.entries:
            objs[e.zsha256] = ObjectInfo(e.zsize, bytes.fromhex(e.zsha256)[:8])
        image = self.body.get("image")
        if image is not None:  # (the MicroPython image: one blob of segments, ota/image.py)
            objs[image["zsha256"]] = ObjectInfo(image["zsize"], bytes.fromhex(image["zsha256"])[:8])
        return objs

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ref": self.ref,
            "model": self.model,
            "counter": self.counter,
            "version": self.version,
            "api": self.body.get("api"),
            "requires": self.body.get("requires", []),
            "image": (self.body.get("image") or {}).get("version"),
            "created": self.body.get("created"),
            "features": {n: f.get("version") for n, f in sorted(self.body["features"].items())},
            "files": self.files,
            "size": self.size,
            "zsize": self.zsize,
            "added": self.added,
        }


def _unique_blobs(release: Release) -> dict[str, FileEntry]:
    """zsha256 -> one file entry with that blob."""
    out: dict[str, FileEntry] = {}
    for e in release.files:
        out.setdefault(e.zsha256, e)
    return out


def _blob_names(release: Release) -> list[str]:
    """The blobs of a verified release: its files', its image's, its notes'."""
    names = list(_unique_blobs(release))
    if release.image is not None:
        names.append(release.image.zsha256)
    if release.notes_entry is not None:
        names.append(release.notes_entry.zsha256)
    return names


def _file_sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_COPY):
                h.update(chunk)
        return h.hexdigest()
    except FileNotFoundError:
        return None


class ReleaseStore:
    """Releases in the gateway's database and blob folder. `root` is the
    root.json the gateway trusts (None: this gateway cannot add releases)."""

    def __init__(self, store: Store, blobs: Path | None = None, root: bytes | None = None) -> None:
        self.store = store
        self.blobs = blobs if blobs is not None else store.beside(BLOBS_SUFFIX)
        self.root = root
        self._cache: OrderedDict[str, StoredRelease] = OrderedDict()
        # blobs being served, whole (named by their hash: what a name holds never changes)
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._blob_bytes = 0
        # (a pool's workers may run on several machines: on PostgreSQL the blobs are in the
        # database too, and the folder is this machine's copy of those it needed)
        self.shared = store.db.kind == "postgresql"
        self._absent: dict[str, float] = {}  # blob -> until when the database is not asked for it again

    # ---- adding ------------------------------------------------------------

    def prepare(self, path: Path) -> Release:
        """Verify the release folder at path and put its blobs into the blob
        folder. Touches no database, so it may run in a worker thread.
        Raises OtaDisabledError, ReleaseRefusedError (code: the trust code)."""
        if self.root is None:
            raise OtaDisabledError("this gateway has no keys: start it with --keys DIR")
        try:
            release = verify_release(path, self.root)
        except VerifyError as exc:
            raise ReleaseRefusedError(f"release refused: {exc.code}: {exc.message}", exc.code) from exc
        self.blobs.mkdir(mode=0o700, parents=True, exist_ok=True)
        for zsha, entry in _unique_blobs(release).items():
            self._copy_blob(release.blob_path(entry), zsha)
        if release.image is not None and release.image_path is not None:
            self._copy_blob(release.image_path, release.image.zsha256)
        if release.notes_entry is not None:
            self._copy_blob(release.blob_path(release.notes_entry), release.notes_entry.zsha256)
        return release

    def _copy_blob(self, src: Path, zsha: str) -> None:
        dest = self.blobs / zsha
        if _file_sha256(dest) == zsha:
            return
        tmp = self.blobs / f".{zsha[:16]}.{secrets.token_hex(4)}.tmp"
        h = hashlib.sha256()
        try:
            with src.open("rb") as fin, tmp.open("xb") as fout:
                while chunk := fin.read(_COPY):
                    h.update(chunk)
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            if h.hexdigest() != zsha:
                # verified a moment ago: the folder changed under us
                raise ReleaseRefusedError(
                    f"release refused: mismatch: the blob {zsha[:16]} changed", "mismatch"
                )
            os.replace(tmp, dest)
        except OSError as exc:
            raise ReleaseRefusedError(
                f"cannot store the blob {zsha[:16]}: {exc.strerror}", "storage"
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def insert(self, release: Release, now: float) -> tuple[StoredRelease, bool]:
        """Record a prepared release; (the stored release, whether it is new).
        Raises ReleaseRefusedError counter_taken if another release of the
        model has that counter, runtime_dropped if it carries no runtime
        and an earlier release of the model did."""
        known = self.get(release.sha256)
        if known is not None:
            self._share(_blob_names(release))  # (its blobs kept here before they were shared)
            return known, False
        # (its blobs first: no worker on another machine sees the release without them)
        self._share(_blob_names(release))
        other = self.store.db.execute(
            "SELECT id FROM releases WHERE model = ? AND counter = ?", (release.model, release.counter)
        ).fetchone()
        if other is not None:
            raise ReleaseRefusedError(
                f"release refused: {release.model}@{release.counter} is already release {other[0][:12]} "
                "(a release counter names one release; build this one with a higher counter)",
                "counter_taken",
            )
        if "runtime" not in release.body:
            # a device installs a release as its whole set: one without a
            # runtime after one with would take it back to its factory runtime
            for earlier in reversed(
                self._rows("WHERE model = ? AND counter < ?", (release.model, release.counter))
            ):
                if "runtime" in earlier.body:
                    raise ReleaseRefusedError(
                        f"release refused: {release.model}@{release.counter} carries no runtime, and "
                        f"{earlier.ref} carries runtime {earlier.body['runtime']}: a device that installs "
                        "it would go back to its factory runtime (build it with --runtime)",
                        "runtime_dropped",
                    )
        files = release.files
        self.store.db.execute(
            """INSERT INTO releases (id, model, counter, version, manifest, files, size, zsize, added)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                release.sha256,
                release.model,
                release.counter,
                release.version,
                release.manifest,
                len(files),
                sum(f.size for f in files),
                sum(e.zsize for e in _unique_blobs(release).values())
                + (release.image.zsize if release.image is not None else 0),
                now,
            ),
        )
        stored = self.get(release.sha256)
        assert stored is not None  # just inserted
        return stored, True

    def add(self, path: Path, now: float) -> tuple[StoredRelease, bool]:
        """prepare, then insert. Raises what they raise."""
        return self.insert(self.prepare(path), now)

    # ---- finding -----------------------------------------------------------

    def _rows(self, where: str = "", args: tuple[Any, ...] = ()) -> list[StoredRelease]:
        if self.store.schema < 2:  # an old database, read-only: no releases yet
            return []
        rows = self.store.db.execute(f"SELECT * FROM releases {where} ORDER BY model, counter", args)
        return [self._cached(r) for r in rows]

    def _cached(self, row: Row) -> StoredRelease:
        rel = self._cache.get(row["id"])
        if rel is None:
            rel = self._cache[row["id"]] = StoredRelease.from_row(row)
            if len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return rel

    def get(self, release_id: str) -> StoredRelease | None:
        """The release with exactly this id."""
        cached = self._cache.get(release_id)
        if cached is not None:
            return cached
        found = self._rows("WHERE id = ?", (release_id,))
        return found[0] if found else None

    def list(self, model: str | None = None) -> list[StoredRelease]:
        """Every release (of one model), by model and counter."""
        return self._rows("WHERE model = ?", (model,)) if model else self._rows()

    def find(self, ref: str) -> StoredRelease:
        """A release by its id or an id prefix of at least 8 hex digits,
        ``model@counter``, or its version (if only one release has it).
        Raises ReleaseNotFoundError (code 'ambiguous' when several match)."""
        ref = ref.strip()
        try:
            ref.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, from a JSON escape: no release is named so
            raise ReleaseNotFoundError(f"no release {ref[:80]!r} (not UTF-8 text)") from None
        if "@" in ref:
            model, _, counter = ref.rpartition("@")
            if not (counter.isascii() and counter.isdigit()):
                raise ReleaseNotFoundError(f"{ref[:80]!r}: write MODEL@COUNTER, e.g. thermostat@2")
            found = []
            if len(counter) < 19:  # more digits than SQLite's largest integer (and int() takes at most 4300)
                found = self._rows("WHERE model = ? AND counter = ?", (model, int(counter)))
            if not found:
                raise ReleaseNotFoundError(f"no release {ref[:80]}")
            return found[0]
        prefix = ref.lower()
        if MIN_PREFIX <= len(prefix) <= 64 and set(prefix) <= _HEX:
            found = self._rows("WHERE substr(id, 1, ?) = ?", (len(prefix), prefix))
            if len(found) == 1:
                return found[0]
            if found:
                raise ReleaseNotFoundError(
                    f"{ref!r} is the start of {len(found)} release ids; give more of it", "ambiguous"
                )
        found = self._rows("WHERE version = ?", (ref,))
        if len(found) == 1:
            return found[0]
        if found:
            which = ", ".join(r.ref for r in found)
            raise ReleaseNotFoundError(f"version {ref!r} names several releases ({which})", "ambiguous")
        if len(ref) < MIN_PREFIX and ref and set(ref.lower()) <= _HEX:
            raise ReleaseNotFoundError(f"no release {ref!r} (an id prefix needs {MIN_PREFIX} hex digits)")
        raise ReleaseNotFoundError(f"no release {ref!r} (give an id, MODEL@COUNTER or a version)")

    # ---- serving -----------------------------------------------------------

    def blob_path(self, zsha256: str) -> Path:
        """Where the blob is in this machine's folder; fetched there from the
        database first if it is not (a release added through another
        machine's worker). Missing from both, the path of no file."""
        path = self.blobs / zsha256
        if self.shared and not path.exists():
            self._fetch(zsha256, path)
        return path

    def _fetch(self, zsha256: str, path: Path) -> None:
        if self._absent.get(zsha256, 0.0) > time.monotonic():
            return  # (asked a moment ago: a stream's every chunk would ask again)
        row = self.store.db.execute("SELECT data FROM release_blobs WHERE zsha256 = ?", (zsha256,)).fetchone()
        data = bytes(row[0]) if row is not None else None
        if data is None or hashlib.sha256(data).hexdigest() != zsha256:
            if data is not None:
                log.error("the database's blob %s is not the one named: not taken", zsha256[:16])
            self._absent[zsha256] = time.monotonic() + ABSENT_S
            return
        self.blobs.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.blobs / f".{zsha256[:16]}.{secrets.token_hex(4)}.tmp"
        try:
            with tmp.open("xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _share(self, names: Iterable[str], held: set[str] | None = None) -> Sequence[str]:
        """Put these blobs of this machine's folder into the database (a pool
        on PostgreSQL), those it lacks (held: the names it holds, if known);
        the names neither has."""
        if not self.shared:
            return ()
        db = self.store.db
        lost: Sequence[str] = ()
        for zsha in names:
            if held is not None and zsha in held:
                continue
            if db.execute("SELECT 1 FROM release_blobs WHERE zsha256 = ?", (zsha,)).fetchone() is not None:
                continue
            try:
                data = (self.blobs / zsha).read_bytes()
            except OSError:
                data = b""
            if hashlib.sha256(data).hexdigest() != zsha:
                lost = (*lost, zsha)
                continue
            db.execute(
                "INSERT INTO release_blobs (zsha256, data) VALUES (?, ?) ON CONFLICT (zsha256) DO NOTHING",
                (zsha, data),
            )
        return lost

    def share_all(self) -> None:
        """Every stored release's blobs that this machine's folder holds and
        the database lacks, into the database (releases added before their
        blobs were shared); a release whose blobs neither has is said."""
        if not self.shared:
            return
        held = {str(r[0]) for r in self.store.db.execute("SELECT zsha256 FROM release_blobs").fetchall()}
        for release in self.list():
            notes = [release.notes_entry.zsha256] if release.notes_entry is not None else []
            lost = self._share([name for name in release.objects if name != "manifest"] + notes, held)
            if lost:
                log.warning(
                    "release %s: %d blob(s) neither here nor in the database (%s...): no worker can serve it",
                    release.ref,
                    len(lost),
                    lost[0][:16],
                )

    def feature_manifests(self, release: StoredRelease) -> dict[str, dict[str, Any]]:
        """Feature name -> its manifest.json, parsed, for every feature of a
        stored release (what its metrics are declared in, docs/rollouts.md 5),
        from the blob folder; each blob checked against the sizes and hashes
        signed. Raises ReleaseRefusedError missing_blob, mismatch (the blob
        is not the one signed) or bad_manifest."""
        entries = {e.path: e for e in release.entries}
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(release.body["features"]):
            entry = entries.get(f"{name}/{MANIFEST}")
            if entry is None:
                raise ReleaseRefusedError(f"{release.ref}: feature {name} has no {MANIFEST}", "bad_manifest")
            try:
                manifest = json.loads(self._content(entry))
            except ValueError as exc:  # (UnicodeDecodeError too)
                raise ReleaseRefusedError(
                    f"{release.ref}: {entry.path} is not JSON: {exc}", "bad_manifest"
                ) from exc
            if not isinstance(manifest, dict):
                raise ReleaseRefusedError(f"{release.ref}: {entry.path} is not a JSON object", "bad_manifest")
            out[name] = manifest
        return out

    def notes(self, release: StoredRelease) -> str | None:
        """Its release notes, from their blob, checked against what was signed
        (None: it has none). Raises ReleaseRefusedError missing_blob, mismatch."""
        entry = release.notes_entry
        if entry is None:
            return None
        try:
            return self._content(entry).decode("utf-8")
        except UnicodeDecodeError as exc:  # (verified as text when it was added)
            raise ReleaseRefusedError(f"{release.ref}: its notes are not UTF-8", "mismatch") from exc

    def _content(self, entry: FileEntry) -> bytes:
        """A file's content from its blob, inflated with the device's 1 KB
        window, read once and checked against its signed sizes and hashes."""
        try:
            with self.blob_path(entry.zsha256).open("rb") as f:
                blob = f.read(entry.zsize + 1)
        except FileNotFoundError as exc:
            raise ReleaseRefusedError(f"the blob of {entry.path} is missing", "missing_blob") from exc
        except OSError as exc:
            raise ReleaseRefusedError(
                f"cannot read the blob of {entry.path}: {exc.strerror}", "storage"
            ) from exc
        if len(blob) != entry.zsize or hashlib.sha256(blob).hexdigest() != entry.zsha256:
            raise ReleaseRefusedError(f"{entry.path}: the blob is not the one signed", "mismatch")
        inflate = zlib.decompressobj(ZLIB_WBITS)
        try:
            data = inflate.decompress(blob, entry.size + 1)
        except zlib.error as exc:
            raise ReleaseRefusedError(f"{entry.path}: the blob does not inflate: {exc}", "mismatch") from exc
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ReleaseRefusedError(f"{entry.path}: the content is not the one signed", "mismatch")
        return data

    def read(self, release: StoredRelease, obj: str, offset: int, length: int) -> bytes:
        """Up to length bytes of an object of release at offset. Raises
        OSError if a blob file is missing or unreadable."""
        if obj == "manifest":
            return release.manifest[offset : offset + length]
        blob = self._blobs.get(obj)
        if blob is None:
            path = self.blob_path(obj)
            if path.stat().st_size > BLOB_CACHED_MAX:
                with path.open("rb") as f:  # (a big one, an image, is read a chunk at a time)
                    f.seek(offset)
                    return f.read(length)
            blob = path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != obj:
                return blob[offset : offset + length]  # (not kept: the device finds it is not the one)
            self._blobs[obj] = blob
            self._blob_bytes += len(blob)
            while self._blob_bytes > BLOB_CACHE:
                self._blob_bytes -= len(self._blobs.popitem(last=False)[1])
        else:
            self._blobs.move_to_end(obj)
        return blob[offset : offset + length]
