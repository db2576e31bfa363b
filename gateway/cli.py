"""The `permabeta` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .broker import BrokerUrl, EmbeddedBroker
from .errors import ConfigError, GatewayError
from .paths import db_of, default_db
from .updates import DEFAULT_DEADLINE_S


def hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host or "127.0.0.1", int(port)


# ---- provision ---------------------------------------------------------------


def cmd_provision(args: argparse.Namespace) -> int:
    if args.inspect:
        from .cli_serial import inspect

        return inspect(args)
    missing = [f"--{n}" for n in ("model", "id", "broker") if getattr(args, n) is None]
    if missing:
        raise ConfigError(f"provision needs {', '.join(missing)} (only --port PORT --inspect needs none)")
    features = [f for f in args.features.split(",") if f] if args.features is not None else None
    root = None
    if args.root or args.keys:
        path = Path(args.root) if args.root else Path(args.keys) / "root.json"
        try:
            root = path.read_bytes()
        except OSError as exc:
            raise GatewayError(f"cannot read the root {path}: {exc.strerror}") from exc
    ca = None
    if args.ca:
        from .ca import read_ca

        ca = read_ca(Path(args.ca))
    options: dict[str, Any] = {
        "board": args.board,
        "password": args.password,
        "features": features,
        "telemetry_s": args.telemetry,
        "trial_s": args.trial,
        "wifi": (args.wifi, args.wifi_password or "") if args.wifi else None,
        "close_repl": args.close_repl,
        "compile_mpy": not args.source,
        "force": args.force,
        "root": root,
        "ca": ca,
        "serial_line": (args.serial_line, args.serial_baud) if args.serial_line else None,
        "ble_link": args.ble_link,
    }
    broker = BrokerUrl.parse(args.broker)
    if args.port:
        from .cli_serial import provision

        p = provision(args, broker, options)
    else:
        from .provision import provision_into

        p = provision_into(Path(args.into), args.model, args.id, broker, **options)
    feats = ", ".join(p.features) or "none"
    where = f"onto {p.port}" if p.port else f"into {p.path}"
    print(f"provisioned {p.model} {p.device} ({p.board}; features: {feats}) {where}")
    # what follows holds for a device however it was provisioned
    print(f"broker user {p.username!r}, password {p.password!r}")
    if ca is not None:
        from .provision import CA_FILE

        print(f"over TLS, trusting only the CA {args.ca} (on the device as {CA_FILE})")
    if args.db or args.gateway:
        from .cli_registry import register_device

        register_device(args, p.device, p.model, p.board, p.password)
    else:
        print("  register it with the gateway (--db DB or --gateway URL) for the broker to let it in,")
        print(
            f"  or add it to a Mosquitto password file: mosquitto_passwd -b FILE {p.username} '{p.password}'"
        )
    _claim_code(args, p.device)
    if root is None:
        print("no update keys given (--keys): this device will refuse every update")
    if p.path is not None and getattr(args, "ble_link", False):
        print("run it on a board with a Bluetooth LE radio (the unix port has none)")
    elif p.path is not None:
        mp = Path(sys.executable).parent / "micropython"  # (the unix port the venv installs)
        print(f"run it: cd {p.path} && {mp if mp.exists() else 'micropython'} main.py")
    return 0


def _claim_code(args: argparse.Namespace, device: str) -> None:
    """A new claim code for the device's box (docs/protocol.md 10.1): printed,
    never written to the device; registered with the gateway where one is
    named (--db, --gateway)."""
    from .accounts import new_claim_code
    from .cli_registry import register_claim

    code = new_claim_code()
    registered = bool(args.db or args.gateway)
    before = f"; any printed before for {device} no longer claims it" if registered else ""
    print(f"claim code (for the box; shown only now{before}): {code}")
    if registered:
        register_claim(args, device, code)
    else:
        print(f"  register it with the gateway: permabeta devices claim-code {device} {code}")


# ---- gateway -----------------------------------------------------------------


# a gateway still running this long after a signal has lost its cancel (Python 3.11's
# asyncio.wait_for, in a library): every task of it is cancelled again, each time as long
_STOP_AGAIN_S = 30.0  # (what stops cleanly takes less: a command's wait for its reply, 10 s)


async def _run_gateway(args: argparse.Namespace) -> None:
    if args.cluster and not args.broker:
        raise ConfigError("--cluster names a NATS cluster's nodes: give --broker (its MQTT listener) too")
    from .service import Gateway, cancel_until_done
    from .store import Store

    async with contextlib.AsyncExitStack() as stack:
        if args.broker:
            broker = BrokerUrl.parse(args.broker)
        else:
            host, port = args.listen
            broker = await stack.enter_async_context(EmbeddedBroker(host, port))
            print(f"embedded broker listening on {broker}", flush=True)
        keys = _gateway_keys(Path(args.keys)) if args.keys else None
        tls_context = _broker_tls(args, broker)
        store = stack.enter_context(Store(db_of(args)))
        pool = None
        if args.worker:
            from .pool import Pool

            pool = Pool(store, args.worker)
        cluster = [u for arg in args.cluster or () for u in arg.split(",") if u]
        gw = Gateway(
            broker,
            store,
            pool=pool,
            # (each worker of a pool its own session at the broker)
            client_id=f"{args.client_id}-{args.worker}" if args.worker else args.client_id,
            tls_context=tls_context,
            api=args.api,
            api_tls=_api_tls(args),
            keys=keys,
            update_deadline=args.update_deadline,
            cluster=cluster,
            # (each stream on three nodes, or on all of a smaller cluster: give every node)
            cluster_replicas=min(3, len(cluster)) or 1,
        )
        if args.serial:
            from .serial_line import SerialLine

            gw.carriers += [SerialLine(gw, port, args.serial_baud) for port in args.serial]
        if args.ble:
            from .ble_line import BleBridge

            gw.carriers += [BleBridge(gw, adapter) for adapter in dict.fromkeys(args.ble)]
        task = asyncio.create_task(gw.run(), name="gateway")
        # SIGINT and SIGTERM stop it cleanly, even when it was started with
        # SIGINT ignored (in the background of a shell, or under nohup)
        loop = asyncio.get_running_loop()
        stopper: list[asyncio.Task[None]] = []
        me = asyncio.current_task()

        def stop() -> None:
            if not stopper:  # (a second signal: the first's stop goes on)
                again = cancel_until_done(task, _STOP_AGAIN_S, every_task=True, spare=(me,))
                stopper.append(loop.create_task(again))

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        while gw.api_url is None and not task.done():
            await asyncio.sleep(0.05)
        if not task.done():
            print(f"gateway: database {store.name}, API {gw.api_url}, broker {broker}", flush=True)
            api = json.loads(store.get_meta("api") or "{}")
            if "fingerprint" in api:
                print(f"API certificate {api['cert']}, SHA-256 {api['fingerprint']}", flush=True)
            for carrier in gw.carriers:
                print(f"line {carrier.name}: devices on it prove who they are", flush=True)
            if keys is not None:
                print(f"updates: root version {keys.version} from {keys.path}", flush=True)
            else:
                print("updates: off (no --keys DIR)", flush=True)
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            logging.getLogger("permabeta.gateway").info("stopped by a signal")


def _broker_tls(args: argparse.Namespace, broker: BrokerUrl) -> Any:
    """The TLS context for a broker on mqtts://: trusting --ca alone, else
    the system's CAs (None: the Gateway's default). Raises ConfigError."""
    if not args.ca:
        return None
    if not broker.tls:
        raise ConfigError(f"--ca is the CA of a broker on mqtts://, and the broker is {broker}")
    from .ca import read_ca
    from .tls import client_context

    read_ca(Path(args.ca))  # a CA's certificate, not a server's: a clear error now rather than at connect
    return client_context(cafile=Path(args.ca))


def _api_tls(args: argparse.Namespace) -> Any:
    """How the API is served: --tls, --no-tls, --tls-cert and --tls-key (docs/security.md 5.3)."""
    from .tls import ApiTls

    on = True if args.tls else (False if args.no_tls else None)
    cert, key = (Path(p) if p else None for p in (args.tls_cert, args.tls_key))
    return ApiTls(on, cert, key)


def _gateway_keys(folder: Path) -> Any:
    """The gateway's keys: root.json and gateway.key. Raises ConfigError."""
    from ota.errors import KeyStoreError
    from ota.keys import load_keys

    try:
        keys = load_keys(folder)
        keys.gateway_key()
    except KeyStoreError as exc:
        raise ConfigError(f"--keys {folder}: {exc}") from exc
    return keys


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def cmd_gateway_run(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_gateway(args))
    return 0


# ---- devices -----------------------------------------------------------------


def _ago(t: float | None) -> str:
    if t is None:
        return "-"
    s = max(0, time.time() - t)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def _shown(text: object) -> str:
    """Text a device sent, fit for a terminal: control characters (an escape
    sequence, a newline that would forge a line) are written as escapes."""
    s = str(text)
    return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def cmd_devices_list(args: argparse.Namespace) -> int:
    from .cli_ota import release_text, update_brief, update_text
    from .store import Store, feature_version
    from .updater import UpdateTable

    with Store(db_of(args), readonly=True) as store:
        devices = store.devices()
        latest = UpdateTable(store).latest()
    if args.json:
        print(
            json.dumps(
                [d.summary() | {"release": d.ota, "update": update_brief(latest.get(d.id))} for d in devices],
                indent=2,
            )
        )
        return 0
    if not devices:
        print("no devices yet")
        return 0
    rows = [("ID", "MODEL", "STATE", "CARRIER", "FEATURES", "RELEASE", "UPDATE", "LAST SEEN")]
    for d in devices:
        feats = ", ".join(f"{n} {feature_version(f) or '?'}" for n, f in sorted(d.features.items()))
        rows.append(
            (
                d.id,
                _shown(d.model or "?"),
                "online" if d.online else "offline",
                _shown(d.carrier),
                _shown(feats),
                _shown(release_text(d.ota)),
                update_text(latest.get(d.id)),
                _ago(d.last_seen),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_devices_show(args: argparse.Namespace) -> int:
    from .store import Store, feature_version

    with Store(db_of(args), readonly=True) as store:
        d = store.device(args.id)
        events = store.events(args.id, 10) if d else []
    if d is None:
        from .db import redacted

        raise GatewayError(f"no device {args.id!r} in {redacted(str(db_of(args)))}")
    from .settings import SettingsTable

    if args.json:
        from .updater import UpdateTable

        with Store(db_of(args), readonly=True) as store:
            updates = [u.to_dict() for u in UpdateTable(store).of_device(args.id, 5)]
            settings = SettingsTable(store).get(args.id).to_dict()
        shown = d.to_dict() | {"settings": settings, "events": events, "updates": updates}
        print(json.dumps(shown, indent=2))
        return 0
    state = "online" if d.online else f"offline ({d.state_reason or 'unknown'})"
    print(_shown(f"{d.id}: {d.model} on {d.board}, runtime {d.runtime} ({d.platform}), {state}"))
    print(
        _shown(
            f"  last seen {_ago(d.last_seen)}; boot {d.boot_count} ({d.reset_cause}); heap free {d.heap_free}"
        )
    )
    for name, f in sorted(d.features.items()):
        f = f if isinstance(f, dict) else {}
        flags = "running" if f.get("running") else ("disabled" if not f.get("enabled", True) else "stopped")
        if f.get("waiting") and not f.get("running"):
            flags = "waiting for " + ", ".join(str(c) for c in f["waiting"])
        err = f" - {f['error']}" if f.get("error") else ""
        print(_shown(f"  feature {name} {feature_version(f) or '?'}: {flags}{err}"))
    from .cli_ota import show_device_ota
    from .cli_settings import settings_text
    from .settings import SettingsTable

    with Store(db_of(args), readonly=True) as store:
        print("  " + settings_text(SettingsTable(store).get(d.id).to_dict()))
    for line in show_device_ota(db_of(args), d.id, d.ota):
        print(_shown(line))
    from .cli_gains import gains_lines
    from .gains import gains, rolled_out
    from .releases import ReleaseStore
    from .rollouts import RolloutTable

    with Store(db_of(args), readonly=True) as store:
        for line in gains_lines(gains(ReleaseStore(store), d, rolled_out(RolloutTable(store)))):
            print(_shown(line))
    if d.last_telemetry:
        print("  telemetry: " + json.dumps(d.last_telemetry, sort_keys=True))
    for e in events:
        line = f"  event {_ago(e['received'])}: {e['kind']} {e['feature'] or ''} {e['message'] or ''}"
        print(_shown(line.rstrip()))
    return 0


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


_ACTIONS = {"config": "get or set", "feature": "enable or disable", "data": "set", "repl": "open"}


def parse_command(words: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(op, args) from the words after `devices send ID`.

    ping | status | reboot | config get [FEATURE] | config set FEATURE.KEY=VALUE ... |
    feature enable|disable NAME | data set key=KEY value=VALUE | repl open | OP [KEY=VALUE ...]
    """
    if not words:
        raise GatewayError("no command given (try: ping, status, config set thermostat.setpoint=22)")
    head, rest = words[0], list(words[1:])
    if head in _ACTIONS:
        if not rest:
            raise GatewayError(f"{head} needs an action: {_ACTIONS[head]}")
        head, rest = f"{head}.{rest[0]}", rest[1:]
    if head in ("feature.enable", "feature.disable"):
        if len(rest) != 1:
            raise GatewayError(f"{head} takes one feature name")
        return head, {"feature": rest[0]}
    if head == "config.get":
        return head, ({"feature": rest[0]} if rest else {})
    if head == "config.set":
        feature, values = None, {}
        for word in rest:
            key, eq, val = word.partition("=")
            fname, dot, k = key.partition(".")
            if not eq or not dot or not k:
                raise GatewayError(f"{word!r}: write FEATURE.KEY=VALUE, e.g. thermostat.setpoint=22")
            if feature not in (None, fname):
                raise GatewayError("config set changes one feature at a time")
            feature, values[k] = fname, _value(val)
        if feature is None:
            raise GatewayError("config set needs FEATURE.KEY=VALUE")
        return head, {"feature": feature, "values": values}
    args = {}
    for word in rest:
        key, eq, val = word.partition("=")
        if not eq:
            raise GatewayError(f"{word!r}: arguments are KEY=VALUE")
        args[key] = _value(val)
    return head, args


def cmd_devices_send(args: argparse.Namespace) -> int:
    from .client import ApiClient

    op, cmd_args = parse_command(args.command)
    client = ApiClient.for_args(args)
    reply = client.send(args.id, op, cmd_args, timeout=args.timeout, force=args.force)
    if args.json:
        print(json.dumps(reply, indent=2))
    elif reply["ok"]:
        print(json.dumps(reply.get("result"), indent=2, sort_keys=True))
    else:
        err = reply.get("error", {})
        print(f"{args.id} refused {op}: {err.get('message')} ({err.get('code')})", file=sys.stderr)
    return 0 if reply["ok"] else 1


# ---- demo --------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from simulator.demo import run_demo

    _setup_logging(args.verbose, quiet_gateway=not args.verbose)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(args.broker, thermostats=args.thermostats, shirts=args.shirts, db=args.db))
    print("demo stopped")
    return 0


# ---- entry point -------------------------------------------------------------


def _setup_logging(verbose: bool, quiet_gateway: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if quiet_gateway:
        logging.getLogger("permabeta.gateway").setLevel(logging.WARNING)
    for noisy in ("amqtt", "transitions", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="permabeta", description="Firmware and gateway for products that are never finished."
    )
    p.add_argument("--version", action="version", version=f"permabeta {__version__}")
    p.add_argument(
        "--gateway", metavar="URL", help="the gateway `permabeta login` logged in to (else --db's, if given)"
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    pv = sub.add_parser(
        "provision",
        help="write a device's complete filesystem into a folder or onto a board",
        description="Write a device's filesystem into a folder (--into) or copy it to a MicroPython "
        "board over USB serial (--port); --port PORT --inspect shows what a board holds.",
    )
    where = pv.add_mutually_exclusive_group(required=True)
    where.add_argument("--into", help="folder to write the device into")
    where.add_argument("--port", help="serial port of a MicroPython board to provision (/dev/ttyUSB0)")
    pv.add_argument("--model", help="product model (thermostat, shirt)")
    pv.add_argument("--id", help="device id: 1-32 of a-z 0-9 - _")
    pv.add_argument("--broker", help="broker as the device reaches it, mqtt://HOST:PORT or mqtts://HOST:PORT")
    pv.add_argument("--board", help="board file (default: the model's first)")
    pv.add_argument(
        "--password",
        help="broker password for the device (default: a new random one; a board "
        "provisioned again as the same device keeps its own)",
    )
    pv.add_argument("--features", help="comma-separated features (default: the board's)")
    pv.add_argument(
        "--source",
        action="store_true",
        help="ship modules as .py (to run the device under CPython too); default: compiled .mpy",
    )
    pv.add_argument("--telemetry", type=float, default=10, metavar="S", help="telemetry period (s)")
    pv.add_argument(
        "--force",
        action="store_true",
        help="replace a device already in the folder or on the board (a board's data and updates too)",
    )
    pv.add_argument("--keys", help="update keys folder whose root.json the device will trust")
    pv.add_argument("--root", help="root.json the device will trust (instead of --keys)")
    pv.add_argument(
        "--ca", metavar="FILE", help="the broker's CA certificate, PEM or DER (needed for mqtts://)"
    )
    pv.add_argument(
        "--trial", type=float, metavar="S", help="seconds a new feature set runs before it commits"
    )
    pv.add_argument("--wifi", metavar="SSID", help="the Wi-Fi network a board joins")
    pv.add_argument("--wifi-password", metavar="PASS", help="the password of --wifi")
    pv.add_argument(
        "--serial-line",
        metavar="PORT",
        help="the device talks to the gateway on this serial port of its own (/dev/ttyUSB0 on a Linux "
        "board; repl: the board's own USB REPL port, handed over; uartN:TX:RX: an ESP32's UART and its "
        "pins) instead of to the broker: the gateway runs with --serial on the other end",
    )
    pv.add_argument(
        "--ble-link",
        action="store_true",
        help="the device talks to the gateway over Bluetooth LE (a board with a radio: the shirt's); "
        "the gateway runs with --ble",
    )
    pv.add_argument(
        "--serial-baud", type=int, default=115200, metavar="N", help="--serial-line's rate (default 115200)"
    )
    pv.add_argument(
        "--close-repl",
        action="store_true",
        help="close the board's USB REPL at every boot (a shipped product; `devices send ID repl open` "
        "opens it until the next reset, to provision it again)",
    )
    pv.add_argument(
        "--inspect", action="store_true", help="with --port: show what is on the board, change nothing"
    )
    pv.add_argument("--json", action="store_true", help="with --inspect: as JSON")
    pv.add_argument("--baud", type=int, default=115200, help="with --port: the serial speed")
    pv.add_argument(
        "--timeout",
        type=_positive,
        default=10,
        metavar="S",
        help="with --port: seconds the board has to answer (default 10)",
    )
    pv.add_argument(
        "--db",
        help="register the device and its claim code with the gateway of this database "
        "(the one running on it, else the database itself)",
    )
    pv.set_defaults(func=cmd_provision)

    gw = sub.add_parser("gateway", help="the gateway service").add_subparsers(
        dest="gwcmd", required=True, metavar="ACTION"
    )
    run = gw.add_parser("run", help="run the gateway")
    run.add_argument("--broker", help="mqtt[s]://[USER:PASS@]HOST:PORT (default: start an embedded broker)")
    run.add_argument(
        "--ca",
        metavar="FILE",
        help="the CA (PEM) that signed the certificate of a broker on mqtts:// (default: the system's CAs)",
    )
    run.add_argument(
        "--listen", type=hostport, default=("127.0.0.1", 1883), help="embedded broker's HOST:PORT"
    )
    run.add_argument(
        "--db", help=f"database: a file, or postgresql://USER@HOST:PORT/NAME (default {default_db()})"
    )
    run.add_argument("--api", type=hostport, default=("127.0.0.1", 8480), help="API HOST:PORT (port 0: any)")
    tls = run.add_mutually_exclusive_group()
    tls.add_argument("--tls", action="store_true", help="serve the API over HTTPS on loopback too")
    tls.add_argument("--no-tls", action="store_true", help="plain HTTP (on loopback only; the default there)")
    run.add_argument(
        "--tls-cert", metavar="FILE", help="the API's certificate, PEM (default: one made at first start)"
    )
    run.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert, PEM")
    run.add_argument("--client-id", default="pb-gateway", help="MQTT client id (a worker's: ID-NAME)")
    run.add_argument(
        "--worker",
        metavar="NAME",
        help="run as the worker NAME of a pool sharing the database and the broker (docs/makers.md)",
    )
    run.add_argument(
        "--cluster",
        action="append",
        metavar="URL",
        help="the broker is a NATS cluster: its nodes' nats://HOST:PORT, or tls://HOST:PORT trusting --ca "
        "(repeated, or comma-separated); telemetry and events come from its work queue (docs/makers.md)",
    )
    run.add_argument(
        "--keys",
        metavar="DIR",
        help="keys folder with root.json and gateway.key: store releases and update devices",
    )
    run.add_argument(
        "--update-deadline",
        type=_positive,
        default=DEFAULT_DEADLINE_S,
        metavar="S",
        help=f"an update not committed after S seconds fails (default {DEFAULT_DEADLINE_S:g})",
    )
    run.add_argument(
        "--serial",
        action="append",
        metavar="PORT",
        help="a serial port with a device at its other end (docs/protocol.md 15); may be repeated",
    )
    run.add_argument(
        "--serial-baud", type=int, default=115200, metavar="N", help="the serial ports' rate (default 115200)"
    )
    run.add_argument(
        "--ble",
        action="append",
        nargs="?",
        const="hci0",
        metavar="ADAPTER",
        help="serve the Bluetooth LE devices this adapter finds (default hci0; docs/protocol.md 16); "
        "may be repeated",
    )
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_gateway_run)

    dv = sub.add_parser("devices", help="the registered devices").add_subparsers(
        dest="devcmd", required=True, metavar="ACTION"
    )
    ls = dv.add_parser("list", help="list devices")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--db")
    ls.set_defaults(func=cmd_devices_list)
    sh = dv.add_parser("show", help="one device in detail")
    sh.add_argument("id")
    sh.add_argument("--json", action="store_true")
    sh.add_argument("--db")
    sh.set_defaults(func=cmd_devices_show)
    sd = dv.add_parser(
        "send",
        help="send a command and print the reply",
        description="COMMAND: ping | status | reboot | config get [FEATURE] | "
        "config set FEATURE.KEY=VALUE... | feature enable NAME | feature disable NAME | "
        "data set key=KEY value=JSON | repl open (a maker: a board's USB REPL, until its reset)",
    )
    sd.add_argument("id")
    sd.add_argument("command", nargs="+")
    sd.add_argument("--timeout", type=float, default=10, help="seconds to wait for the reply")
    sd.add_argument("--force", action="store_true", help="send even if the device seems offline")
    sd.add_argument("--json", action="store_true", help="print the whole reply message")
    sd.add_argument("--db")
    sd.set_defaults(func=cmd_devices_send)

    dm = sub.add_parser("demo", help="broker, gateway and a simulated fleet, live")
    dm.add_argument("--broker", help="use this broker instead of an embedded one")
    dm.add_argument("--thermostats", type=int, default=2)
    dm.add_argument("--shirts", type=int, default=2)
    dm.add_argument("--db", help="database (default: a fresh one in a temporary folder)")
    dm.add_argument("-v", "--verbose", action="store_true")
    dm.set_defaults(func=cmd_demo)

    from ota.cli import add_commands

    from .cli_ota import register, register_updates

    register(add_commands(sub), dv)
    from .cli_settings import register as register_settings

    register_settings(dv)
    from .cli_owners import register as register_owners

    register_owners(dv)
    from .cli_footprint import register as register_footprint

    register_footprint(dv)
    from .cli_gains import register as register_gains

    register_gains(dv)

    from .cli_twin import register as register_twin

    register_twin(dv)
    from .cli_streams import register as register_streams

    register_streams(dv)
    from .cli_homeassistant import register as register_homeassistant

    register_homeassistant(dv)
    from .cli_rollout import register as register_rollout

    register_rollout(sub)
    from .cli_registry import register as register_registry

    register_registry(dv)
    from .cli_broker import register as register_broker

    register_broker(sub)
    from .cli_accounts import register as register_accounts

    register_accounts(sub, dv)
    from .cli_login import register as register_login

    register_login(sub)
    from .cli_serial import register as register_serial

    register_serial(sub)
    register_updates(sub)
    from simulator.cli import register as register_sim

    register_sim(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from ota.errors import OtaError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (GatewayError, OtaError) as exc:
        print(f"permabeta: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # what reads the output went away (`| head`): the rest is not wanted, and the
        # interpreter's last flush is sent nowhere instead of raising again
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
