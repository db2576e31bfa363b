"""`permabeta sim ...`: run a fleet of virtual devices against a broker,
with faults; record a device's telemetry trace; replay one into a virtual
device."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from gateway.broker import BrokerUrl, EmbeddedBroker, MosquittoProcess, free_port, mosquitto_binary
from gateway.errors import BrokerError, ConfigError
from gateway.paths import default_db
from gateway.provision import boards

from .fleet import MODELS, Fleet, split

SUMMARY_EVERY_S = 1.0  # on a terminal; elsewhere a line every LOG_EVERY_S
LOG_EVERY_S = 5.0
LOW_CHARGE = 15.0  # % a --low-battery shirt starts at: below the devices' update threshold (30)


def local_mosquitto(directory: Path) -> MosquittoProcess | None:
    """A Mosquitto of the simulator's own on a free loopback port, open to
    any client (a developer's machine, nothing to configure), or None if
    Mosquitto is not installed. Restartable, for the broker-restart fault."""
    try:
        mosquitto_binary()
    except BrokerError:
        return None
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"
        "set_tcp_nodelay true\nmax_queued_messages 1000\npersistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n"
    )
    return MosquittoProcess(conf, port, directory / "mosquitto.log")


def register(sub: Any) -> None:
    """Add `sim run`, `sim record` and `sim replay` to the command line."""
    sim = sub.add_parser("sim", help="the device simulator").add_subparsers(
        dest="simcmd", required=True, metavar="ACTION"
    )
    run = sim.add_parser(
        "run",
        help="a fleet of virtual devices, with a live summary",
        description="N virtual devices running the firmware's own runtime and features, with "
        "physics, against a broker (default: a Mosquitto of its own, or an embedded one). "
        "Deterministic for a seed. Ctrl-C, SIGTERM or SIGINT stop them, each saying goodbye.",
    )
    run.add_argument("--devices", type=_count, default=10, metavar="N")
    run.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: %(default)s)")
    run.add_argument("--broker", help="mqtt://[USER:PASS@]HOST:PORT (devices log in as their id)")
    run.add_argument("--password", help="broker password of every device (with --broker)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    run.add_argument("--telemetry", type=float, default=10, metavar="S", help="telemetry period (real s)")
    run.add_argument("--sample", type=float, default=1, metavar="S", help="sampling period (real s)")
    run.add_argument(
        "--micropython", type=_count, default=0, metavar="K", help="K devices as unix-port processes"
    )
    run.add_argument(
        "--workdir",
        help="the devices' flash folders (default: their flash kept in RAM, a board's power-cut "
        "semantics and no folder); devices found there keep what they installed",
    )
    run.add_argument("--keys", metavar="DIR", help="update keys folder whose root.json every device trusts")
    run.add_argument("--root", metavar="FILE", help="root.json every device trusts (instead of --keys)")
    run.add_argument(
        "--trial", type=float, metavar="S", help="seconds a new feature set runs before it commits"
    )
    run.add_argument(
        "--addon",
        action="append",
        default=[],
        metavar="NAME",
        help="plug the add-on NAME into every device whose board takes it (outdoor_temperature: "
        "thermostats; vent2: shirts); repeatable",
    )
    run.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    run.add_argument("--json", action="store_true", help="print the final summary as JSON")
    f = run.add_argument_group("faults")
    f.add_argument(
        "--power-cuts", type=float, default=0, metavar="N", help="random power cuts per device per hour"
    )
    f.add_argument("--power-off", type=float, default=2.0, metavar="S", help="how long a cut lasts")
    f.add_argument("--clock-skew", type=float, default=0, metavar="S", help="every device's clock off by S")
    f.add_argument("--flash-full", type=_count, default=0, metavar="K", help="K devices with a full flash")
    f.add_argument(
        "--stuck-sensor", type=_count, default=0, metavar="K", help="K devices with a stuck sensor"
    )
    f.add_argument("--noisy-sensors", type=float, default=0, metavar="SD", help="noise on every reading")
    f.add_argument(
        "--failing-actuator", type=_count, default=0, metavar="K", help="K devices' actuator fails"
    )
    f.add_argument(
        "--low-battery",
        type=_count,
        default=0,
        metavar="K",
        help=f"K shirts start at {LOW_CHARGE:g} %% charge",
    )
    f.add_argument(
        "--charger-after",
        type=float,
        default=0,
        metavar="S",
        help="the low shirts go on their charger after S",
    )
    f.add_argument(
        "--broker-restart-every", type=float, default=0, metavar="S", help="restart the broker (its own only)"
    )
    ln = run.add_argument_group("link faults (the devices connect through a proxy that injects them)")
    ln.add_argument(
        "--link-drops", type=float, default=0, metavar="N", help="link outages per device per hour"
    )
    ln.add_argument("--link-drop-s", type=float, default=5.0, metavar="S", help="mean length of an outage")
    ln.add_argument("--latency", type=float, default=0, metavar="MS", help="one-way latency")
    ln.add_argument("--jitter", type=float, default=0, metavar="MS", help="latency varies by up to this")
    for kind in ("corrupt", "duplicate", "reorder", "drop"):
        ln.add_argument(
            f"--chunk-{kind}", type=float, default=0, metavar="P", help=f"{kind} update chunks, probability"
        )
    run.set_defaults(func=cmd_sim_run)

    rec = sim.add_parser("record", help="a device's telemetry trace, from the gateway's store")
    rec.add_argument("id")
    rec.add_argument("--out", required=True, help="trace file to write (JSON lines)")
    rec.add_argument("--db", help=f"gateway database (default {default_db()})")
    rec.add_argument("--limit", type=_count, default=100_000, help="newest N telemetry messages")
    rec.set_defaults(func=cmd_sim_record)

    rp = sim.add_parser(
        "replay",
        help="replay a trace into a virtual device and compare what it drives",
        description="The trace's sensor readings drive a virtual device of its model running "
        "FEATURES (default: the board's); prints how what its features drive compares with what "
        "the recorded device drove.",
    )
    rp.add_argument("trace")
    rp.add_argument("--features", help="comma-separated features to run (default: the board's)")
    rp.add_argument("--config", help='config.json settings for the device (JSON), e.g. {"sample_ms": 200}')
    rp.add_argument("--speed", type=float, default=600.0, help="simulated seconds per real second")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=cmd_sim_replay)


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


# ---- sim run -------------------------------------------------------------------------


def cmd_sim_run(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ConfigError(
            f"--models: unknown {', '.join(unknown) or 'none given'} (known: {', '.join(MODELS)})"
        )
    if args.micropython > args.devices:
        raise ConfigError("--micropython: more than --devices")
    takes = {a: b["model"] for b in boards().values() for a in b.get("addons", {}) if b["model"] in models}
    for a in args.addon:
        if a not in takes:
            known = ", ".join(sorted(takes))
            raise ConfigError(f"--addon: no {', '.join(models)} board takes {a!r} (add-ons: {known})")
    if args.broker_restart_every and args.broker:
        raise ConfigError("--broker-restart-every restarts the simulator's own broker: not with --broker")
    args.root_bytes = _root(args)
    try:
        return asyncio.run(_sim_run(args, models, sys.stdout))
    except KeyboardInterrupt:
        return 0


def _root(args: argparse.Namespace) -> bytes | None:
    """The root.json the devices trust (--root, or --keys DIR/root.json), or
    None: they refuse every update. Raises ConfigError."""
    if args.root and args.keys:
        raise ConfigError("--root and --keys both name the root: give one")
    if not (args.root or args.keys):
        return None
    path = Path(args.root) if args.root else Path(args.keys) / "root.json"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the root {path}: {exc.strerror}") from exc
    from firmware.pb.errors import TrustError
    from firmware.pb.ota.trust import load_root
    from ota.envelope import verify_signature

    try:
        load_root(data, verify_signature)
    except TrustError as exc:
        raise ConfigError(f"{path} is not a valid, self-signed root: {exc.message}") from exc
    return data


def _stop_on_signals(stop: asyncio.Event) -> list[int]:
    """SIGTERM, and SIGINT (which a shell starting a program in the
    background leaves ignored, and Python then never turns into
    KeyboardInterrupt), set stop: the fleet stops as on Ctrl-C, each device
    saying goodbye, and the summary is written. The signals handled."""
    import signal

    loop = asyncio.get_running_loop()
    handled: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            continue
        handled.append(sig)
    return handled


async def _sim_run(args: argparse.Namespace, models: list[str], out: TextIO) -> int:
    with contextlib.ExitStack() as stack:
        work = (
            Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        own = None if args.broker else local_mosquitto(work / "broker")
        embedded: EmbeddedBroker | None = None
        if args.broker:
            broker = BrokerUrl.parse(args.broker)
        elif own is not None:
            own.start()
            stack.callback(own.stop)
            broker = BrokerUrl("127.0.0.1", own.port)
        else:
            embedded = EmbeddedBroker()
            broker = await embedded.start()
        password = args.password or (broker.password if args.broker else "") or ""
        link = None
        profile = _link_profile(args)
        if profile is not None:
            from .link import Link

            link = await Link.to(broker, seed=args.seed, default=profile).start()
        fleet = Fleet(
            broker.with_credentials(None, None),
            work / "devices",
            models=split(args.devices, models),
            seed=args.seed,
            speed=args.speed,
            telemetry_s=args.telemetry,
            sample_s=args.sample,
            passwords=(lambda _id: password) if password else None,
            broker_for=(lambda _id: link.url) if link is not None else None,
            micropython=args.micropython,
            root=getattr(args, "root_bytes", None),
            trial_s=getattr(args, "trial", None),
            addons=args.addon,
            in_memory=not args.workdir,
        )
        kept = [p.id for p in fleet.processes if not p.reflashed]
        if kept:
            print(f"sim: {', '.join(kept)}: flashed before, kept as they are", file=out, flush=True)
        fleet.faults.broker = own
        fleet.faults.link = link
        shares = ", ".join(f"{n} {m}" for m, n in split(args.devices, models).items())
        print(
            f"sim: {args.devices} devices ({shares}), "
            f"seed {args.seed}, speed {args.speed:g}x, broker {broker}",
            file=out,
            flush=True,
        )
        _apply_faults(fleet, args, out)
        task = fleet.start()
        restarts = None
        if args.broker_restart_every:
            restarts = asyncio.create_task(_restarting(fleet, args.broker_restart_every))
        stop = asyncio.Event()
        handled = _stop_on_signals(stop)
        final = None
        why = "stopped"
        try:
            why = await _watch(fleet, task, args.duration, out, stop)
        except BaseException as exc:
            why = "interrupted" if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError) else "failed"
            raise
        finally:
            final = fleet.summary()  # as it ran, before the goodbyes
            loop = asyncio.get_running_loop()
            for sig in handled:
                loop.remove_signal_handler(sig)
            try:
                if restarts is not None:
                    restarts.cancel()
                await fleet.aclose()
                if link is not None:
                    await link.close()
                if embedded is not None:
                    await embedded.stop()
            finally:
                # on every stop: the summary is what a script running this waits for
                if getattr(args, "json", False):
                    print(json.dumps(final.__dict__ | {"stopped": why}), file=out, flush=True)
                else:
                    print(f"\nsim: {why}: {final.line()}", file=out, flush=True)
    return 0


def _apply_faults(fleet: Fleet, args: argparse.Namespace, out: TextIO) -> None:
    rng = random.Random(args.seed ^ 0xC11)
    ids = [d.id for d in fleet.devices]
    faults = fleet.faults
    if args.clock_skew:
        faults.clock_skew(args.clock_skew)
    for dev in rng.sample(ids, min(args.flash_full, len(ids))):
        faults.flash_full(True, dev)
    for dev in rng.sample(ids, min(args.stuck_sensor, len(ids))):
        d = fleet.device(dev)
        name = sorted(n for n in d.hal.sensors() if n != "battery")[0]  # (a low battery is --low-battery)
        faults.sensor(dev, name, stuck=float(d.plant.sensors(fleet.clock.now())[name]))
    if args.noisy_sensors:
        for d in fleet.devices:
            for name in d.hal.sensors():
                faults.sensor(d.id, name, noise=args.noisy_sensors)
    for dev in rng.sample(ids, min(args.failing_actuator, len(ids))):
        d = fleet.device(dev)
        actuators = [n for n, c in d.hal.caps.items() if c.get("kind") != "sensor"]
        if actuators:
            faults.actuator_fails(dev, actuators[0])
    shirts = [d.id for d in fleet.devices if getattr(d.plant, "battery", None) is not None]
    low = rng.sample(shirts, min(args.low_battery, len(shirts)))
    for dev in low:
        faults.battery(dev, charge=LOW_CHARGE, charger=False)
    if low and args.charger_after:

        def plug_in() -> None:
            for dev in low:
                faults.battery(dev, charger=True)

        asyncio.get_running_loop().call_later(args.charger_after, plug_in)
    if args.power_cuts:
        # started with the fleet's loop: random_power_cuts needs it running
        asyncio.get_running_loop().call_soon(faults.random_power_cuts, args.power_cuts, args.power_off)
    chosen = [
        f"{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k
        in (
            *("power_cuts", "clock_skew", "flash_full", "stuck_sensor", "noisy_sensors", "failing_actuator"),
            *("low_battery", "charger_after"),
            *(
                "link_drops",
                "latency",
                "jitter",
                "chunk_corrupt",
                "chunk_duplicate",
                "chunk_reorder",
                "chunk_drop",
            ),
        )
        and v
    ]
    if chosen:
        print(f"sim: faults: {', '.join(chosen)}", file=out, flush=True)


def _link_profile(args: argparse.Namespace) -> Any:
    """The link profile the options ask for, or None: no link faults, no proxy."""
    values = {
        "drops_per_hour": args.link_drops,
        "up_latency_ms": args.latency,
        "down_latency_ms": args.latency,
        "up_jitter_ms": args.jitter,
        "down_jitter_ms": args.jitter,
        "corrupt": args.chunk_corrupt,
        "duplicate": args.chunk_duplicate,
        "reorder": args.chunk_reorder,
        "drop_chunk": args.chunk_drop,
    }
    if not any(values.values()):
        return None
    from .link import LinkProfile

    try:
        return LinkProfile(drop_s=args.link_drop_s, **values)
    except ValueError as exc:
        raise ConfigError(f"link faults: {exc}") from exc


async def _restarting(fleet: Fleet, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        await fleet.faults.broker_restart(1.0)


async def _watch(
    fleet: Fleet, task: asyncio.Task[None], duration: float | None, out: TextIO, stop: asyncio.Event
) -> str:
    """Show the summary until duration passes ("duration"), stop is set
    ("signal") or the fleet ends ("stopped"; raises what ended it)."""
    tty = out.isatty()
    t0 = time.monotonic()
    last_log = 0.0
    fleet.summary()  # starts the message rate's interval
    while not task.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SUMMARY_EVERY_S)
        if stop.is_set():
            return "signal"
        elapsed = time.monotonic() - t0
        if tty:
            print(f"\r[{elapsed:6.0f}s] {fleet.summary().line()}\033[K", end="", file=out, flush=True)
        elif elapsed - last_log >= LOG_EVERY_S:
            last_log = elapsed
            print(f"[{elapsed:6.0f}s] {fleet.summary().line()}", file=out, flush=True)
        if duration is not None and elapsed >= duration:
            return "duration"
    task.result()
    return "stopped"


# ---- record and replay ---------------------------------------------------------------


def cmd_sim_record(args: argparse.Namespace) -> int:
    from gateway.store import Store

    from .trace import record

    with Store(Path(args.db) if args.db else default_db(), readonly=True) as store:
        trace = record(store, args.id, args.limit)
    trace.save(Path(args.out))
    print(
        f"{args.out}: {len(trace.rows)} rows of {trace.device} ({trace.model}), {trace.duration / 3600:.1f} h"
    )
    return 0


def cmd_sim_replay(args: argparse.Namespace) -> int:
    from .trace import Trace, replay

    trace = Trace.load(Path(args.trace))
    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    try:
        config = json.loads(args.config) if args.config else None
    except ValueError as exc:
        raise ConfigError(f"--config is not JSON: {exc}") from exc
    if config is not None and not isinstance(config, dict):
        raise ConfigError("--config must be a JSON object")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = asyncio.run(replay(trace, Path(tmp), features=features, speed=args.speed, config=config))
        except KeyboardInterrupt:
            return 130
    if args.json:
        print(json.dumps({"samples": result.samples, "actuators": result.report()}))
    else:
        print(f"replayed {trace.device} ({trace.model}), {trace.duration / 3600:.1f} h at {args.speed:g}x")
        for line in result.lines():
            print(f"  {line}")
    return 0
