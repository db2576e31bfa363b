"""What provisioning records at the gateway (gateway/registry.py), and
`permabeta devices revoke|restore ID`.

A device is registered through the running gateway's API (the one --db
names, or the one `permabeta login` logged in to), or, when no gateway runs
on --db, straight into that database: the gateway reads it when it starts,
and `permabeta broker run` within seconds."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from .broker import password_line
from .client import ApiClient, local_api
from .db import redacted
from .errors import ApiError, ApiRequestError
from .paths import db_exists, db_of
from .registry import Registered, Registry
from .store import Store


def password_hash(user: str, password: str) -> str:
    """The hash of a broker password as Mosquitto's password file holds it."""
    return password_line(user, password).split(":", 1)[1]


def cluster_hash(password: str) -> str:
    """The hash of a broker password as a NATS cluster's configuration holds
    it (bcrypt, gateway/nats_cluster.py)."""
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(CLUSTER_COST)).decode()


# bcrypt's cost, the least it takes: the server checks it at every connection (1 ms here
# at 4, 65 ms at 10: a fleet's reconnection would be hours of CPU), and what it guards is a
# random password provisioning made (as Mosquitto's 101 iterations of PBKDF2, security.md 11)
CLUSTER_COST = 4


def _through(
    args: argparse.Namespace, api: Callable[[ApiClient], Any], direct: Callable[[Store], Any]
) -> str:
    """Run api against the gateway --db names if one runs there (else
    direct, on the database itself), or against the gateway logged in to.
    Which it was, in words. Raises GatewayError."""
    if getattr(args, "db", None):
        db = db_of(args)
        info = local_api(db) if db_exists(db) else None
        if info is not None:
            try:
                api(ApiClient.from_db(db))
                return f"the gateway running on {redacted(str(db))}"
            except ApiRequestError:
                raise
            except ApiError:
                pass  # (its record of a gateway outlived it: none answers)
        with Store(db) as store:
            direct(store)
        return f"{redacted(str(db))} (no gateway runs on it: it reads it when it starts)"
    client = ApiClient.for_args(args)
    api(client)
    return f"the gateway at {client.url}"


def register_device(args: argparse.Namespace, device: str, model: str, board: str, password: str) -> None:
    """Record a provisioned device: its password's hash, for the broker, and
    its link key, for a serial or Bluetooth line (firmware/pb/net/proof.py)."""
    from firmware.pb.net.proof import link_key

    h, nats = password_hash(device, password), cluster_hash(password)
    key = link_key(device, password).hex()
    body = {"model": model, "board": board, "password_hash": h, "link_key": key, "cluster_hash": nats}

    def api(client: ApiClient) -> None:
        client.request("PUT", f"/api/v1/devices/{device}/registration", body)

    def direct(store: Store) -> None:
        Registry(store).register(device, model, board, h, time.time(), key, nats)

    where = _through(args, api, direct)
    print(
        f"  registered with {where}: the broker's configuration lets it in "
        "(as permabeta broker run, broker cluster --run or broker config write it)"
    )


def register_claim(args: argparse.Namespace, device: str, code: str) -> None:
    from .accounts import Accounts

    def api(client: ApiClient) -> None:
        client.request("PUT", f"/api/v1/devices/{device}/claim-code", {"code": code})

    def direct(store: Store) -> None:
        Accounts(store).register_claim(device, code, time.time())

    print(f"  its claim code registered with {_through(args, api, direct)}")


def _shown(r: dict[str, Any]) -> str:
    state = "revoked" if r.get("revoked") is not None else "may connect"
    return f"{r['device']}: {r['model']} ({r['board']}), {state}"


def _revocation(args: argparse.Namespace, revoke: bool) -> int:
    verb = "revoke" if revoke else "restore"
    got: list[dict[str, Any]] = []

    def api(client: ApiClient) -> None:
        got.append(client.request("POST", f"/api/v1/devices/{args.id}/{verb}"))

    def direct(store: Store) -> None:
        reg = Registry(store)
        r: Registered = reg.revoke(args.id, time.time()) if revoke else reg.restore(args.id)
        got.append(r.as_dict())

    where = _through(args, api, direct)
    print(_shown(got[0]) + f" (at {where})")
    if revoke:
        print(
            "  the broker run by `permabeta broker run` or `broker cluster --run` cuts it off within "
            "seconds; its data stays"
        )
        print(f"  until its owner deletes it (permabeta devices forget {args.id})")
    return 0


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    return _revocation(args, True)


def cmd_devices_restore(args: argparse.Namespace) -> int:
    return _revocation(args, False)


def register(dv: Any) -> None:
    """Add `devices revoke` and `devices restore`."""
    for name, func, what in (
        ("revoke", cmd_devices_revoke, "cut a device off: at the gateway now, at the broker within seconds"),
        ("restore", cmd_devices_restore, "let a revoked device back in"),
    ):
        p = dv.add_parser(name, help=what)
        p.add_argument("id")
        p.add_argument("--db", help="the gateway's database (a gateway running on it is asked)")
        p.set_defaults(func=func)
