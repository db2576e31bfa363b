"""`permabeta devices offers|decide|rollback`: the owner's say on a device's
updates (docs/rollouts.md 8.1), through the running gateway, which alone
writes its database."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from .paths import db_of, default_db

_KINDS = ("reads", "drives", "publishes")


def _when(t: float | None) -> str:
    if t is None:
        return "?"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def decision_text(d: dict[str, Any] | None) -> str:
    """`now`, `later (not before 2026-12-06 07:30 UTC)`, `never`, or `none yet`."""
    if d is None:
        return "none yet"
    return f"later (not before {_when(d.get('until'))})" if d["decision"] == "later" else str(d["decision"])


def _release_lines(o: dict[str, Any]) -> list[str]:
    """A release as the owner reads it: its notes, features and permissions."""
    r, c = o["release"], o["changes"]
    lines = [f"{r['ref']} ({r['version']}), id {r['id'][:12]}"]
    feats = c["features"]
    for f in feats["added"]:
        lines.append(f"  + {f['name']} {f['version']} (new)")
    for f in feats["changed"]:
        lines.append(f"  ^ {f['name']} {f['from']} -> {f['to']}")
    for f in feats["removed"]:
        lines.append(f"  - {f['name']} {f['version']} (removed)")
    lines.append(f"  permissions: {c['summary']}")
    if c["unknown"]:
        lines.append(f"  (what {', '.join(c['unknown'])} may do today is not known)")
    if c["lacks"]:
        lines.append(f"  needs hardware this device lacks: {', '.join(c['lacks'])}")
    if o.get("notes"):
        lines.append("  release notes:")
        lines += [f"    {line}" for line in o["notes"].splitlines()]
    return lines


def offers_text(a: dict[str, Any]) -> str:
    runs = a["runs"]
    on = runs["release"]["ref"] if runs["release"] else f"counter {runs['counter']}"
    if not runs["release"] and not runs["counter"]:
        on = "its factory set"
    policy = a["policy"] + (f" ({a['window']})" if a.get("window") else "")
    lines = [f"{a['device']} runs {on} ({runs['state']}); policy {policy}"]
    if not a["offers"]:
        lines.append("no update waits for it")
    for o in a["offers"]:
        lines.append("")
        lines += _release_lines(o)
        lines.append(f"  state: {o['state']}; decision: {decision_text(o['decision'])}")
    lines.append("")
    if a["rollback"] is None:
        lines.append("rollback: none (no release is signed to take it back to the set it ran before)")
    else:
        lines.append("rollback to the set it ran before (permabeta devices rollback):")
        lines += [f"  {line}" for line in _release_lines(a["rollback"])]
    return "\n".join(lines)


def cmd_devices_offers(args: argparse.Namespace) -> int:
    from .client import ApiClient

    answer = ApiClient.from_db(db_of(args)).request("GET", f"/api/v1/devices/{args.id}/offers")
    print(json.dumps(answer, indent=2) if args.json else offers_text(answer))
    return 0


def cmd_devices_decide(args: argparse.Namespace) -> int:
    from .client import ApiClient
    from .errors import DecisionError

    if args.decision == "later" and args.until is None:
        raise DecisionError(
            "devices decide ... later needs --until WHEN (a date-time with its offset, 6h, 3d)"
        )
    body: dict[str, Any] = {"release": args.release, "decision": args.decision}
    if args.until is not None:
        body["until"] = float(args.until) if args.until.replace(".", "", 1).isdigit() else args.until
    path = f"/api/v1/devices/{args.id}/decision"
    answer = ApiClient.from_db(db_of(args)).request("POST", path, body)
    print(
        json.dumps(answer, indent=2) if args.json else f"{args.id}: {answer['ref']} {decision_text(answer)}"
    )
    return 0


def cmd_devices_rollback(args: argparse.Namespace) -> int:
    from .cli_ota import follow
    from .client import ApiClient

    client = ApiClient.from_db(db_of(args))
    u = client.request("POST", f"/api/v1/devices/{args.id}/rollback", {})
    return follow(client, u, args)


def _command(dv: Any, name: str, func: Any, as_json: bool = True, **texts: str) -> Any:
    """`devices NAME ID` running func, with --json (if as_json) and --db."""
    p = dv.add_parser(name, **texts)
    p.add_argument("id")
    if as_json:
        p.add_argument("--json", action="store_true")
    p.add_argument("--db", help=f"the gateway's database (default {default_db()})")
    p.set_defaults(func=func)
    return p


def register(dv: Any) -> None:
    """Add `devices offers`, `devices decide` and `devices rollback`."""
    from .cli_ota import follow_options

    _command(
        dv,
        "offers",
        cmd_devices_offers,
        help="the updates waiting for a device, what each changes, its rollback",
    )
    de = _command(
        dv,
        "decide",
        cmd_devices_decide,
        help="the owner's say on an update: now, later --until WHEN, or never",
        description="now: install it as soon as it is offered (outside a maintenance window too); "
        "later: not before WHEN, then as the policy says; never: it is not offered to the device.",
    )
    de.add_argument("release", metavar="RELEASE", help="a release id, MODEL@COUNTER or version")
    de.add_argument("decision", choices=("now", "later", "never"))
    de.add_argument(
        "--until",
        metavar="WHEN",
        help="(later) an ISO 8601 date-time with its offset, a Unix time, or a duration (90m, 6h, 3d)",
    )
    rb = _command(
        dv,
        "rollback",
        cmd_devices_rollback,
        as_json=False,
        help="take a device back to the set it ran before, by the release its maker signed for that",
    )
    follow_options(rb)
