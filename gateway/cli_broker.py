"""`permabeta broker config|run|ca`: the fleet's Mosquitto, configured from
the devices registered at provisioning (gateway/broker_config.py), and the CA
the owner of the gateway keeps for its TLS (gateway/ca.py, docs/security.md 5.4)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from .broker import BrokerUrl
from .broker_config import BrokerRunner, FleetBroker, worker_user, write
from .ca import DEFAULT_HOSTS, CaFiles, cert_hosts, check_hosts, create_ca, server_cert, tls_listener
from .db import redacted
from .errors import ConfigError
from .paths import db_of
from .store import Store


def _write(args: argparse.Namespace, store: Store) -> FleetBroker:
    host, port = args.listen
    if (args.tls is None) != (args.ca is None):
        raise ConfigError("a TLS listener needs both --tls PORT and --ca DIR (the folder `broker ca` wrote)")
    tls = tls_listener(Path(args.ca), args.tls) if args.tls is not None else None
    ha, workers = args.homeassistant, args.worker or ()
    return write(Path(args.out), store, host, port, homeassistant=ha, tls=tls, workers=workers)


def _db(db: str) -> str:
    """The database as a printed command names it: without its password."""
    return redacted(str(db))


def _hidden(db: str) -> None:
    if _db(db) != str(db):
        print(
            "  (the database's password is shown as ***: put it back, or keep it in PGPASSWORD or ~/.pgpass)"
        )


def _told(fleet: FleetBroker, db: str) -> None:
    f = fleet.files
    print(f"broker configuration in {f.conf.parent}: {f.conf.name}, {f.passwords.name}, {f.acl.name}")
    print(
        f"  {fleet.devices} device(s) let in, {fleet.revoked} revoked; listens on {fleet.host}:{fleet.port}"
    )
    host = "127.0.0.1" if fleet.host in ("0.0.0.0", "::") else fleet.host
    url = BrokerUrl(host, fleet.port, username="gateway", password=fleet.gateway_password)
    print(f"  the gateway: permabeta gateway run --db '{_db(db)}' --broker '{url.url(secret=True)}'")
    for name, password in fleet.workers.items():
        worker = BrokerUrl(host, fleet.port, username=worker_user(name), password=password)
        print(
            f"  its worker {name}: permabeta gateway run --db '{_db(db)}' --worker {name} --api HOST:PORT",
            end="",
        )
        print(f" --broker '{worker.url(secret=True)}'")
    if fleet.tls is not None:
        tls_host = _named_by(Path(fleet.tls.certfile), host)
        tls = BrokerUrl(tls_host, fleet.tls.port, True, url.username, url.password)
        print(f"  TLS on {fleet.host}:{fleet.tls.port}, its certificate {fleet.tls.certfile}")
        print(f"    the gateway: --broker '{tls.url(secret=True)}' --ca {fleet.tls.cafile}")
        print(
            f"    devices: permabeta provision --broker mqtts://HOST:{fleet.tls.port} --ca {fleet.tls.cafile}"
        )
    print(f"  (its password is kept in {f.conf.parent / 'gateway.password'})")
    _hidden(db)


def cmd_broker_config(args: argparse.Namespace) -> int:
    with Store(db_of(args)) as store:
        fleet = _write(args, store)
    _told(fleet, args.db)
    print(f"run it: mosquitto -c {fleet.files.conf}   (or permabeta broker run, which reloads it)")
    return 0


def cmd_broker_run(args: argparse.Namespace) -> int:
    with Store(db_of(args)) as store:
        fleet = _write(args, store)
        _told(fleet, args.db)
        runner = BrokerRunner(fleet, store, say=lambda line: print(line, flush=True))
        stopping: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda n, _frame: stopping.append(n))
        print("mosquitto running; devices registered, revoked or restored apply within seconds", flush=True)
        runner.run(stop=lambda: bool(stopping))
    print("mosquitto stopped")
    return 0


def cmd_broker_cluster(args: argparse.Namespace) -> int:
    """A NATS cluster on this machine (gateway/nats_cluster.py), from the registry."""
    from .broker import GATEWAY_USER, HA_USER
    from .broker_config import check_workers, secret
    from .cli_registry import cluster_hash
    from .nats_cluster import ROUTE_USER, SYSTEM_USER, ClusterRunner, NatsCluster, cluster_tls, layout

    check_workers(args.worker or ())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    host, port = args.listen
    nodes = layout(out, args.nodes, host, port, args.cluster_host)
    tls = cluster_tls(Path(args.ca), out, nodes) if args.ca else None
    accounts = {GATEWAY_USER: secret(out, GATEWAY_USER)}
    accounts |= {worker_user(w): secret(out, worker_user(w)) for w in dict.fromkeys(args.worker or ())}
    if args.homeassistant:
        accounts[HA_USER] = secret(out, HA_USER)
    with Store(db_of(args)) as store:
        cluster = NatsCluster(out, nodes, (GATEWAY_USER, accounts[GATEWAY_USER]), tls=tls)
        hashed = {u: cluster_hash(p) for u, p in accounts.items()}
        system, route = secret(out, SYSTEM_USER), secret(out, ROUTE_USER)
        runner = ClusterRunner(
            cluster, store, hashed, system, route, say=print, revoke=lambda dev: _revoke(args.db, dev)
        )
        runner.write()
        urls = ",".join(cluster.nats_urls)
        print(f"a NATS cluster of {len(nodes)} in {out}: " + ", ".join(f"{n.name}.conf" for n in nodes))
        mqtt = "MQTT over TLS" if tls else "MQTT"
        for n in nodes:
            print(f"  {n.name}: {mqtt} {n.mqtt_on}:{n.mqtt_port}, NATS {n.host}:{n.client_port}")
        if tls:
            print(f"  TLS on every listener: the CA {tls.ca}, the routes' certificate {tls.node_cert}")
        first = nodes[0]
        ca = f" --ca {tls.ca}" if tls else ""
        near = _named_by(tls.mqtt_cert, first.mqtt_near) if tls is not None else first.mqtt_near
        for user, password in accounts.items():
            if user == HA_USER:
                where = f"{first.mqtt_near}:{first.mqtt_port}"
                print(
                    f"  Home Assistant: its MQTT integration at {where}{' (TLS)' if tls else ''}, user {user}"
                )
                continue
            broker = BrokerUrl(near, first.mqtt_port, tls is not None, user, password)
            url = broker.url(secret=True)
            name = user.split(".", 1)[1] if "." in user else None
            worker = f" --worker {name} --api HOST:PORT" if name else ""
            run = f"permabeta gateway run --db '{_db(args.db)}'{worker} --broker '{url}'{ca} --cluster {urls}"
            print(f"  {'its worker ' + name if name else 'the gateway'}: {run}")
        scheme = "mqtts" if tls else "mqtt"
        trust = f" --ca {CaFiles.of(Path(args.ca)).der}" if tls else ""
        where = f"{scheme}://HOST:{first.mqtt_port}"
        print(f"  devices: permabeta provision --broker {where}{trust} (any node's port)")
        print(f"  (the accounts' passwords are kept in {out}, 0600)")
        _hidden(args.db)
        if not args.run:
            print(f"run it: permabeta broker cluster --out {out} --db '{_db(args.db)}' --run")
            return 0
        stopping: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda n, _frame: stopping.append(n))
        print("nats-server running; devices registered, revoked or restored apply within seconds", flush=True)
        print("  a device's account that connects as another client id is revoked", flush=True)
        runner.run(stop=lambda: bool(stopping))
    print("nats-server stopped")
    return 0


def _named_by(cert: Path, host: str) -> str:
    """The host the gateway dials the broker at over TLS: a name its
    certificate holds (the gateway checks it), this machine's where it may;
    host if it holds none."""
    names = cert_hosts(cert)
    near = [n for n in names if n in ("127.0.0.1", "localhost", "::1")]
    return (near or names or [host])[0]


def _revoke(db: str, dev: str) -> None:
    """Revoke dev through the gateway running on db (it refuses it at once), else in db itself."""
    import time

    from .cli_registry import _through
    from .client import ApiClient
    from .registry import Registry

    def api(client: ApiClient) -> None:
        client.request("POST", f"/api/v1/devices/{dev}/revoke")

    def direct(s: Store) -> None:
        Registry(s).revoke(dev, time.time())

    _through(argparse.Namespace(db=db), api, direct)


def _fleet_options(p: Any, whose: str) -> None:
    """The options Mosquitto's and the cluster's configurations share: where
    they are kept, the registry, and the accounts besides the gateway's."""
    p.add_argument("--out", required=True, help=f"the folder of {whose} files (kept between runs)")
    p.add_argument("--db", required=True, help="the gateway's database: its registered devices")
    p.add_argument("--homeassistant", action="store_true", help="an account for Home Assistant too")
    p.add_argument(
        "--worker",
        action="append",
        metavar="NAME",
        help="an account for the worker NAME of a pool of gateways (gateway.NAME); may be repeated",
    )


def _register_cluster(br: Any) -> None:
    from .cli import hostport

    cl = br.add_parser(
        "cluster",
        help="write (and with --run, run) a NATS cluster for the registered devices",
        description="A NATS cluster on this machine as the fleet's broker (docs/makers.md): each node "
        "with JetStream and an MQTT listener, routed to the others; the gateway's accounts and every "
        "registered device's, reloaded when the registry changes.",
    )
    _fleet_options(cl, "the cluster's")
    cl.add_argument(
        "--nodes", type=int, default=3, help="how many nodes, 3 to 9 or 1 (default 3; kept in --out)"
    )
    cl.add_argument(
        "--listen",
        type=hostport,
        default=("127.0.0.1", 1883),
        metavar="HOST:PORT",
        help="the nodes' MQTT listeners' host (0.0.0.0: every interface) and the first node's port, the "
        "next nodes' one up each (default 127.0.0.1:1883)",
    )
    cl.add_argument(
        "--cluster-host",
        default="127.0.0.1",
        metavar="HOST",
        help="where the nodes take NATS clients, routes and monitoring: devices never (default 127.0.0.1)",
    )
    cl.add_argument(
        "--ca",
        metavar="DIR",
        help="TLS on every listener, from the CA folder `broker ca` wrote: devices' MQTT with its server "
        "certificate, the routes and NATS clients with the nodes' own (made in --out), a route taken only "
        "from a node the CA signed (docs/security.md 7.10)",
    )
    cl.add_argument("--run", action="store_true", help="run the nodes, until interrupted")
    cl.set_defaults(func=cmd_broker_cluster)


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


def _register_ca(br: Any) -> None:
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


def register(sub: Any) -> None:
    from .cli import hostport

    br = sub.add_parser(
        "broker", help="the fleet's broker: Mosquitto's configuration, run, CA; a NATS cluster"
    ).add_subparsers(dest="brcmd", required=True, metavar="ACTION")
    _register_ca(br)
    _register_cluster(br)
    cf = br.add_parser("config", help="write a Mosquitto configuration for the registered devices")
    cf.set_defaults(func=cmd_broker_config)
    rn = br.add_parser("run", help="run Mosquitto with it, reloaded when devices are added or revoked")
    rn.set_defaults(func=cmd_broker_run)
    for p in (cf, rn):
        _fleet_options(p, "the broker's")
        p.add_argument(
            "--listen",
            type=hostport,
            default=("0.0.0.0", 1883),
            metavar="HOST:PORT",
            help="default 0.0.0.0:1883",
        )
        p.add_argument("--tls", type=int, metavar="PORT", help="a TLS listener on PORT too (8883), with --ca")
        p.add_argument(
            "--ca",
            metavar="DIR",
            help="the folder `broker ca` wrote: the CA, the broker's certificate, its key",
        )
