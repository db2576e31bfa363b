"""The maker's key store: make keys, load them, rotate the root, and sign
freshness and time statements for the gateway.

A keys folder (mode 0700; private keys mode 0600, PEM PKCS#8, unencrypted):

    root.json        the newest root (docs/ota.md 1.1), what devices are provisioned with
    root.<N>.json    every root version N, so a device on an older root can walk the chain
    root-1.key ...   the current root keys (role root), kept offline
    release.key      the release key: signs manifests (role release), kept offline
    gateway.key      the gateway key: signs freshness and time statements (role gateway); the gateway
                     needs a copy of this one only
    retired/v<N>/    the keys that rotating root N away replaced

Any private key may be absent (kept on another machine); an operation that
needs it says so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.pb.errors import TrustError
from firmware.pb.ids import valid_id
from firmware.pb.ota import trust

from .envelope import (
    MAX_SIGNATURES,
    VerifyFn,
    add_signatures,
    key_id,
    public_bytes,
    sign_envelope,
    verify_signature,
)
from .errors import EnvelopeError, KeyStoreError

__all__ = [
    "GATEWAY_KEY",
    "RELEASE_KEY",
    "ROOT_FILE",
    "Keys",
    "add_signatures",
    "freshness",
    "key_id",
    "keygen",
    "load_keys",
    "rotate_root",
    "sign_envelope",
    "time_statement",
]

ROOT_FILE = "root.json"
RELEASE_KEY = "release.key"
GATEWAY_KEY = "gateway.key"
RETIRED = "retired"
_ROOT_KEY = re.compile(r"root-([1-9][0-9]*)\.key")


def _root_key_file(i: int) -> str:
    return f"root-{i}.key"


def _versioned_root(version: int) -> str:
    return f"root.{version}.json"


@dataclass(frozen=True)
class Keys:
    """The keys of one folder and the root they belong to (already checked:
    root.json is trusted on its own signatures and every private key present
    is a key of its role)."""

    path: Path
    root: dict[str, Any]  # the parsed `signed` of root.json
    root_bytes: bytes  # root.json exactly as stored
    root_keys: tuple[Ed25519PrivateKey, ...]
    release: Ed25519PrivateKey | None
    gateway: Ed25519PrivateKey | None
    # root.<N>.json by N, each trusted by the one before it: the roots a device
    # on an older version takes, in order, to reach this one
    chain: dict[int, bytes] = field(default_factory=dict)
    # gateway keys of earlier roots (retired/v<N>/gateway.key), newest first:
    # freshness statements carry their signatures too, for devices that
    # cannot take a root over the air
    retired_gateways: tuple[Ed25519PrivateKey, ...] = ()

    @property
    def version(self) -> int:
        return int(self.root["version"])

    def release_key(self) -> Ed25519PrivateKey:
        if self.release is None:
            raise KeyStoreError(f"{self.path} has no {RELEASE_KEY} (the release key signs manifests)")
        return self.release

    def gateway_key(self) -> Ed25519PrivateKey:
        if self.gateway is None:
            raise KeyStoreError(f"{self.path} has no {GATEWAY_KEY} (the gateway key signs freshness)")
        return self.gateway

    def gateway_keys(self) -> list[Ed25519PrivateKey]:
        """The keys that sign a freshness statement: this root's gateway key,
        then retired ones, at most MAX_SIGNATURES."""
        return [self.gateway_key(), *self.retired_gateways][:MAX_SIGNATURES]


# ---- files -------------------------------------------------------------------


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create path with mode (never replacing a file), whatever the umask."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise KeyStoreError(f"{path} exists already; keys are never overwritten") from exc
    except OSError as exc:
        raise KeyStoreError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Replace path's content atomically (write beside it, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _write_new(tmp, data, mode)
    os.replace(tmp, path)


def _load_private(path: Path) -> Ed25519PrivateKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyStoreError(f"{path} is readable by others (mode {mode:04o}); chmod 600 it first")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyStoreError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"{path} is not an Ed25519 key")
    return key


def _make_dir(path: Path) -> None:
    if path.exists():
        if not path.is_dir():
            raise KeyStoreError(f"{path} is not a folder")
        if any(path.iterdir()):
            raise KeyStoreError(f"{path} is not empty; keygen writes keys into a new or empty folder")
    else:
        try:
            path.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise KeyStoreError(f"cannot create {path}: {exc.strerror}") from exc
    path.chmod(0o700)


# ---- roots -------------------------------------------------------------------


def _role(keyids: Sequence[str], threshold: int) -> dict[str, Any]:
    return {"keyids": list(keyids), "threshold": threshold}


def _root_body(
    version: int,
    pubs: dict[str, str],
    root_ids: Sequence[str],
    threshold: int,
    release: dict[str, Any],
    gateway: dict[str, Any],
) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "root",
        "version": version,
        "keys": pubs,
        "roles": {"root": _role(root_ids, threshold), "release": release, "gateway": gateway},
    }


def _check_counts(root_keys: int, threshold: int) -> None:
    if not 1 <= root_keys <= MAX_SIGNATURES:
        raise KeyStoreError(f"the number of root keys must be 1..{MAX_SIGNATURES}, not {root_keys}")
    if not 1 <= threshold <= root_keys:
        raise KeyStoreError(f"the root threshold must be 1..{root_keys} (the number of root keys)")


def _pub(key: Ed25519PrivateKey) -> tuple[str, str]:
    return key_id(key), public_bytes(key).hex()


def keygen(out_dir: Path | str, root_keys: int = 1, threshold: int = 1) -> Keys:
    """Make root, release and gateway keys and root.json version 1 in a new
    or empty folder. Raises KeyStoreError (never overwrites a key)."""
    out = Path(out_dir)
    _check_counts(root_keys, threshold)
    roots = [Ed25519PrivateKey.generate() for _ in range(root_keys)]
    release, gateway = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pubs = dict(_pub(k) for k in [*roots, release, gateway])
    body = _root_body(
        1,
        pubs,
        [key_id(k) for k in roots],
        threshold,
        _role([key_id(release)], 1),
        _role([key_id(gateway)], 1),
    )
    data = sign_envelope(body, roots)
    trust.load_root(data, verify_signature)  # what a device will do with it
    _make_dir(out)
    for i, key in enumerate(roots, 1):
        _write_new(out / _root_key_file(i), _pem(key), 0o600)
    _write_new(out / RELEASE_KEY, _pem(release), 0o600)
    _write_new(out / GATEWAY_KEY, _pem(gateway), 0o600)
    _write_new(out / _versioned_root(1), data, 0o644)
    _write_new(out / ROOT_FILE, data, 0o644)
    return load_keys(out)


def _root_key_files(folder: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _ROOT_KEY.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def load_keys(keys_dir: Path | str, verify: VerifyFn = verify_signature) -> Keys:
    """The keys in a folder, checked against its root.json. Raises KeyStoreError."""
    folder = Path(keys_dir)
    root_file = folder / ROOT_FILE
    if not root_file.is_file():
        raise KeyStoreError(f"{folder} holds no {ROOT_FILE} (make keys with: permabeta ota keygen)")
    data = root_file.read_bytes()
    try:
        root = trust.load_root(data, verify)
    except TrustError as exc:
        raise KeyStoreError(f"{root_file} is not a trusted root: {exc.message} ({exc.code})") from exc
    roles = root["roles"]

    def check(path: Path, role: str) -> Ed25519PrivateKey:
        key = _load_private(path)
        if key_id(key) not in roles[role]["keyids"]:
            raise KeyStoreError(f"{path} is not a {role} key of {ROOT_FILE} version {root['version']}")
        return key

    def optional(name: str, role: str) -> Ed25519PrivateKey | None:
        path = folder / name
        return check(path, role) if path.exists() else None

    return Keys(
        path=folder,
        root=root,
        root_bytes=data,
        root_keys=tuple(check(p, "root") for p in _root_key_files(folder)),
        release=optional(RELEASE_KEY, "release"),
        gateway=optional(GATEWAY_KEY, "gateway"),
        chain=_chain(folder, root, data, verify),
        retired_gateways=_retired_gateways(folder),
    )


def _chain(folder: Path, root: dict[str, Any], data: bytes, verify: VerifyFn) -> dict[int, bytes]:
    """root.<N>.json files from the current version down, as long as each
    is the one the next rotated from (a gap or a broken link ends it)."""
    version = int(root["version"])
    chain = {version: data}
    newer = data
    for v in range(version - 1, 0, -1):
        path = folder / _versioned_root(v)
        if not path.is_file():
            break
        older = path.read_bytes()
        try:
            trust.rotate_root(trust.load_root(older, verify), newer, verify)
        except TrustError:
            break
        chain[v] = newer = older
    return chain


def _retired_gateways(folder: Path) -> tuple[Ed25519PrivateKey, ...]:
    """retired/v<N>/gateway.key, newest N first."""
    found = []
    for d in (folder / RETIRED).glob("v*"):
        path = d / GATEWAY_KEY
        if d.name[1:].isdigit() and path.is_file():
            found.append((int(d.name[1:]), _load_private(path)))
    return tuple(k for _, k in sorted(found, key=lambda x: -x[0]))


def rotate_root(
    keys_dir: Path | str,
    new_root_keys: int = 1,
    threshold: int = 1,
    *,
    new_release_key: bool = False,
    new_gateway_key: bool = False,
) -> Keys:
    """Replace the root keys (and optionally the release and gateway keys):
    root N+1, signed by a threshold of root N's keys and by all of its own,
    becomes root.json; the replaced keys move to retired/v<N>/. Raises
    KeyStoreError."""
    keys = load_keys(keys_dir)
    folder, old = keys.path, keys.root
    version = int(old["version"])
    _check_counts(new_root_keys, threshold)
    need = int(old["roles"]["root"]["threshold"])
    if len(keys.root_keys) < need:
        raise KeyStoreError(
            f"root version {version} needs {need} of its keys to sign its successor; "
            f"{folder} holds {len(keys.root_keys)}"
        )
    if need + new_root_keys > MAX_SIGNATURES:
        raise KeyStoreError(
            f"{need} old and {new_root_keys} new root signatures exceed the {MAX_SIGNATURES} a device reads"
        )
    retired = folder / RETIRED / f"v{version}"
    next_file = folder / _versioned_root(version + 1)
    for path in (retired, next_file):
        if path.exists():
            raise KeyStoreError(f"{path} exists already (an earlier rotation did not finish?)")

    roots = [Ed25519PrivateKey.generate() for _ in range(new_root_keys)]
    release = Ed25519PrivateKey.generate() if new_release_key else None
    gateway = Ed25519PrivateKey.generate() if new_gateway_key else None
    pubs = dict(_pub(k) for k in roots)
    roles: dict[str, dict[str, Any]] = {}
    for role, fresh in (("release", release), ("gateway", gateway)):
        if fresh is None:  # carried over, whether or not its private key is here
            roles[role] = dict(old["roles"][role])
            pubs.update({kid: old["keys"][kid] for kid in roles[role]["keyids"]})
        else:
            roles[role] = _role([key_id(fresh)], 1)
            pubs.update([_pub(fresh)])
    body = _root_body(
        version + 1, pubs, [key_id(k) for k in roots], threshold, roles["release"], roles["gateway"]
    )
    try:
        data = sign_envelope(body, [*keys.root_keys[:need], *roots])
        trust.rotate_root(old, data, verify_signature)  # what a device on root N will do
    except (EnvelopeError, TrustError) as exc:
        raise KeyStoreError(f"cannot make root version {version + 1}: {exc}") from exc
    if len(data) > trust.MAX_SENT_ROOT:
        raise KeyStoreError(
            f"root version {version + 1} takes {len(data)} bytes; a device takes at most "
            f"{trust.MAX_SENT_ROOT} over the air: use fewer root keys"
        )

    # Old keys leave first, so a crash half-way never leaves two key sets
    # that both look current; root.json changes last, in one rename.
    retired.mkdir(parents=True, mode=0o700)
    retired.chmod(0o700)
    moving = _root_key_files(folder)
    if new_release_key and (folder / RELEASE_KEY).exists():
        moving.append(folder / RELEASE_KEY)
    if new_gateway_key and (folder / GATEWAY_KEY).exists():
        moving.append(folder / GATEWAY_KEY)
    for path in moving:
        path.rename(retired / path.name)
    for i, key in enumerate(roots, 1):
        _write_new(folder / _root_key_file(i), _pem(key), 0o600)
    if release is not None:
        _write_new(folder / RELEASE_KEY, _pem(release), 0o600)
    if gateway is not None:
        _write_new(folder / GATEWAY_KEY, _pem(gateway), 0o600)
    _write_new(next_file, data, 0o644)
    _replace(folder / ROOT_FILE, data, 0o644)
    return load_keys(folder)


# ---- freshness ---------------------------------------------------------------


def freshness(
    key: Keys | Ed25519PrivateKey,
    model: str,
    counter: int,
    manifest_sha256: str,
    ttl_s: float,
    now: float,
    *,
    device: str,
    update: str,
) -> bytes:
    """A freshness statement (docs/ota.md 2.2) for one release offered to one
    device as one update, signed by the gateway key: version is `now` in ms,
    it expires ttl_s after now. Raises KeyStoreError."""
    signers = key.gateway_keys() if isinstance(key, Keys) else [key]
    if not trust.is_hex(manifest_sha256, 64):
        raise KeyStoreError("manifest_sha256 must be 64 lowercase hex characters")
    if not valid_id(device):
        raise KeyStoreError(f"device {device!r} is not a device id (1-32 of a-z 0-9 - _)")
    if not trust.is_update_id(update):
        raise KeyStoreError(f"update {update!r} is not an update id ({trust.UPDATE_ID_LEN} lowercase hex)")
    if ttl_s <= 0:
        raise KeyStoreError("a freshness statement needs a positive time to live")
    body = {
        "v": 1,
        "type": "freshness",
        "device": device,
        "update": update,
        "model": model,
        "version": int(now * 1000),
        "counter": counter,
        "manifest": manifest_sha256,
        "expires": int(now + ttl_s),
    }
    return sign_envelope(body, signers)


def time_statement(key: Keys | Ed25519PrivateKey, device: str, now: float) -> bytes:
    """A time statement (docs/ota.md 2.3) for one device, signed by the
    gateway key: `time` is `now` in ms, a floor for the device's clock.
    Raises KeyStoreError."""
    signers = key.gateway_keys() if isinstance(key, Keys) else [key]
    if not valid_id(device):
        raise KeyStoreError(f"device {device!r} is not a device id (1-32 of a-z 0-9 - _)")
    if now < 0:
        raise KeyStoreError("a time statement needs a time after 1970")
    return sign_envelope({"v": 1, "type": "time", "device": device, "time": int(now * 1000)}, signers)
