"""What a release holds and what it changes, told for a maker and for an
owner: features with their data permissions, files, and against an older
release the files a device downloads and the permissions it would grant."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from .errors import ReleaseError
from .release import FORMS, INTERPRETERS, PERMISSION_KINDS, FileEntry, Release

# What each permission lets a feature do, in an owner's words.
_MEANS = {
    "reads": "sensors it may read",
    "drives": "hardware it may switch or move",
    "publishes": "data it may send off the device",
}


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    version: str
    reads: tuple[str, ...] = ()
    drives: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()

    def permission(self, kind: str) -> tuple[str, ...]:
        return tuple(getattr(self, kind))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "permissions": {k: list(self.permission(k)) for k in PERMISSION_KINDS},
        }


@dataclass(frozen=True)
class FormInfo:
    """What the devices that run one form of the modules (py: CPython, mpy:
    MicroPython) take of a release: the files they download and install,
    or why they refuse it."""

    form: str
    files: tuple[FileEntry, ...] = ()
    refused: str | None = None  # the device's reason (wrong_form), if it refuses the release

    @property
    def runs(self) -> str:
        return INTERPRETERS[self.form]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def zsize(self) -> int:
        return sum(f.zsize for f in _unique_blobs(self.files))

    def to_dict(self) -> dict[str, Any]:
        if self.refused is not None:
            return {"runs": self.runs, "refused": self.refused}
        return {"runs": self.runs, "files": len(self.files), "size": self.size, "zsize": self.zsize}

    def to_text(self) -> str:
        if self.refused is not None:
            return f"{self.form}: REFUSED by {self.runs}: {self.refused}"
        size = f"{self.size} bytes ({self.zsize} compressed)"
        return f"{self.form}: {_n(len(self.files), 'file')}, {size} for {self.runs}"


def form_infos(release: Release) -> tuple[FormInfo, ...]:
    """Per form of the modules, what its devices take of the release (by the
    devices' own rule, firmware.pb.ota.forms)."""
    out = []
    for form in FORMS:
        try:
            out.append(FormInfo(form, release.files_for(form)))
        except ReleaseError as exc:
            out.append(FormInfo(form, refused=f"{exc.code}: {exc.message}"))
    return tuple(out)


def forms_line(release: Release) -> str:
    """One line per form: what its devices install, or that they refuse it."""
    infos = form_infos(release)
    lines = ["forms of the modules (each device installs its own):"]
    lines += [f"  {i.to_text()}" for i in infos]
    return "\n".join(lines)


@dataclass(frozen=True)
class Description:
    """One release, as `permabeta ota inspect R` shows it."""

    path: str
    model: str
    counter: int
    version: str
    api: int
    requires: tuple[str, ...]
    created: int | None
    sha256: str
    signed_by: tuple[str, ...]  # key ids named by its signatures (not checked here)
    features: tuple[FeatureInfo, ...]
    files: tuple[FileEntry, ...]
    forms: tuple[FormInfo, ...] = ()
    runtime: str | None = None  # the version of the runtime (pb/) it carries, if any
    image: dict[str, Any] | None = None  # the manifest's MicroPython image, if it carries one
    notes: str | None = None  # its release notes, if it has them

    def form(self, form: str) -> FormInfo | None:
        return next((f for f in self.forms if f.form == form), None)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def zsize(self) -> int:
        return sum(f.zsize for f in _unique_blobs(self.files))

    def feature(self, name: str) -> FeatureInfo | None:
        return next((f for f in self.features if f.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "model": self.model,
            "counter": self.counter,
            "version": self.version,
            "api": self.api,
            "requires": list(self.requires),
            "created": self.created,
            "manifest_sha256": self.sha256,
            "signed_by": list(self.signed_by),
            "features": {f.name: f.to_dict() for f in self.features},
            "files": [f.to_dict() for f in self.files],
            "size": self.size,
            "zsize": self.zsize,
            "forms": {f.form: f.to_dict() for f in self.forms},
            "runtime": self.runtime,
            "image": self.image,
            "notes": self.notes,
        }

    def to_text(self) -> str:
        lines = [f"{self.model} release {self.version} (counter {self.counter}, runtime API {self.api})"]
        when = _when(self.created)
        lines.append(f"  manifest sha256 {self.sha256}" + (f", built {when}" if when else ""))
        if self.signed_by:
            ids = ", ".join(k[:16] for k in self.signed_by)
            lines.append(f"  {_n(len(self.signed_by), 'signature')} by key {ids} (check them: ota verify)")
        else:
            lines.append("  UNSIGNED: sign it with `permabeta ota sign` before devices can accept it")
        lines.append(f"  needs hardware: {', '.join(self.requires) or 'none'}")
        if self.runtime is not None:
            lines.append(f"  carries runtime {self.runtime} (pb/): the devices run it with these features")
        if self.image is not None:
            img = self.image
            lines.append(
                f"  carries MicroPython image {img['version']}: {img['size']} bytes "
                f"({img['zsize']} compressed), "
                f"sha256 {img['sha256'][:16]}: the boards boot it on trial with these features"
            )
        if self.notes is not None:
            lines += ["", "release notes (signed with it):"]
            lines += [f"  {line}" for line in self.notes.splitlines()]
        lines.append("")
        lines.append(f"features ({len(self.features)}):")
        for f in self.features:
            lines.append(f"  {f.name} {f.version}")
            for kind in PERMISSION_KINDS:
                items = ", ".join(f.permission(kind)) or "nothing"
                lines.append(f"    {kind:<10} {items:<30} ({_MEANS[kind]})")
        lines.append("")
        lines.append("forms of the modules (each device installs its own):")
        lines += [f"  {f.to_text()}" for f in self.forms]
        lines.append("")
        lines.append(f"files ({len(self.files)}, {self.size} bytes, {self.zsize} compressed):")
        for e in self.files:
            lines.append(f"  {e.size:>8} {e.zsize:>8}  {e.path}")
        return "\n".join(lines)


def describe(release: Release) -> Description:
    feats = []
    for name, f in sorted(release.features.items()):
        perms = f.get("permissions", {}) if isinstance(f, dict) else {}
        feats.append(
            FeatureInfo(
                name,
                str(f.get("version", "?")) if isinstance(f, dict) else "?",
                *(tuple(str(x) for x in perms.get(kind, [])) for kind in PERMISSION_KINDS),
            )
        )
    created = release.body.get("created")
    return Description(
        path=str(release.path),
        model=release.model,
        counter=release.counter,
        version=release.version,
        api=release.api,
        requires=tuple(str(c) for c in release.body["requires"]),
        created=created if isinstance(created, int) and not isinstance(created, bool) else None,
        sha256=release.sha256,
        signed_by=tuple(s["keyid"] for s in release.signatures),
        features=tuple(feats),
        files=release.files,
        forms=form_infos(release),
        runtime=release.body["runtime"] if isinstance(release.body.get("runtime"), str) else None,
        image=release.image.to_dict() if release.image is not None else None,
        notes=release.notes,
    )


# ---- comparing ---------------------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # added, removed, changed, unchanged
    old: FileEntry | None
    new: FileEntry | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "change": self.change,
            "old_size": self.old.size if self.old else None,
            "new_size": self.new.size if self.new else None,
            "zsize": self.new.zsize if self.new else None,
        }


@dataclass(frozen=True)
class FeatureChange:
    name: str
    change: str  # new, removed, upgraded, downgraded, changed (same version, other files), unchanged
    old_version: str | None
    new_version: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "change": self.change, "old": self.old_version, "new": self.new_version}


@dataclass(frozen=True)
class PermissionChange:
    """A permission a feature gains (the owner grants it by installing) or loses."""

    feature: str
    version: str
    kind: str  # reads, drives, publishes
    items: tuple[str, ...]
    gained: bool
    new_feature: bool

    def to_text(self) -> str:
        items = ", ".join(self.items)
        if self.new_feature:
            return f"{self.feature} {self.version} (new) {self.kind}: {items}"
        if self.gained:
            return f"{self.feature} {self.version} now also {self.kind}: {items}"
        return f"{self.feature} {self.version} no longer {self.kind}: {items}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "version": self.version,
            "kind": self.kind,
            "items": list(self.items),
            "gained": self.gained,
            "new_feature": self.new_feature,
            "text": self.to_text(),
        }


@dataclass(frozen=True)
class Comparison:
    """What installing `new` on a device that runs `old` changes."""

    old: Description
    new: Description
    features: tuple[FeatureChange, ...]
    permissions: tuple[PermissionChange, ...]
    files: tuple[FileChange, ...]
    download_files: int  # blobs the devices on `old` fetch, of every form
    download_bytes: int  # their compressed bytes
    warnings: tuple[str, ...] = field(default=())
    downloads: tuple[tuple[str, int, int], ...] = ()  # per form served: (form, blobs, bytes) a device fetches

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.new.to_dict(),
            "against": self.old.to_dict(),
            "features": [f.to_dict() for f in self.features],
            "permissions": [p.to_dict() for p in self.permissions],
            "files": [f.to_dict() for f in self.files if f.change != "unchanged"],
            "unchanged_files": sum(1 for f in self.files if f.change == "unchanged"),
            "download": {
                "files": self.download_files,
                "bytes": self.download_bytes,
                "by_form": {form: {"files": n, "bytes": b} for form, n, b in self.downloads},
            },
            "warnings": list(self.warnings),
        }

    def to_text(self) -> str:
        o, n = self.old, self.new
        lines = [
            f"{n.model} release {n.version} (counter {n.counter}) "
            f"against {o.version} (counter {o.counter}, {o.path})"
        ]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines.append("")
        lines.append("features:")
        marks = {"new": "+", "removed": "-", "unchanged": "=", "changed": "~"}
        for f in self.features:
            if f.change in ("new", "removed", "unchanged"):
                text = f"{f.name} {f.new_version or f.old_version} ({f.change})"
            elif f.change == "changed":
                text = f"{f.name} {f.new_version} (files changed, same version)"
            else:
                text = f"{f.name} {f.old_version} -> {f.new_version} ({f.change})"
            lines.append(f"  {marks.get(f.change, '^')} {text}")
        lines.append("")
        lines.append("permission changes (! = the owner grants something new):")
        for p in self.permissions:
            lines.append(f"  {'!' if p.gained else ' '} {p.to_text()}")
        if not self.permissions:
            lines.append("  none")
        lines.append("")
        lines.append("files:")
        width = max((len(f.path) for f in self.files), default=0)
        same = [f for f in self.files if f.change == "unchanged"]
        for fc in self.files:
            if fc.change == "added" and fc.new:
                lines.append(f"  + {fc.path:<{width}}  {fc.new.size} bytes")
            elif fc.change == "removed" and fc.old:
                lines.append(f"  - {fc.path:<{width}}  {fc.old.size} bytes")
            elif fc.change == "changed" and fc.old and fc.new:
                lines.append(f"  ~ {fc.path:<{width}}  {fc.old.size} -> {fc.new.size} bytes")
        if same:
            lines.append(
                f"  = {_n(len(same), 'file')} unchanged ({sum(f.old.size for f in same if f.old)} bytes)"
            )
        lines.append("")
        for form, files, size in self.downloads:
            lines.append(
                f"a device on {o.version} that runs {form} downloads {_n(files, 'file')}, "
                f"{size} bytes compressed (the whole release: {n.zsize})"
            )
        lines += [f"  {f.form}: REFUSED by {f.runs}: {f.refused}" for f in n.forms if f.refused]
        return "\n".join(lines)


def _semver_key(v: str | None) -> tuple[int, int, int, int, str] | None:
    if not v:
        return None
    core, _, pre = v.partition("-")
    parts = core.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return (int(parts[0]), int(parts[1]), int(parts[2]), 0 if pre else 1, pre)


def _feature_change(name: str, old: Description, new: Description) -> FeatureChange:
    a, b = old.feature(name), new.feature(name)
    if a is None:
        return FeatureChange(name, "new", None, b.version if b else None)
    if b is None:
        return FeatureChange(name, "removed", a.version, None)
    ka, kb = _semver_key(a.version), _semver_key(b.version)
    if a.version != b.version:
        change = "downgraded" if ka is not None and kb is not None and kb < ka else "upgraded"
    else:
        files_a = {(e.path, e.sha256) for e in old.files if e.feature == name}
        files_b = {(e.path, e.sha256) for e in new.files if e.feature == name}
        change = "unchanged" if files_a == files_b else "changed"
    return FeatureChange(name, change, a.version, b.version)


def _permission_changes(old: Description, new: Description) -> list[PermissionChange]:
    out = []
    for b in new.features:
        a = old.feature(b.name)
        for kind in PERMISSION_KINDS:
            now = b.permission(kind)
            before = a.permission(kind) if a else ()
            gained = tuple(x for x in now if x not in before)
            lost = tuple(x for x in before if x not in now)
            if gained:
                out.append(PermissionChange(b.name, b.version, kind, gained, True, a is None))
            if lost:
                out.append(PermissionChange(b.name, b.version, kind, lost, False, False))
    return out


def _unique_blobs(files: tuple[FileEntry, ...]) -> list[FileEntry]:
    seen: dict[str, FileEntry] = {}
    for e in files:
        seen.setdefault(e.sha256, e)
    return list(seen.values())


def compare(old: Release, new: Release) -> Comparison:
    """What changes from old to new, file by file and feature by feature, and
    what a device running old downloads: the blobs of contents it lacks."""
    o, n = describe(old), describe(new)
    warnings = []
    if o.model != n.model:
        warnings.append(f"the releases are for different models ({o.model}, {n.model})")
    if n.counter <= o.counter:
        warnings.append(
            f"counter {n.counter} is not above {o.counter}: a device on the older release refuses it"
        )
    if o.api != n.api:
        warnings.append(f"the runtime API changes from {o.api} to {n.api}")
    added_hw = [c for c in n.requires if c not in o.requires]
    if added_hw:
        warnings.append(f"it needs hardware the older release did not: {', '.join(added_hw)}")

    old_files = {e.path: e for e in o.files}
    new_files = {e.path: e for e in n.files}
    changes = []
    for path in sorted(old_files.keys() | new_files.keys()):
        a, b = old_files.get(path), new_files.get(path)
        kind = "added" if a is None else "removed" if b is None else "unchanged"
        if a is not None and b is not None and a.sha256 != b.sha256:
            kind = "changed"
        changes.append(FileChange(path, kind, a, b))
    held = {e.sha256 for e in o.files}
    fetch = [e for e in _unique_blobs(n.files) if e.sha256 not in held]
    downloads = []
    for info in n.forms:
        if info.refused is None:
            before = o.form(info.form)
            mine = {e.sha256 for e in (before.files if before and before.refused is None else o.files)}
            got = [e for e in _unique_blobs(info.files) if e.sha256 not in mine]
            downloads.append((info.form, len(got), sum(e.zsize for e in got)))
    for info in n.forms:
        before = o.form(info.form)
        if info.refused and before is not None and before.refused is None:
            warnings.append(
                f"devices that run {info.form} ({info.runs}) took the older release and refuse this one"
            )
    names = sorted({f.name for f in o.features} | {f.name for f in n.features})
    return Comparison(
        old=o,
        new=n,
        features=tuple(_feature_change(name, o, n) for name in names),
        permissions=tuple(_permission_changes(o, n)),
        files=tuple(changes),
        download_files=len(fetch),
        download_bytes=sum(e.zsize for e in fetch),
        warnings=tuple(warnings),
        downloads=tuple(downloads),
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _when(t: int | None) -> str:
    if t is None:
        return ""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
