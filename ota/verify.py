"""Verify a release as a device would: the same rules (firmware.pb.ota.trust),
a fast Ed25519 check from `cryptography` unless another is injected."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware.pb import features as pb_features
from firmware.pb.errors import TrustError
from firmware.pb.ota import trust

from .envelope import VerifyFn, verify_signature
from .errors import ReleaseError, VerifyError
from .keys import ROOT_FILE, Keys
from .release import MANIFEST, Release, check_blobs, read


@dataclass(frozen=True)
class Device:
    """What a device knows of itself when it judges a release."""

    model: str
    caps: frozenset[str]
    api: int
    counter: int  # the release counter it runs (0: factory set)

    @classmethod
    def for_board(cls, board: dict[str, Any], counter: int = 0, api: int | None = None) -> Device:
        """A device with a board file's model and capabilities, running this
        firmware's runtime API unless told otherwise."""
        runtime_api = int(pb_features.API) if api is None else api
        return cls(str(board["model"]), frozenset(board["capabilities"]), runtime_api, counter)


def _root_bytes(root: bytes | Path | str | Keys) -> bytes:
    if isinstance(root, Keys):
        return root.root_bytes
    if isinstance(root, bytes):
        return root
    path = Path(root)
    if path.is_dir():
        path = path / ROOT_FILE
    try:
        return path.read_bytes()
    except OSError as exc:
        raise VerifyError("bad_root", f"cannot read the root {path}: {exc.strerror}") from exc


def trusted_root(root: bytes | Path | str | Keys, verify: VerifyFn = verify_signature) -> dict[str, Any]:
    """A root (bytes, a root.json file, a keys folder or Keys) trusted on its
    own signatures. Raises VerifyError."""
    try:
        return dict(trust.load_root(_root_bytes(root), verify))
    except TrustError as exc:
        raise VerifyError(exc.code, f"root: {exc.message}") from exc


def verify_release(
    path: Path | str,
    root: bytes | Path | str | Keys,
    device: Device | None = None,
    *,
    verify: VerifyFn = verify_signature,
) -> Release:
    """The release at path if a device trusting `root` would accept it: its
    envelope, a threshold of release-key signatures, the manifest's
    consistency, then (if given) its suitability for `device`, and every
    blob, compressed and inflated. Raises VerifyError with the trust code
    (blob content: mismatch; an absent blob: missing_blob)."""
    trusted = trusted_root(root, verify)
    folder = Path(path)
    try:
        data = (folder / MANIFEST).read_bytes()
    except OSError as exc:
        raise VerifyError("bad_envelope", f"{folder} has no readable {MANIFEST}: {exc.strerror}") from exc
    try:
        raw, body, sigs = trust.open_envelope(data)
        trust.check_role(trusted, "release", raw, sigs, verify)
        trust.check_manifest(body)
        if device is not None:
            trust.check_for_device(body, device.model, device.api, device.counter)
    except TrustError as exc:
        hint = " (it has no signatures: sign it with `permabeta ota sign`)" if _unsigned(data) else ""
        raise VerifyError(exc.code, exc.message + hint) from exc
    try:
        release = read(folder)
        if release.manifest != data:
            raise VerifyError("mismatch", f"{folder / MANIFEST} changed while it was verified")
        check_blobs(release)
    except ReleaseError as exc:
        raise VerifyError(exc.code, exc.message) from exc
    return release


def _unsigned(data: bytes) -> bool:
    try:
        env = json.loads(data)
    except ValueError:
        return False
    return isinstance(env, dict) and env.get("signatures") == []


def signers(release: Release, root: dict[str, Any], verify: VerifyFn = verify_signature) -> list[str]:
    """The key ids of the release role that made a valid signature (for display)."""
    keyids = root["roles"]["release"]["keyids"]
    raw = release.signed
    return [
        s["keyid"]
        for s in release.signatures
        if s["keyid"] in keyids
        and verify(bytes.fromhex(root["keys"][s["keyid"]]), raw, bytes.fromhex(s["sig"]))
    ]
