"""`permabeta devices streams ID [STREAM=CHOICE ...]`: a device's data
footprint, and its owner's choices (docs/protocol.md 12), through the
running gateway, which asks the device to apply them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .paths import db_of, default_db

_SHOWN = {"share": "shared", "local": "on the device only", "off": "off"}


def footprint_text(a: dict[str, Any]) -> str:
    """The streams as a table an owner reads, with what keeping each back costs."""
    lines = [f"{a['device']}: what it sends (share), keeps on the device (local) or does not read (off)"]
    if not a["choices_known"]:
        lines.append("  (its runtime says nothing of choices: it shares every stream)")
    days = a.get("retention_days")
    lines.append(
        f"  the gateway keeps what it shares for {days:g} days"
        if days is not None
        else "  the gateway keeps what it shares with no limit of its owner's"
    )
    width = max(len(s["path"]) for s in a["streams"])
    for s in a["streams"]:
        choice = "needed" if s["needed"] else _SHOWN[s["choice"]]
        lines.append(f"  {s['path']:<{width}}  {choice:<18} {s['sensitivity']:<9} {s['doc']}")
        if not s["needed"] and s["choice"] != "share":
            for cost in s["costs"][s["choice"]]:
                lines.append(f"  {'':<{width}}  ! {cost}")
    return "\n".join(lines)


def _choices(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        path, sep, choice = pair.partition("=")
        if not sep or not path or not choice:
            raise SystemExit(f"permabeta: {pair!r}: say STREAM=share, STREAM=local or STREAM=off")
        out[path] = choice
    return out


def cmd_devices_streams(args: argparse.Namespace) -> int:
    from .client import ApiClient

    client = ApiClient.from_db(db_of(args))
    path = f"/api/v1/devices/{args.id}/streams"
    body: dict[str, Any] = {"streams": _choices(args.choices)} if args.choices else {}
    if args.retention_days is not None or args.keep_forever:
        body["retention_days"] = args.retention_days
    answer = client.request("PUT", path, body) if body else client.request("GET", path)
    print(json.dumps(answer, indent=2) if args.json else footprint_text(answer))
    return 0


def register(dv: Any) -> None:
    p = dv.add_parser(
        "streams",
        help="what data a device sends, and its owner's choice for each stream",
        description="Without choices: each stream, what it tells, its sensitivity and the owner's choice. "
        "With STREAM=share|local|off: the device applies them (it must be online), then the table.",
    )
    p.add_argument("id")
    p.add_argument("choices", nargs="*", metavar="STREAM=CHOICE")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument(
        "--retention-days", type=float, metavar="DAYS", help="the gateway deletes what it shares after DAYS"
    )
    keep.add_argument("--keep-forever", action="store_true", help="no limit of the owner's on what is kept")
    p.add_argument("--json", action="store_true")
    p.add_argument("--db", help=f"the gateway's database (default {default_db()})")
    p.set_defaults(func=cmd_devices_streams)
