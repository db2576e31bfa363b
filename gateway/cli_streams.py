"""`permabeta devices streams ID [STREAM=CHOICE ...]`: a device's data
footprint, and its owner's choices (docs/protocol.md 12), through the
running gateway, which asks the device to apply them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .paths import default_db

_SHOWN = {"share": "shared", "local": "on the device only", "off": "off"}


def _kept(s: dict[str, Any]) -> str:
    """How long a stream's values are kept: `30 d`, `2 d (own)`, `forever (own)`, `no limit`."""
    days = s.get("retention_days")
    text = f"{days:g} d" if days is not None else ("forever" if s.get("retention_own") else "no limit")
    return text + (" (own)" if s.get("retention_own") is not None else "")


def footprint_text(a: dict[str, Any]) -> str:
    """The streams as a table an owner reads: each one's choice, sensitivity,
    how long the gateway keeps it and how many stored rows carry it, with
    what keeping it back costs."""
    lines = [f"{a['device']}: what it sends (share), keeps on the device (local) or does not read (off)"]
    if not a["choices_known"]:
        lines.append("  (its runtime says nothing of choices: it shares every stream)")
    days = a.get("retention_days")
    lines.append(
        (f"  the gateway keeps what it shares for {days:g} days" if days is not None else
         "  the gateway keeps what it shares with no limit of its owner's")
        + "; a stream marked (own): for its own period"
    )  # fmt: skip
    width = max(len(s["path"]) for s in a["streams"])
    lines.append(f"  {'stream':<{width}}  {'choice':<18} {'':<9} {'kept':<14} {'stored':>7}  what it tells")
    for s in a["streams"]:
        choice = "needed" if s["needed"] else _SHOWN[s["choice"]]
        kept, stored = ("", "") if s["needed"] else (_kept(s), str(s["stored"]))
        lines.append(
            f"  {s['path']:<{width}}  {choice:<18} {s['sensitivity']:<9} {kept:<14} {stored:>7}  {s['doc']}"
        )
        if not s["needed"] and s["choice"] != "share":
            for cost in s["costs"][s["choice"]]:
                lines.append(f"  {'':<{width}}  ! {cost}")
    return "\n".join(lines)


def _pairs(pairs: list[str], say: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        path, sep, value = pair.partition("=")
        if not sep or not path or not value:
            raise SystemExit(f"permabeta: {pair!r}: say {say}")
        out[path] = value
    return out


def _periods(pairs: list[str]) -> dict[str, Any]:
    """STREAM=DAYS, STREAM=forever or STREAM=device (back to the device's) as the API takes them."""
    out: dict[str, Any] = {}
    for path, value in _pairs(pairs, "STREAM=DAYS, STREAM=forever or STREAM=device").items():
        if value in ("forever", "device"):
            out[path] = "forever" if value == "forever" else None
            continue
        try:
            out[path] = float(value)
        except ValueError:
            raise SystemExit(f"permabeta: {path}={value}: a number of days, forever or device") from None
    return out


def cmd_devices_streams(args: argparse.Namespace) -> int:
    from .client import ApiClient

    client = ApiClient.for_args(args)  # (an owner logged in, or the gateway's own on its machine)
    path = f"/api/v1/devices/{args.id}/streams"
    say = "STREAM=share, STREAM=local or STREAM=off"
    body: dict[str, Any] = {"streams": _pairs(args.choices, say)} if args.choices else {}
    if args.retention_days is not None or args.keep_forever:
        body["retention_days"] = args.retention_days
    if args.retention:
        body["retention"] = _periods(args.retention)
    answer = client.request("PUT", path, body) if body else client.request("GET", path)
    print(json.dumps(answer, indent=2) if args.json else footprint_text(answer))
    return 0


def register(dv: Any) -> None:
    p = dv.add_parser(
        "streams",
        help="what data a device sends, and its owner's choice for each stream",
        description="Without choices: each stream, what it tells, its sensitivity and the owner's choice. "
        "With STREAM=share|local|off: the device applies them (it must be online), then the table. "
        "How long the gateway keeps what it shares: --retention-days (the device), --retention (a stream).",
    )
    p.add_argument("id")
    p.add_argument("choices", nargs="*", metavar="STREAM=CHOICE")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument(
        "--retention-days", type=float, metavar="DAYS", help="the gateway deletes what it shares after DAYS"
    )
    keep.add_argument("--keep-forever", action="store_true", help="no limit of the owner's on what is kept")
    p.add_argument(
        "--retention",
        action="append",
        default=[],
        metavar="STREAM=DAYS",
        help="a stream's own period: days, forever, or device (the device's again); repeat for more",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--db", help=f"the gateway's database (default {default_db()})")
    p.set_defaults(func=cmd_devices_streams)
