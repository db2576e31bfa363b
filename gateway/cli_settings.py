"""`permabeta devices set` and `permabeta devices approve`: what the maker
and the owner set of a device (docs/rollouts.md 2), through the running
gateway, which alone writes its database."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .errors import SettingsError
from .paths import default_db
from .settings import CHANNELS, POLICIES


def settings_text(s: dict[str, Any]) -> str:
    """One line: `channel beta, tags lab home, policy window 02:00-05:00`."""
    tags = " ".join(s.get("tags") or []) or "none"
    policy = str(s.get("policy"))
    if s.get("window"):
        policy += f" ({s['window']}, the device's local time)"
    return f"channel {s.get('channel')}, tags {tags}, policy {policy}"


def cmd_devices_set(args: argparse.Namespace) -> int:
    from .client import ApiClient

    body: dict[str, Any] = {}
    for key in ("channel", "policy", "window"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.tag:
        body["tag"] = args.tag
    if args.untag:
        body["untag"] = args.untag
    if not body:
        raise SettingsError("devices set: nothing to set (--channel, --tag, --untag, --policy, --window)")
    answer = ApiClient.for_args(args).request("PATCH", f"/api/v1/devices/{args.id}/settings", body)
    print(json.dumps(answer, indent=2) if args.json else f"{args.id}: {settings_text(answer)}")
    return 0


def cmd_devices_approve(args: argparse.Namespace) -> int:
    from .client import ApiClient

    body = {"release": args.release}
    answer = ApiClient.for_args(args).request("POST", f"/api/v1/devices/{args.id}/approve", body)
    print(
        json.dumps(answer, indent=2) if args.json else f"{args.id}: {answer['ref']} approved (decision now)"
    )
    return 0


def register(dv: Any) -> None:
    """Add `devices set` and `devices approve`."""
    st = dv.add_parser("set", help="set a device's channel, tags and update policy")
    st.add_argument("id")
    st.add_argument("--channel", choices=CHANNELS)
    st.add_argument("--tag", action="append", metavar="TAG", help="add a tag (again for more)")
    st.add_argument("--untag", action="append", metavar="TAG", help="remove a tag (again for more)")
    st.add_argument("--policy", choices=POLICIES, help="install updates: auto, ask the owner, or in a window")
    st.add_argument("--window", metavar="HH:MM-HH:MM", help="the daily maintenance window, device local time")
    st.add_argument("--json", action="store_true")
    st.add_argument("--db", help=f"the gateway's database (default {default_db()})")
    st.set_defaults(func=cmd_devices_set)
    ap = dv.add_parser("approve", help="the owner's yes to a release for a device that asks first")
    ap.add_argument("id")
    ap.add_argument("release", help="a release id, MODEL@COUNTER or version")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--db", help=f"the gateway's database (default {default_db()})")
    ap.set_defaults(func=cmd_devices_approve)
