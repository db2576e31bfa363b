"""Releases (docs/ota.md 2): build one from feature folders, read one, sign one.

A release folder holds ``manifest.json`` (a signing envelope) and
``blobs/<sha256>.z``: each file's content, zlib-compressed with a 2^10-byte
window (a device inflates it with 1 KB), named by the SHA-256 of the
uncompressed content. The manifest is checked with the device's own rules
(firmware.pb.ota.trust) before anything is written.

One release serves every device of a model: it carries each module in two
forms, source (``.py``, what CPython runs: the simulator's virtual devices)
and compiled with mpy-cross (``.mpy``, what MicroPython runs: boards and the
unix port), both signed; each device downloads and installs only its own
form (firmware.pb.ota.forms).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware.pb.errors import FeatureError, TrustError
from firmware.pb.manifest import check_manifest as check_feature_manifest
from firmware.pb.ota import forms as device_forms
from firmware.pb.ota import trust
from gateway.errors import MetricsError
from gateway.metrics import declared as declared_metrics

from .envelope import add_signatures, sign_envelope
from .errors import BuildError, EnvelopeError, ReleaseError
from .image import ImageEntry
from .image import entry as image_entry
from .image import unpack as unpack_image
from .keys import Keys
from .mpy import compile_module

MANIFEST = "manifest.json"
BLOBS = "blobs"
ZLIB_WBITS = 10  # the window a device inflates with: 2^10 bytes
_CHUNK = 4096
_MAX_VERSION = 64
MAX_NOTES = 8192  # bytes of a release's notes, UTF-8 text
NOTES = "notes"  # the manifest's field that signs them (docs/ota.md 2.1)
PERMISSION_KINDS = ("reads", "drives", "publishes")
FORMS = ("py", "mpy")  # the forms of a module: source, compiled (mpy-cross)
# who runs each form
INTERPRETERS = {
    "py": "CPython (the simulator's virtual devices)",
    "mpy": "MicroPython (boards, the unix port)",
}


@dataclass(frozen=True)
class FileEntry:
    """One file of a release: its content (size, sha256) and blob (zsize, zsha256)."""

    path: str
    size: int
    sha256: str
    zsize: int
    zsha256: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileEntry:
        return cls(d["path"], d["size"], d["sha256"], d["zsize"], d["zsha256"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "zsize": self.zsize,
            "zsha256": self.zsha256,
        }

    @property
    def feature(self) -> str:
        return self.path.split("/", 1)[0]


@dataclass(frozen=True)
class Release:
    """A release folder as read: manifest.json exactly as stored and its parsed
    `signed`. Well-formed (trust.check_manifest) and its blobs exist, but not
    verified: see ota.verify."""

    path: Path
    manifest: bytes  # manifest.json, byte for byte
    body: dict[str, Any]  # the parsed `signed` of the manifest
    sha256: str  # of `manifest`: what an offer names
    signatures: tuple[dict[str, str], ...]

    @property
    def model(self) -> str:
        return str(self.body["model"])

    @property
    def counter(self) -> int:
        return int(self.body["counter"])

    @property
    def version(self) -> str:
        return str(self.body["version"])

    @property
    def api(self) -> int:
        return int(self.body["api"])

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return tuple(FileEntry.from_dict(f) for f in self.body["files"])

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return dict(self.body["features"])

    @property
    def signed(self) -> bytes:
        """The exact bytes the signatures cover."""
        return str(json.loads(self.manifest)["signed"]).encode()

    def blob_path(self, entry: FileEntry) -> Path:
        return blob_path(self.path, entry.sha256)

    @property
    def image(self) -> ImageEntry | None:
        """The MicroPython image it carries (ota/image.py), if any."""
        d = self.body.get("image")
        return ImageEntry.from_dict(d) if d is not None else None

    @property
    def image_path(self) -> Path | None:
        """The image's blob (named by the image's SHA-256, as file blobs are)."""
        img = self.image
        return blob_path(self.path, img.sha256) if img is not None else None

    @property
    def notes_entry(self) -> FileEntry | None:
        """The blob of its release notes, as the manifest signs it, if it has notes."""
        d = self.body.get(NOTES)
        return FileEntry.from_dict({"path": NOTES, **d}) if d is not None else None

    @property
    def notes(self) -> str | None:
        """Its release notes (read from their blob; check_blobs checks them), if it has notes."""
        entry = self.notes_entry
        if entry is None:
            return None
        inflate = zlib.decompressobj(ZLIB_WBITS)  # (at most what may be signed: read() checks no content)
        data = inflate.decompress(self.blob_path(entry).read_bytes(), MAX_NOTES + 1)
        return data.decode("utf-8", "replace")

    @property
    def forms(self) -> tuple[str, ...]:
        """The forms its modules ship in ("py", "mpy"), in FORMS order."""
        exts = {f.path.rsplit(".", 1)[-1] for f in self.files}
        return tuple(form for form in FORMS if form in exts)

    def files_for(self, form: str) -> tuple[FileEntry, ...]:
        """The files a device running `form` downloads and installs, by the
        device's own rule. Raises ReleaseError wrong_form if it lacks that
        form of a module."""
        try:
            chosen = device_forms.device_files(list(self.body["files"]), form)
        except TrustError as exc:
            raise ReleaseError(exc.code, exc.message) from exc
        return tuple(FileEntry.from_dict(f) for f in chosen)


def blob_path(release: Path, sha256: str) -> Path:
    return release / BLOBS / f"{sha256}.z"


def compress(data: bytes) -> bytes:
    """A blob: zlib with the small window a device can inflate; stored
    blocks alone where deflate does not make it smaller (a device copies
    those instead of inflating them: firmware/pb/ota/download.py inflated)."""
    c = zlib.compressobj(9, zlib.DEFLATED, ZLIB_WBITS)
    coded = c.compress(data) + c.flush()
    s = zlib.compressobj(0, zlib.DEFLATED, ZLIB_WBITS)
    stored = s.compress(data) + s.flush()
    return stored if len(stored) <= len(coded) else coded


# ---- reading -----------------------------------------------------------------


def read(path: Path | str) -> Release:
    """The release in a folder; checks the manifest's form and that every
    blob exists (not signatures, not blob content). Raises ReleaseError."""
    folder = Path(path)
    mf = folder / MANIFEST
    if not mf.is_file():
        raise ReleaseError("bad_envelope", f"{folder} is not a release: it has no {MANIFEST}")
    data = mf.read_bytes()
    try:
        _, body, sigs = trust.open_envelope(data)
        trust.check_manifest(body)
    except TrustError as exc:
        raise ReleaseError(exc.code, f"{mf}: {exc.message}") from exc
    try:
        check_notes_entry(body)
    except ReleaseError as exc:
        raise ReleaseError(exc.code, f"{mf}: {exc.message}") from exc
    rel = Release(folder, data, body, hashlib.sha256(data).hexdigest(), tuple(sigs))
    for entry in [*rel.files, *([rel.notes_entry] if rel.notes_entry is not None else [])]:
        if not rel.blob_path(entry).is_file():
            raise ReleaseError("missing_blob", f"{folder}: the blob of {entry.path} is missing")
    if rel.image_path is not None and not rel.image_path.is_file():
        raise ReleaseError("missing_blob", f"{folder}: the blob of the MicroPython image is missing")
    return rel


def check_notes_entry(body: dict[str, Any]) -> None:
    """The manifest's `notes`, if it has them: the sizes and hashes of their
    blob, the text at most MAX_NOTES bytes. The device skips them (it never
    fetches them); the tools and the gateway check them. Raises ReleaseError
    bad_manifest."""
    d = body.get(NOTES)
    if d is None:
        return
    fields = ("size", "sha256", "zsize", "zsha256")
    if not isinstance(d, dict) or set(d) != set(fields):
        raise ReleaseError("bad_manifest", f"manifest field 'notes' must be {{{', '.join(fields)}}}")
    for k in ("size", "zsize"):
        if not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 0:
            raise ReleaseError("bad_manifest", f"notes: {k} must be a size")
    if d["size"] > MAX_NOTES:
        raise ReleaseError("bad_manifest", f"notes of {d['size']} bytes: at most {MAX_NOTES}")
    if not trust.is_hex(d["sha256"], 64) or not trust.is_hex(d["zsha256"], 64):
        raise ReleaseError("bad_manifest", "notes: hashes must be 64 lowercase hex")


def notes_text(data: bytes, where: str = "the notes") -> str:
    """data as release notes: UTF-8 text of at most MAX_NOTES bytes, no
    control characters but newlines and tabs. Raises ReleaseError bad_notes."""
    if len(data) > MAX_NOTES:
        raise ReleaseError("bad_notes", f"{where}: more than the {MAX_NOTES} bytes release notes may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReleaseError("bad_notes", f"{where}: not UTF-8 text (byte {exc.start})") from None
    odd = next((c for c in text if not c.isprintable() and c not in "\n\t"), None)
    if odd is not None:
        raise ReleaseError("bad_notes", f"{where}: not text (it holds the control character {odd!r})")
    return text


def check_blob(path: Path, entry: FileEntry) -> None:
    """Check one blob as a device does, streaming: compressed size and hash,
    then inflated (1 KB window) size and hash; more bytes than signed stop
    it at once. Raises ReleaseError missing_blob or mismatch."""
    if not path.is_file():
        raise ReleaseError("missing_blob", f"the blob of {entry.path} is missing")
    zh, h = hashlib.sha256(), hashlib.sha256()
    zsize = size = 0
    inflate = zlib.decompressobj(ZLIB_WBITS)
    inflate_error = None
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            zsize += len(chunk)
            if zsize > entry.zsize:
                raise ReleaseError(
                    "mismatch", f"{entry.path}: the blob is longer than the {entry.zsize} signed"
                )
            zh.update(chunk)
            data = chunk
            while data and inflate_error is None:
                try:
                    out = inflate.decompress(data, entry.size - size + 1)
                except zlib.error as exc:
                    inflate_error = str(exc)
                    break
                size += len(out)
                if size > entry.size:
                    raise ReleaseError(
                        "mismatch", f"{entry.path}: inflates to more than the {entry.size} signed"
                    )
                h.update(out)
                data = inflate.unconsumed_tail
    if zsize != entry.zsize or zh.hexdigest() != entry.zsha256:
        raise ReleaseError("mismatch", f"{entry.path}: the blob is not the one signed (size or SHA-256)")
    if inflate_error is not None:
        raise ReleaseError("mismatch", f"{entry.path}: does not inflate with a 1 KB window: {inflate_error}")
    if not inflate.eof or inflate.unused_data:
        raise ReleaseError("mismatch", f"{entry.path}: the compressed stream is truncated or has extra bytes")
    if size != entry.size or h.hexdigest() != entry.sha256:
        raise ReleaseError("mismatch", f"{entry.path}: the content is not the one signed (size or SHA-256)")


def check_blobs(release: Release) -> None:
    """check_blob for every file of a release. Raises ReleaseError."""
    for entry in release.files:
        check_blob(release.blob_path(entry), entry)
    notes = release.notes_entry
    if notes is not None:
        check_blob(release.blob_path(notes), notes)
        notes_text(zlib.decompress(release.blob_path(notes).read_bytes(), ZLIB_WBITS), "the release notes")
    if release.image is not None and release.image_path is not None:
        unpack_image(release.image_path.read_bytes(), release.image)


# ---- building ----------------------------------------------------------------


def _load_feature(folder: Path) -> dict[str, Any]:
    mf = folder / MANIFEST
    if not folder.is_dir():
        raise BuildError(f"{folder} is not a folder")
    if not mf.is_file():
        raise BuildError(f"{folder} has no {MANIFEST}, so it is not a feature")
    try:
        m = json.loads(mf.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BuildError(f"{mf} is not JSON: {exc}") from exc
    try:
        return dict(check_feature_manifest(m, folder.name))
    except FeatureError as exc:
        raise BuildError(f"{mf}: {exc}") from exc


def _feature_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """(path relative to the folder, file) of everything a feature ships:
    not __pycache__, *.pyc or dotfiles. Sorted. Symbolic links are refused."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in dirnames + filenames:
            # a link could pull in anything on the maker's machine
            if (here / name).is_symlink() and not name.startswith("."):
                raise BuildError(f"{here / name} is a symbolic link; copy what it points to in instead")
        for name in filenames:
            if not name.startswith(".") and not name.endswith(".pyc"):
                found.append(((here / name).relative_to(folder).as_posix(), here / name))
    yield from sorted(found)


# Firmware that only the gateway, the simulator and the tests use: the full
# validation of every message and the broker's half of MQTT (pb/peer), and
# the file-backed stand-in for the ESP32's app partitions, which nothing on
# a device loads yet. Neither provisioning nor a release puts it on a device.
HOST_ONLY = ("pb/peer/", "pb/hal/partitions.py")
# What the firmware needs of CPython alone (zlib's inflate, a tty's opening):
# shipped to a device that runs the modules as source (a CPython one), not as
# .mpy (a board: a manifest holds 64 files, each one left out is room).
CPYTHON_ONLY = ("pb/ota/zinflate.py", "pb/net/tty_host.py", "pb/aio_host.py")
# The Bluetooth LE carrier's device end: shipped to the boards that have a
# radio for it (a board file's "ble": true, the shirt's), not to the others.
BLE_ONLY = ("pb/net/ble_",)


def runtime_sources(folder: Path, cpython: bool = True, ble: bool = True) -> list[tuple[str, Path]]:
    """(path on the device, source) of every module of the runtime in folder
    (a pb/ folder): "pb/<module>.py", sorted, host-only ones left out, the
    CPython-only ones unless cpython, and the Bluetooth ones unless ble."""
    out = []
    skip = HOST_ONLY + (() if cpython else CPYTHON_ONLY) + (() if ble else BLE_ONLY)
    for src in sorted(folder.rglob("*.py")):
        rel = f"{trust.RUNTIME}/{src.relative_to(folder).as_posix()}"
        if not rel.startswith(skip) and "__pycache__" not in rel:
            out.append((rel, src))
    return out


def runtime_boards(folder: Path, model: str) -> list[tuple[str, Path]]:
    """(path on the device, file) of the board files a runtime release
    carries: "pb/boards/<board>.json" for each board of the model, from the
    runtime folder's boards/ if it has one, else the firmware's own. The
    device runs the one of its board with the runtime (docs/ota.md 2.1).
    Raises BuildError."""
    own = folder / "boards"
    if own.is_dir():
        found = sorted(own.glob("*.json"))
    else:
        import firmware

        found = sorted((Path(firmware.__file__).parent / "boards").glob("*.json"))
    out = []
    for path in found:
        try:
            board = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise BuildError(f"{path} is not a board file: {exc}") from exc
        if not isinstance(board, dict) or not isinstance(board.get("capabilities"), dict):
            raise BuildError(f"{path} is not a board file (no capabilities)")
        if board.get("model") != model:
            continue
        if board.get("board") != path.stem:
            raise BuildError(
                f"{path} names board {board.get('board')!r}: a board file is named after its board"
            )
        out.append((f"{trust.RUNTIME}/boards/{path.name}", path))
    if not out:
        raise BuildError(f"{own if own.is_dir() else 'the firmware'} has no board file of a {model}")
    return out


def runtime_version(folder: Path) -> str:
    """The VERSION a runtime folder states (pb/__init__.py). Raises BuildError."""
    return _runtime_value(folder, "VERSION", r'"([^"]+)"')


def runtime_api(folder: Path) -> int:
    """The API a runtime folder states (pb/__init__.py): what the features
    of a release that carries it must need. Raises BuildError."""
    return int(_runtime_value(folder, "API", r"(\d+)"))


def _runtime_value(folder: Path, name: str, value: str) -> str:
    import re

    init = folder / "__init__.py"
    found = re.search(rf"^{name} = {value}", init.read_text(), re.M) if init.is_file() else None
    if found is None:
        raise BuildError(f"{folder} is not a runtime: no {name} in {init}")
    return found.group(1)


def _boards(model: str) -> list[dict[str, Any]]:
    import firmware

    folder = Path(firmware.__file__).parent / "boards"
    every = [json.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))]
    mine = [b for b in every if b.get("model") == model]
    if not mine:
        known = ", ".join(sorted({str(b.get("model")) for b in every}))
        raise BuildError(f"unknown model {model!r} (known: {known})")
    return mine


def _can_have(board: dict[str, Any]) -> set[str]:
    """What a board has or may be given: its capabilities and its add-ons."""
    return set(board.get("capabilities") or {}) | set(board.get("addons") or {})


def _check_hardware(
    model: str, needs: dict[str, list[str]], boards: list[dict[str, Any]] | None = None
) -> None:
    """Each feature (name -> what it requires) can run on some board of the
    model, with its add-ons plugged in. A release installs on every board
    of its model; a feature whose hardware a board lacks waits for it there
    (docs/ota.md 2)."""
    boards = _boards(model) if boards is None else boards
    for name, requires in sorted(needs.items()):
        lacking = {str(b.get("board")): [c for c in requires if c not in _can_have(b)] for b in boards}
        if any(not missing for missing in lacking.values()):
            continue
        why = "; ".join(f"{board} lacks {', '.join(missing)}" for board, missing in lacking.items())
        raise BuildError(f"{name} needs {', '.join(requires)}, which no {model} board can have ({why})")


def _entry(path: str, data: bytes, blob: bytes) -> dict[str, Any]:
    return FileEntry(
        path,
        len(data),
        hashlib.sha256(data).hexdigest(),
        len(blob),
        hashlib.sha256(blob).hexdigest(),
    ).to_dict()


def _notes_blob(notes: str) -> tuple[dict[str, Any], bytes]:
    """The manifest's `notes` entry and the blob of notes. Raises BuildError."""
    data = notes.encode("utf-8", "surrogatepass")
    try:
        notes_text(data)
    except ReleaseError as exc:
        raise BuildError(exc.message) from exc
    entry = _entry(NOTES, data, compress(data))
    del entry["path"]
    return entry, compress(data)


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BuildError(f"{out} exists and is not an empty folder; releases are never overwritten")


def build(
    model: str,
    feature_dirs: Sequence[Path | str],
    version: str,
    out: Path | str,
    counter: int | None = None,
    forms: Sequence[str] = FORMS,
    keys: Keys | None = None,
    *,
    now: float | None = None,
    runtime: Path | str | None = None,
    image: Path | str | None = None,
    image_version: str | None = None,
    notes: str | None = None,
) -> Release:
    """Build a release of the features in feature_dirs (each a folder named
    after its feature) for one model into the new folder `out`.

    `counter` defaults to the current Unix time in seconds, so successive
    builds grow (give it explicitly for reproducible builds). `forms`: which
    forms of every .py module ship: "py" as it is, "mpy" compiled with
    mpy-cross; by default both, so that one release serves the devices
    that run either (each installs only its own). With keys the manifest is
    signed by the release key, else it is written unsigned (sign it later
    with `sign`). `runtime`: a pb/ folder the release carries beside the
    features (docs/ota.md 2.1): its modules ship as pb/..., compiled as
    the runtime is, and the device's boot loader runs them with the
    features. `image`: an ESP32 app image (MicroPython, as esptool would
    flash it) the release carries too, of version `image_version`: the
    devices write it to their other app partition and boot it on trial
    with the set (docs/ota.md 4.11). `notes`: the release notes an owner
    reads before consenting, signed with the release as the hashes of their
    blob (the devices never fetch them). Raises BuildError (or KeyStoreError).
    """
    forms = tuple(forms)
    if not forms or any(f not in FORMS for f in forms) or len(set(forms)) != len(forms):
        raise BuildError(f"forms must be one or both of {', '.join(FORMS)}, not {forms!r}")
    out = Path(out)
    now = time.time() if now is None else now
    counter = int(now) if counter is None else counter
    if not isinstance(counter, int) or isinstance(counter, bool) or counter < 1:
        raise BuildError(f"the release counter must be an integer >= 1, not {counter!r}")
    if not isinstance(version, str) or not 0 < len(version) <= _MAX_VERSION or not version.isprintable():
        raise BuildError(f"the release version must be 1-{_MAX_VERSION} printable characters")
    if not feature_dirs:
        raise BuildError("a release needs at least one feature")
    signer = keys.release_key() if keys is not None else None
    notes_blob = _notes_blob(notes) if notes is not None else None
    _prepare_out(out)

    manifests: dict[str, dict[str, Any]] = {}
    folders: dict[str, Path] = {}
    for d in feature_dirs:
        folder = Path(d).resolve()
        m = _load_feature(folder)
        if m["name"] in manifests:
            raise BuildError(f"feature {m['name']} is given twice ({folders[m['name']]} and {folder})")
        manifests[m["name"]], folders[m["name"]] = m, folder
    try:
        # the metrics a rollout judges the release by (docs/rollouts.md 5)
        declared_metrics(manifests)
    except MetricsError as exc:
        where = folders[exc.feature] / MANIFEST if exc.feature in folders else "the features"
        raise BuildError(f"{where}: {exc}") from exc
    apis = {name: m["api"] for name, m in manifests.items()}
    if len(set(apis.values())) > 1:
        each = ", ".join(f"{n} needs {a}" for n, a in sorted(apis.items()))
        raise BuildError(f"the features need different runtime APIs ({each})")
    if runtime is not None:
        # the features run on the runtime the release carries (docs/ota.md 2.1)
        need, api = next(iter(apis.values())), runtime_api(Path(runtime).resolve())
        if need != api:
            raise BuildError(f"the features need runtime API {need}, the runtime in {runtime} has API {api}")
    needs = {name: [str(c) for c in m.get("requires", [])] for name, m in manifests.items()}
    requires = sorted({c for n in needs.values() for c in n})
    _check_hardware(model, needs)
    boards = runtime_boards(Path(runtime).resolve(), model) if runtime is not None else []
    if boards:
        # (a board file the runtime carries replaces the one its boards run)
        _check_hardware(model, needs, [json.loads(board_file.read_bytes()) for _, board_file in boards])

    contents: dict[str, bytes] = {}
    shipping = [
        (f"{name}/{rel}", src) for name in sorted(manifests) for rel, src in _feature_files(folders[name])
    ]
    if runtime is not None:
        ble = any(json.loads(src.read_bytes()).get("ble") for _, src in boards)
        shipping += runtime_sources(Path(runtime).resolve(), cpython="py" in forms, ble=ble)
        shipping += boards
    for path, src in shipping:
        data = src.read_bytes()
        shipped = [(path, data)]
        if path.endswith(".py"):
            shipped = [(path, data)] if "py" in forms else []
            if "mpy" in forms:
                shipped.append((path[:-3] + ".mpy", compile_module(src, path)))
        for path, data in shipped:
            try:
                trust.check_path(path, manifests, runtime is not None)
            except TrustError as exc:
                raise BuildError(f"{src} cannot ship: {exc.message} (rename it or move it out)") from exc
            if path in contents:
                raise BuildError(f"{path} would ship twice (both a .py and a .mpy in {src.parent}?)")
            contents[path] = data
    for form in FORMS:
        try:
            device_forms.device_files([{"path": p} for p in sorted(contents)], form)
        except TrustError as exc:
            if form in forms:  # a .py or .mpy of the feature folder's own lacks its other form
                raise BuildError(f"{exc.message}; ship both forms of every module") from exc

    blobs = {hashlib.sha256(data).hexdigest(): compress(data) for data in contents.values()}
    if notes_blob is not None:
        blobs[notes_blob[0]["sha256"]] = notes_blob[1]
    img = None
    if image is not None:
        if not image_version:
            raise BuildError("an image needs its version (the MicroPython version it is, e.g. 1.24.1)")
        img, blob = image_entry(Path(image), image_version)
        blobs[img.sha256] = blob
    body = {
        # (version 2: a release with an image, which a runtime from before
        # images refuses rather than install the set without it)
        "v": 2 if img is not None else 1,
        "type": "release",
        "model": model,
        "counter": counter,
        "version": version,
        "api": next(iter(apis.values())),
        "requires": requires,
        "created": int(now),
        **({"runtime": runtime_version(Path(runtime))} if runtime is not None else {}),
        **({"image": img.to_dict()} if img is not None else {}),
        **({NOTES: notes_blob[0]} if notes_blob is not None else {}),
        "features": {
            name: {
                "version": m["version"],
                "permissions": {k: list(m.get("permissions", {}).get(k, [])) for k in PERMISSION_KINDS},
            }
            for name, m in sorted(manifests.items())
        },
        "files": [
            _entry(path, data, blobs[hashlib.sha256(data).hexdigest()])
            for path, data in sorted(contents.items())
        ],
    }
    fewer = "ship fewer files" + (", or one form of the modules (forms py or mpy)" if len(forms) > 1 else "")
    try:
        trust.check_manifest(body)
        manifest = sign_envelope(body, [signer] if signer is not None else [])
    except TrustError as exc:
        hint = f"; {fewer}" if len(contents) > trust.MAX_FILES else ""
        raise BuildError(f"the manifest would not pass a device: {exc.message} ({exc.code}){hint}") from exc
    except EnvelopeError as exc:
        raise BuildError(f"{exc} ({len(contents)} files; {fewer})") from exc

    # Written beside `out` and renamed into place: a failed build leaves nothing.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        (tmp / BLOBS).mkdir(parents=True)
        for sha, blob in blobs.items():
            blob_path(tmp, sha).write_bytes(blob)
        (tmp / MANIFEST).write_bytes(manifest)
        _prepare_out(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read(out)


# ---- signing -----------------------------------------------------------------


def sign(path: Path | str, keys: Keys) -> Release:
    """Add the release key's signature to a release's manifest.json, over
    its exact `signed` string. Checks every blob first, so a maker never
    signs what a device would refuse. Raises ReleaseError, KeyStoreError
    or EnvelopeError."""
    key = keys.release_key()
    rel = read(path)
    check_blobs(rel)
    data = add_signatures(rel.manifest, [key])
    mf = rel.path / MANIFEST
    tmp = mf.with_name(MANIFEST + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, mf)
    return read(rel.path)
