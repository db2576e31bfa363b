"""`permabeta ota ...`: make keys, build, sign, verify and inspect releases.

Registered into the `permabeta` parser by gateway/cli.py (add_commands);
every command returns an exit code and raises OtaError for main to print.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cmd_keygen(args: argparse.Namespace) -> int:
    from .envelope import key_id
    from .keys import GATEWAY_KEY, RELEASE_KEY, ROOT_FILE, keygen

    keys = keygen(Path(args.out), root_keys=args.root_keys, threshold=args.threshold)
    print(f"made keys in {keys.path} (root version {keys.version}):")
    rows = [(f"root-{i}.key", "root key", key_id(k)) for i, k in enumerate(keys.root_keys, 1)]
    rows.append((RELEASE_KEY, "release key", key_id(keys.release_key())))
    rows.append((GATEWAY_KEY, "gateway key", key_id(keys.gateway_key())))
    for name, role, kid in rows:
        print(f"  {name:<12} {role:<12} {kid}")
    print(f"  {ROOT_FILE:<12} the root devices trust (root threshold {args.threshold})")
    print("keep the root and release keys offline; the gateway needs gateway.key and root.json only")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from .keys import rotate_root

    keys = rotate_root(
        Path(args.keys),
        new_root_keys=args.root_keys,
        threshold=args.threshold,
        new_release_key=args.new_release_key,
        new_gateway_key=args.new_gateway_key,
    )
    print(
        f"root version {keys.version} in {keys.path / 'root.json'}, signed by the old and the new root keys"
    )
    print(f"replaced keys are in {keys.path / 'retired' / f'v{keys.version - 1}'}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .errors import BuildError, ReleaseError
    from .inspect import forms_line
    from .keys import load_keys
    from .release import FORMS, MAX_NOTES, build, notes_text

    keys = load_keys(Path(args.keys)) if args.keys else None
    notes = None
    if args.notes:
        try:
            with Path(args.notes).open("rb") as f:
                notes = notes_text(f.read(MAX_NOTES + 1), args.notes)
        except OSError as exc:
            raise BuildError(f"cannot read the notes {args.notes}: {exc.strerror}") from exc
        except ReleaseError as exc:
            raise BuildError(exc.message) from exc
    form = "mpy" if args.compile else args.form
    rel = build(
        args.model,
        [Path(d) for d in args.features],
        args.version,
        Path(args.out),
        counter=args.counter,
        forms=FORMS if form == "both" else (form,),
        keys=keys,
        runtime=Path(args.runtime) if args.runtime else None,
        image=Path(args.image) if args.image else None,
        image_version=args.image_version,
        notes=notes,
    )
    size = sum(f.size for f in rel.files)
    blobs = {f.sha256: f.zsize for f in rel.files}
    print(
        f"built {rel.path}: {rel.model} release {rel.version}, counter {rel.counter}, "
        f"{len(rel.features)} feature(s), {len(rel.files)} files, {size} bytes "
        f"({sum(blobs.values())} compressed)"
    )
    print(forms_line(rel))
    if keys is None:
        print(f"unsigned: sign it with `permabeta ota sign {rel.path} --keys DIR`")
    else:
        print(f"signed by the release key; manifest sha256 {rel.sha256}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from .envelope import key_id
    from .keys import load_keys
    from .release import sign

    keys = load_keys(Path(args.keys))
    rel = sign(Path(args.release), keys)
    print(f"signed {rel.path} with release key {key_id(keys.release_key())[:16]}")
    print(f"manifest sha256 {rel.sha256}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .errors import KeyStoreError
    from .inspect import forms_line
    from .verify import signers, trusted_root, verify_release

    if not args.root and not args.keys:
        raise KeyStoreError("ota verify needs --keys DIR (its root.json) or --root FILE")
    root_src = Path(args.root) if args.root else Path(args.keys)
    root = trusted_root(root_src)
    rel = verify_release(Path(args.release), root_src)
    by = ", ".join(k[:16] for k in signers(rel, root))
    print(
        f"OK {rel.path}: {rel.model} release {rel.version}, counter {rel.counter}, "
        f"{len(rel.files)} files verified; signed by release key {by} under root version {root['version']}"
    )
    print(forms_line(rel))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import compare, describe
    from .release import read

    rel = read(Path(args.release))
    result: Any = compare(read(Path(args.against)), rel) if args.against else describe(rel)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.to_text())
    return 0


def add_commands(subparsers: Any) -> Any:
    """Add `ota` and its actions to the `permabeta` subparsers; returns the
    `ota` subparsers, so the gateway can add its own (publish, releases)."""
    ota = subparsers.add_parser("ota", help="keys and signed releases of features").add_subparsers(
        dest="otacmd", required=True, metavar="ACTION"
    )

    kg = ota.add_parser(
        "keygen",
        help="make root, release and gateway keys and root.json",
        description="Writes root-N.key, release.key, gateway.key (Ed25519, PEM, mode 0600), "
        "root.json and root.1.json into a new or empty folder (mode 0700). Never overwrites.",
    )
    kg.add_argument("--out", required=True, metavar="DIR", help="new or empty folder for the keys")
    kg.add_argument("--root-keys", type=int, default=1, metavar="N", help="number of root keys (1-8)")
    kg.add_argument("--threshold", type=int, default=1, metavar="T", help="root signatures required")
    kg.set_defaults(func=cmd_keygen)

    rt = ota.add_parser(
        "rotate-root",
        help="replace the root keys: root N+1 signed by the old and the new root keys",
    )
    rt.add_argument("--keys", required=True, metavar="DIR")
    rt.add_argument("--root-keys", type=int, default=1, metavar="N", help="number of new root keys (1-8)")
    rt.add_argument("--threshold", type=int, default=1, metavar="T", help="root signatures required")
    rt.add_argument("--new-release-key", action="store_true", help="replace the release key too")
    rt.add_argument("--new-gateway-key", action="store_true", help="replace the gateway key too")
    rt.set_defaults(func=cmd_rotate)

    bd = ota.add_parser("build", help="build a release of features for one model")
    bd.add_argument("--model", required=True, help="product model (thermostat, shirt)")
    bd.add_argument("--features", required=True, nargs="+", metavar="DIR", help="feature folders")
    bd.add_argument("--version", required=True, help="the release's version, e.g. 2026.11.2")
    bd.add_argument("--out", required=True, metavar="R", help="new folder for the release")
    bd.add_argument(
        "--counter", type=int, metavar="N", help="release counter (default: the Unix time, so it grows)"
    )
    bd.add_argument(
        "--form",
        choices=("both", "py", "mpy"),
        default="both",
        help="which form of the modules ships: both (default: one release for every device of the model, "
        "each installs its own), py (source: CPython devices only) or mpy (compiled with mpy-cross: "
        "MicroPython devices only)",
    )
    bd.add_argument("--compile", action="store_true", help="the same as --form mpy")
    bd.add_argument(
        "--runtime",
        metavar="DIR",
        help="a runtime (pb/ folder) the release carries: the devices run it with the features",
    )
    bd.add_argument(
        "--image",
        metavar="FILE",
        help="a MicroPython image (the ESP32 application binary, built with an OTA partition table) the "
        "release carries: the boards write it to their other app partition and boot it on trial",
    )
    bd.add_argument("--image-version", metavar="V", help="the MicroPython version of --image (e.g. 1.24.1)")
    bd.add_argument(
        "--notes",
        metavar="FILE",
        help="the release notes owners read before they consent (UTF-8 text, at most 8 KiB), signed with it",
    )
    bd.add_argument("--keys", metavar="DIR", help="sign with this folder's release key")
    bd.set_defaults(func=cmd_build)

    sg = ota.add_parser("sign", help="add the release key's signature to a release")
    sg.add_argument("release", metavar="R")
    sg.add_argument("--keys", required=True, metavar="DIR")
    sg.set_defaults(func=cmd_sign)

    vf = ota.add_parser("verify", help="check a release as a device would (signatures, manifest, blobs)")
    vf.add_argument("release", metavar="R")
    vf.add_argument("--keys", metavar="DIR", help="trust this folder's root.json")
    vf.add_argument("--root", metavar="FILE", help="trust this root.json instead (e.g. the devices' one)")
    vf.set_defaults(func=cmd_verify)

    ins = ota.add_parser("inspect", help="describe a release, or what it changes against an older one")
    ins.add_argument("release", metavar="R")
    ins.add_argument("--against", metavar="R0", help="the release devices run now")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=cmd_inspect)
    return ota
