"""The feature code a twin runs: a stored release's feature files, verified
as a device verifies the release before it installs it (ota.verify:
the envelope, the release role's signatures against the gateway's root,
the manifest's rules, its suitability for the device, every blob's size
and hash, compressed and inflated), in the form CPython runs (.py); or the
factory features the gateway's own firmware ships, for a device that runs
its factory set. Never the gateway's copy of a feature for a release's.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

from firmware.pb.ota import trust
from ota.errors import ReleaseError, VerifyError
from ota.release import BLOBS, MANIFEST, ZLIB_WBITS
from ota.verify import Device, verify_release

from ..errors import ReleaseRefusedError
from ..paths import firmware_dir
from ..releases import ReleaseStore, StoredRelease

FORM = "py"  # the twin runs on CPython


class CodeError(ReleaseRefusedError):
    """The twin has no code it may run for a feature set: `code` says why."""


def release_features(
    releases: ReleaseStore, release: StoredRelease, model: str, caps: list[str], api: int
) -> dict[str, bytes]:
    """features/<name>/<file> -> content of every feature file of a stored
    release, as a device of `model` with `caps` and runtime `api` would
    install it. Raises CodeError (code: the trust code, or wrong_form)."""
    if releases.root is None:
        raise CodeError("this gateway has no root to verify releases with", "ota_disabled")
    with tempfile.TemporaryDirectory(prefix="pb-twin-release-") as tmp:
        folder = Path(tmp) / "release"
        (folder / BLOBS).mkdir(parents=True)
        (folder / MANIFEST).write_bytes(release.manifest)
        shas = [(e.sha256, e.zsha256) for e in release.entries]
        image = release.body.get("image")
        if image is not None:
            shas.append((image["sha256"], image["zsha256"]))
        notes = release.notes_entry  # (signed with the release: a device checks them too)
        if notes is not None:
            shas.append((notes.sha256, notes.zsha256))
        for sha, zsha in shas:
            link = folder / BLOBS / f"{sha}.z"
            if not link.exists():
                os.symlink(releases.blob_path(zsha), link)
        device = Device(model, frozenset(caps), api, 0)
        try:
            verified = verify_release(folder, releases.root, device)
        except VerifyError as exc:
            raise CodeError(
                f"{release.ref} does not verify as a device would: {exc.code}: {exc.message}", exc.code
            ) from exc
        try:
            files = verified.files_for(FORM)
        except ReleaseError as exc:
            raise CodeError(
                f"{release.ref}: {exc.message} (the twin runs the .py form)", "wrong_form"
            ) from exc
        out: dict[str, bytes] = {}
        for entry in files:
            if entry.path.startswith(trust.RUNTIME + "/"):
                continue  # the twin runs the gateway's runtime (docs/twin.md 6)
            blob = verified.blob_path(entry).read_bytes()  # (checked a moment ago)
            out[f"features/{entry.path}"] = zlib.decompressobj(ZLIB_WBITS).decompress(blob)
    return out


def factory_features(features: dict[str, Any]) -> dict[str, bytes]:
    """The gateway's copies of the factory features a device reports
    (hello features), each at the version it reports. Raises CodeError
    for one the gateway has no code of."""
    root = firmware_dir() / "features"
    out: dict[str, bytes] = {}
    for name, info in sorted(features.items()):
        folder = root / name
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            raise CodeError(
                f"the device runs feature {name}, of which the gateway has no code", "unknown_code"
            ) from None
        version = info.get("version") if isinstance(info, dict) else None
        if version is not None and manifest.get("version") != version:
            raise CodeError(
                f"the device runs {name} {version}; the gateway's factory code is {manifest.get('version')}",
                "unknown_code",
            )
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
            for f in filenames:
                if f.startswith(".") or f.endswith(".pyc"):
                    continue
                path = Path(dirpath) / f
                out[f"features/{name}/{path.relative_to(folder).as_posix()}"] = path.read_bytes()
    return out
