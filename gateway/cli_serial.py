"""The command line of boards on USB serial: `provision --port` (its copy
and its report), `provision --port --inspect`, and `flash`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .broker import BrokerUrl
from .errors import ConfigError
from .provision import Provisioned


def _kb(n: float) -> str:
    """n bytes in KB, MB or GB."""
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def _progress(done: int, total: int, path: str) -> None:
    if sys.stdout.isatty():
        print(f"\r  [{done}/{total}] {path[:60]:<60}", end="" if done < total else "\n", flush=True)


def provision(args: argparse.Namespace, broker: BrokerUrl, options: dict[str, Any]) -> Provisioned:
    """provision --port: copy the device to the board and say what moved."""
    from .provision_serial import provision_port

    print(f"provisioning {args.id} onto the board on {args.port} ...", flush=True)
    p, r = provision_port(
        args.port,
        args.model,
        args.id,
        broker,
        baud=args.baud,
        timeout=args.timeout,
        progress=_progress,
        **options,
    )
    moved = f"copied {r.written} files ({_kb(r.bytes)})" if r.written else "copied no file"
    print(
        f"  {moved}, {r.kept} already there, {r.removed} removed; "
        f"{r.verified} verified by SHA-256 on the board; {r.seconds:.1f} s"
    )
    return p


def _versions(features: dict[str, Any]) -> str:
    return ", ".join(f"{n} {v}" for n, v in sorted(features.items())) or "none"


def inspect(args: argparse.Namespace) -> int:
    """provision --port PORT --inspect: what is on a board, changing nothing."""
    from .provision_serial import inspect_port

    if not args.port:
        raise ConfigError("--inspect reads a board: give its --port")
    info = inspect_port(args.port, baud=args.baud, timeout=args.timeout)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    arch = info["arch"] or "bytecode only"
    print(
        f"board on {args.port}: MicroPython {info['micropython']} on {info['platform']} "
        f"(.mpy v{info['mpy_version']}, {arch})"
    )
    c = info.get("config")
    if c:
        print(f"device {c['device']}: model {c['model']}, board {c['board']}, HAL {c['hal']}")
    else:
        print("device: none provisioned (no config.json)")
    print(f"runtime: {info.get('runtime') or 'none'}")
    print(f"factory set: {_versions(info.get('factory') or {})}")
    p = info.get("pointer")
    if isinstance(p, dict) and p.get("set") not in (None, "features"):
        s = info.get("set") or {}
        print(
            f"running: release {s.get('version', '?')} (counter {p.get('counter')}, {p.get('state')}) "
            f"from {p['set']}: {_versions(s.get('features') or {})}"
        )
    else:
        print("running: the factory set")
    if info.get("interrupted"):
        print("provisioning: INTERRUPTED; the device does not start until it is provisioned again")
    else:
        print("provisioning: complete" if c else "provisioning: none")
    if "flash_free" in info:
        print(f"flash: {_kb(info['flash_free'])} free of {_kb(info['flash_total'])}")
    if info.get("mem_free") is not None:
        print(f"RAM: {_kb(info['mem_free'])} free")
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    from .flashing import flash_image

    image = Path(args.firmware) if args.firmware else None
    flash_image(args.port, image, baud=args.baud, erase=args.erase, connect_s=args.connect_timeout)
    return 0


def register(sub: Any) -> None:
    fl = sub.add_parser(
        "flash",
        help="write a MicroPython image to an ESP32-class board over USB (esptool)",
        description="Detect the chip on PORT and write a MicroPython image to it with esptool.",
    )
    fl.add_argument("--port", required=True, help="serial port of the board (/dev/ttyUSB0)")
    fl.add_argument(
        "--firmware",
        metavar="IMAGE.bin",
        help="the MicroPython image (default: the one for the chip in ~/.cache/permabeta/firmware/)",
    )
    fl.add_argument("--baud", type=int, default=460800, help="flashing speed (default 460800)")
    fl.add_argument("--erase", action="store_true", help="erase the whole flash first (its files too)")
    fl.add_argument(
        "--connect-timeout",
        type=float,
        default=10,
        metavar="S",
        help="seconds to find a chip on the port (default 10)",
    )
    fl.set_defaults(func=cmd_flash)
