"""`permabeta broker ...`: the fleet's Mosquitto. `broker ca` makes the CA
the owner of the gateway keeps and the broker's certificate signed by it
(gateway/ca.py, docs/security.md 5.4)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .ca import DEFAULT_HOSTS, CaFiles, check_hosts, create_ca, server_cert


def cmd_broker_ca(args: argparse.Namespace) -> int:
    out = Path(args.out)
    hosts = args.host or list(DEFAULT_HOSTS)
    check_hosts(hosts)  # before a CA is replaced
    ca = CaFiles.of(out) if args.renew else create_ca(out, args.force)
    cert, key = server_cert(out, hosts)
    print(f"CA: {ca.cert} (its key {ca.key}: keep it offline, it is the fleet's trust anchor)")
    print(f"  for devices (DER): {ca.der}  ->  permabeta provision --broker mqtts://HOST:8883 --ca {ca.der}")
    print(f"  for the gateway:   permabeta gateway run --broker mqtts://HOST:8883 --ca {ca.cert}")
    print(f"broker certificate {cert} and key {key}, for {', '.join(hosts)}")
    print(f"  in mosquitto.conf: cafile {ca.cert} / certfile {cert} / keyfile {key}")
    return 0


def register(sub: Any) -> None:
    """`broker` and its subcommands, under the top-level subparsers sub."""
    br = sub.add_parser("broker", help="the fleet's Mosquitto broker").add_subparsers(
        dest="brokercmd", required=True, metavar="ACTION"
    )
    ca = br.add_parser(
        "ca",
        help="create the broker's CA and its server certificate",
        description="Create a CA (EC P-256; key mode 0600) in DIR, the broker's server certificate "
        "signed by it, and the CA in DER for devices. An existing CA is kept unless --force: "
        "every device provisioned for mqtts:// trusts it alone.",
    )
    ca.add_argument("--out", required=True, metavar="DIR", help="folder for the CA and the certificate")
    ca.add_argument(
        "--host",
        action="append",
        metavar="NAME_OR_IP",
        help="a name or IP address the broker is reached at (repeat it; default: localhost and 127.0.0.1)",
    )
    again = ca.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true", help="replace a CA already in DIR")
    again.add_argument(
        "--renew",
        action="store_true",
        help="keep the CA in DIR, make only a new server certificate (other hosts, or before it expires)",
    )
    ca.set_defaults(func=cmd_broker_ca)
