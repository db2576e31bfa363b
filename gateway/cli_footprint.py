"""`permabeta devices export|forget`: everything the gateway stores about
a device, written out or deleted (docs/protocol.md 10.3), through the
running gateway, which alone writes its database."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .errors import GatewayError
from .footprint import FORMATS
from .paths import default_db


def cmd_devices_export(args: argparse.Namespace) -> int:
    from .client import ApiClient

    client = ApiClient.for_args(args)
    path = f"/api/v1/devices/{args.id}/export?format={args.format}"
    if args.out in (None, "-"):
        if args.format == "csv" and sys.stdout.isatty():
            raise GatewayError("the csv export is a zip file, not for a terminal: give --out FILE")
        client.download(path, sys.stdout.buffer)
        sys.stdout.flush()
        return 0
    out = Path(args.out)
    part = out.with_name(out.name + ".part")  # (a broken export never stands where the whole one would)
    try:
        with part.open("wb") as f:
            client.download(path, f)
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    print(f"{args.id}: exported to {out} ({out.stat().st_size} bytes)", file=sys.stderr)
    return 0


def cmd_devices_forget(args: argparse.Namespace) -> int:
    from .client import ApiClient

    if not args.yes:
        if not sys.stdin.isatty():
            raise GatewayError(
                f"devices forget deletes everything stored about {args.id}: "
                "with no terminal to ask on, say --yes"
            )
        typed = input(f"Delete everything stored about {args.id}? Type its id to confirm: ")
        if typed.strip() != args.id:
            print(f"{args.id}: not forgotten", file=sys.stderr)
            return 1
    answer = ApiClient.for_args(args).request(
        "POST", f"/api/v1/devices/{args.id}/forget", {"confirm": args.id}
    )
    print(forgotten_text(answer))
    return 0 if answer["retained_cleared"] else 1


def forgotten_text(answer: dict[str, Any]) -> str:
    """`th-01 forgotten: 1203 rows (telemetry 1200, events 3); its retained messages cleared`."""
    removed = answer["removed"]
    rows = ", ".join(f"{table} {n}" for table, n in sorted(removed.items(), key=lambda kv: -kv[1]))
    text = f"{answer['device']} forgotten: {sum(removed.values())} rows" + (f" ({rows})" if rows else "")
    if answer["retained_cleared"]:
        return text + "; its retained messages cleared"
    return text + "; its retained messages were not all cleared (the broker went away): forget it again"


def register(dv: Any) -> None:
    """Add `devices export` and `devices forget`."""
    db = f"the gateway's database (default {default_db()})"
    ex = dv.add_parser(
        "export",
        help="everything the gateway stores about a device, as JSON or a zip of CSV files",
        description="An owner gets what was stored since its claim; a maker and an admin everything.",
    )
    ex.add_argument("id")
    ex.add_argument("--format", choices=FORMATS, default="json")
    ex.add_argument("--out", metavar="FILE", help="write it to FILE (default: standard output)")
    ex.add_argument("--db", help=db)
    ex.set_defaults(func=cmd_devices_export)
    fg = dv.add_parser(
        "forget",
        help="delete everything the gateway stores about a device, and its retained messages",
        description="Its telemetry and events are then not kept until the device is claimed again.",
    )
    fg.add_argument("id")
    fg.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")
    fg.add_argument("--db", help=db)
    fg.set_defaults(func=cmd_devices_forget)
