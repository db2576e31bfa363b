"""`permabeta devices link-ha ID` and `unlink-ha ID`: the owner links a
device to Home Assistant, or unlinks it (docs/protocol.md 14), through the
running gateway, which publishes or clears its entities."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .paths import default_db


def link_text(a: dict[str, Any]) -> str:
    """The link as an owner reads it: linked or not, and the entities Home Assistant is shown."""
    if not a["linked"]:
        return f"{a['device']}: not linked to Home Assistant"
    lines = [f"{a['device']}: linked to Home Assistant; its entities there:"]
    for e in a["entities"]:
        lines.append(f"  {e['component']}.{e['key']:<12} {e['name']}")
    return "\n".join(lines)


def cmd_link(args: argparse.Namespace) -> int:
    from .client import ApiClient

    # (the owner's: its kept credentials, `permabeta login`; --db is the gateway's own token, an admin's)
    client = ApiClient.for_args(args)
    answer = client.request("PUT", f"/api/v1/devices/{args.id}/homeassistant", {"linked": args.linked})
    print(json.dumps(answer, indent=2) if args.json else link_text(answer))
    return 0


def register(dv: Any) -> None:
    for name, linked, help_text in (
        ("link-ha", True, "show the device in Home Assistant: its entities, values and commands"),
        ("unlink-ha", False, "take the device out of Home Assistant: its entities are removed"),
    ):
        p = dv.add_parser(name, help=help_text, description=help_text)
        p.add_argument("id")
        p.add_argument("--json", action="store_true")
        p.add_argument("--db", help=f"the gateway's database (default {default_db()})")
        p.set_defaults(func=cmd_link, linked=linked)
