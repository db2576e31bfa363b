"""`permabeta account create|list|token` and `permabeta devices claim-code`:
accounts and claim codes (docs/protocol.md 10.1), through the running
gateway, which alone writes its database. With --db these commands use the
gateway's own token (an admin's) on its machine; else an admin's credentials
kept by `permabeta login` (gateway/client.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .accounts import ROLES
from .errors import ApiError


def _client(args: argparse.Namespace) -> Any:
    from .client import ApiClient

    return ApiClient.for_args(args)


def _password(args: argparse.Namespace) -> str | None:
    """The password from standard input (--password-stdin: its first line), else None."""
    if not args.password_stdin:
        return None
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise ApiError("--password-stdin: standard input gave no password")
    return line


def cmd_account_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    password = _password(args)
    if password is not None:
        body["password"] = password
    a = _client(args).request("POST", "/api/v1/accounts", body)
    print(json.dumps(a, indent=2) if args.json else f"account {a['name']} ({a['role']}) created")
    if password is None and not args.json:
        print(f"it logs in with tokens only: permabeta account token {a['name']}")
    return 0


def cmd_account_list(args: argparse.Namespace) -> int:
    accounts = _client(args).request("GET", "/api/v1/accounts")
    if args.json:
        print(json.dumps(accounts, indent=2))
        return 0
    for a in accounts:
        devices = ", ".join(a["devices"]) or "-"
        print(f"{a['name']:<20} {a['role']:<6} devices: {devices}")
    return 0


def cmd_account_token(args: argparse.Namespace) -> int:
    t = _client(args).request("POST", f"/api/v1/accounts/{args.name}/tokens", {"label": args.label})
    # the token on standard output alone: it is shown only now
    print(json.dumps(t, indent=2) if args.json else t["token"])
    return 0


def cmd_devices_claim_code(args: argparse.Namespace) -> int:
    _client(args).request("PUT", f"/api/v1/devices/{args.id}/claim-code", {"code": args.code})
    print(f"{args.id}: claim code registered (the gateway keeps its hash only)")
    return 0


def register(sub: Any, dv: Any) -> None:
    """Add `account ...` to the commands and `devices claim-code` to the devices'."""
    ac = sub.add_parser("account", help="accounts: owners, makers, admins").add_subparsers(
        dest="acccmd", required=True, metavar="ACTION"
    )
    cr = ac.add_parser("create", help="a new account")
    cr.add_argument("name")
    cr.add_argument("--role", required=True, choices=ROLES)
    cr.add_argument(
        "--password-stdin", action="store_true", help="its password from standard input (else: tokens only)"
    )
    cr.set_defaults(func=cmd_account_create)
    ls = ac.add_parser("list", help="every account and the devices it owns")
    ls.set_defaults(func=cmd_account_list)
    tk = ac.add_parser("token", help="a new API token of an account (printed once)")
    tk.add_argument("name")
    tk.add_argument("--label", default="cli", help="what the token is for")
    tk.set_defaults(func=cmd_account_token)
    for p in (cr, ls, tk):
        p.add_argument("--json", action="store_true")
        p.add_argument("--db")
    cc = dv.add_parser("claim-code", help="register a device's claim code with the gateway")
    cc.add_argument("id")
    cc.add_argument("code", help="XXXX-XXXX-XXXX-XXXX, as provision printed it")
    cc.add_argument("--db")
    cc.set_defaults(func=cmd_devices_claim_code)
