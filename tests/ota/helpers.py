"""Helpers for the ota tests: feature folders and hand-made manifests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.paths import firmware_dir
from ota.envelope import sign_envelope

try:  # the device's own pure-Python check, when it exists
    from firmware.pb.ota.ed25519 import verify as device_verify
except ImportError:  # pragma: no cover - until pb/ota/ed25519.py lands
    from ota.envelope import verify_signature as device_verify

__all__ = ["THERMOSTAT_BOARD", "device_verify", "edit_manifest", "resign", "write_feature"]

THERMOSTAT_BOARD: dict[str, Any] = json.loads((firmware_dir() / "boards" / "thermostat-v1.json").read_text())


def write_feature(
    folder: Path, manifest: dict[str, Any], code: str = "def start(ctx):\n    return None\n"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (folder / "__init__.py").write_text(code)
    return folder


def edit_manifest(folder: Path, **changes: Any) -> None:
    """Change fields of a feature's manifest.json in place."""
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m, indent=1) + "\n")


def signed_body(release: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.loads((release / "manifest.json").read_bytes())["signed"])
    return body


def resign(
    release: Path, keys: list[Ed25519PrivateKey], change: Callable[[dict[str, Any]], None] | None = None
) -> None:
    """Rewrite a release's manifest: its body changed by `change`, signed by keys
    (a validly signed manifest, as an attacker holding those keys would make)."""
    body = signed_body(release)
    if change is not None:
        change(body)
    (release / "manifest.json").write_bytes(sign_envelope(body, keys))
