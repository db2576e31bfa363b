"""`permabeta devices gains ID [--ask FEATURE]`: what a device could gain
(docs/protocol.md 13), and the owner's ask for it, through the running
gateway, which alone writes its database."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .paths import default_db


def gains_lines(shown: dict[str, Any]) -> list[str]:
    """What `devices gains` and `devices show` say of it."""
    lines = []
    for g in shown["gains"]:
        lines.append(f"  could gain {g['feature']} {g['version']} ({g['release']['ref']}): {g['text']}")
    for w in shown["waiting"]:
        lines.append(f"  {w['text']}")
    for c in shown["with_addons"]:
        lines.append(f"  {c['text']} ({c['release']['ref']})")
    return lines


def cmd_devices_gains(args: argparse.Namespace) -> int:
    from .client import ApiClient

    client = ApiClient.for_args(args)
    path = f"/api/v1/devices/{args.id}/gains"
    if args.ask is None:
        shown = client.request("GET", path)
        if args.json:
            print(json.dumps(shown, indent=2))
            return 0
        lines = gains_lines(shown) or ["  nothing to gain with its hardware now"]
        print("\n".join([f"{args.id}:", *lines]))
        return 0
    answer = client.request("POST", path, {"feature": args.ask})
    if args.json:
        print(json.dumps(answer, indent=2))
    elif "state" in answer and "decision" in answer:
        through = f"through rollout {answer['rollout']} ({answer['state']})"
        print(f"{args.id}: {args.ask} comes with {answer['ref']}, {through}")
    else:
        print(f"{args.id}: {args.ask} comes with {answer['ref']}: update {answer['id']} {answer['state']}")
    return 0


def register(dv: Any) -> None:
    """Add `devices gains`."""
    p = dv.add_parser(
        "gains",
        help="what a device could gain with its hardware (an add-on plugged in), and ask for it",
        description="Lists the features of stored releases the device's hardware can run now, those "
        "installed that wait for hardware, and those an add-on would let run. --ask FEATURE: the "
        "owner's yes to the release that brings it, which goes out as any update.",
    )
    p.add_argument("id")
    p.add_argument("--ask", metavar="FEATURE", help="install the release that brings FEATURE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--db", help=f"the gateway's database (default {default_db()})")
    p.set_defaults(func=cmd_devices_gains)
