"""`make demo`: a broker, the gateway and a small simulated fleet, live, and
a feature update after purchase.

Needs nothing configured: with no broker given it starts an embedded one;
update keys, releases, device flash and the gateway's database go to a fresh
temporary folder (the database elsewhere if --db is given).

The story: the fleet runs its factory features for a while; then the maker
ships an update (the thermostats gain `eco`, which pre-heats while energy is
cheap from the hourly price table the gateway sends; the shirts get a
steeper vent curve); every device downloads it, installs it, proves it in a
short trial and commits, and the telemetry shows the new features at work.
Then the maker rolls out `weather` (it switches the heater on earlier in
the cold, from an outdoor probe: an add-on) to every thermostat: th-2, with
no probe, installs it and weather waits; th-1's owner, asked first, plugs
a probe in, the gateway lists what th-1 could now gain, the owner asks for
it, and th-1 runs it (docs/protocol.md 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from gateway.broker import BrokerUrl, EmbeddedBroker
from gateway.errors import GatewayError
from gateway.paths import firmware_dir
from gateway.releases import StoredRelease
from gateway.service import Gateway
from gateway.store import Store
from gateway.updates import Update
from ota.keys import Keys, keygen
from ota.release import build

from .fleet import Fleet

SPEED = 300.0  # five simulated minutes per second: rooms warm up, runs end, in a minute
FACTORY_S = 10.0  # real seconds the fleet runs its factory features before the update
TRIAL_S = 4.0  # real seconds a new feature set runs before it commits
UPDATE_PATIENCE_S = 120.0
# Offers go out this far apart, a rollout in miniature. It also keeps the
# devices' reconnects apart: the embedded broker (amqtt 0.12) can fail a
# client that connects while another subscribes.
STAGGER_S = 0.5
# The devices' clocks run SPEED times faster than the gateway's, so a
# freshness statement valid for an hour of real time would look expired to
# them after 12 s; the demo's gateway signs them for 30 days.
FRESHNESS_TTL_S = 30 * 86400.0
# A plausible winter day on a dynamic tariff, ct/kWh by local hour: cheap at
# night, dear in the morning and evening peaks.
PRICES = [
    *(9.1, 8.4, 7.9, 7.6, 7.8, 8.9, 14.2, 27.5, 31.0, 26.3, 21.8, 18.9),
    *(16.4, 15.9, 17.2, 20.5, 26.8, 34.9, 38.2, 36.1, 29.4, 22.7, 17.3, 12.5),
]
# The maker's change to the vent: opens wider sooner, then levels off.
STEEPER_CURVE = """# The vent's opening curve: (x, y) points, x = where humidity stands between
# close_at (0) and full_at (1), y = how far the flap opens beyond min_opening
# (0: at min_opening, 1: fully open). Linear in between points.
# 1.1.0: steeper at first, so a sweaty shirt vents sooner.
POINTS = ((0.0, 0.0), (0.3, 0.6), (1.0, 1.0))
"""


# what a hello's ota.state says of the set a device runs
_RUNNING = {
    "factory": "factory set",
    "trial": "new set, on trial",
    "committed": "new set",
    "updating": "update mode",
    "safe_mode": "safe mode",
}


def sim_start(now: float) -> float:
    """Where the devices' clocks start: 22:00 UTC yesterday, so the night's
    cheap hours come soon after the update (and clocks stay behind real time
    for a while)."""
    return now - now % 86400 - 2 * 3600


def _kb(n: float) -> str:
    return f"{n / 1024:.1f}"


class LivePrinter:
    """Prints devices appearing and booting, their telemetry and their
    updates' progress, one line per device per event."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.t0 = time.monotonic()
        self.gateway: Gateway | None = None
        self.updates: dict[str, str] = {}  # update id -> device
        self._shown_update: dict[str, tuple[str, int, int | None]] = {}
        self._shown_hello: dict[str, tuple[Any, ...]] = {}

    def line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)

    def __call__(self, kind: str, dev: str, msg: dict[str, Any]) -> None:
        if kind == "hello":
            self._hello(dev, msg)
        elif kind in ("online", "offline"):
            reason = msg.get("reason")
            self.line(f"  {dev:<6} is {kind}{f' ({reason})' if reason else ''}")
        elif kind == "telemetry":
            self.line(f"  {dev:<6} {describe(msg)}")
        elif kind == "event":
            feature = f" {msg['feature']}" if msg.get("feature") else ""
            self.line(f"! {dev:<6} {msg['kind']}{feature}: {msg.get('message')}")
        elif kind == "ota/status" and msg.get("id") in self.updates:
            self._status(dev, msg["id"])

    def started(self, u: Update) -> None:
        """Follow an update the demo started."""
        self.updates[u.id] = u.device
        self._shown_update[u.id] = (u.state, u.bytes, u.total)
        self.line(f"~ {u.device:<6} update {u.id[:6]}: offered {u.model} {u.version}")

    def _hello(self, dev: str, msg: dict[str, Any]) -> None:
        feats = ", ".join(f"{n} {f.get('version')}" for n, f in sorted(msg["features"].items()))
        key = (feats, msg["boot_count"])
        if self._shown_hello.get(dev) == key:
            return  # said again (after a commit, a setting): nothing new to show
        first = dev not in self._shown_hello
        self._shown_hello[dev] = key
        state = str((msg.get("ota") or {}).get("state") or "?")
        running = _RUNNING.get(state, state)
        if first:
            self.line(
                f"+ {dev:<6} {msg['model']} on {msg['board']} ({msg['platform']}) appeared; "
                f"features: {feats} ({running}); boot {msg['boot_count']}"
            )
        else:
            self.line(
                f"+ {dev:<6} booted ({msg['reset_cause']}); features: {feats} ({running}); "
                f"boot {msg['boot_count']}"
            )

    def _status(self, dev: str, uid: str) -> None:
        if self.gateway is None:
            return
        u = self.gateway.ota.get(uid)  # the gateway has applied the status already
        key = (u.state, u.bytes, u.total)
        if self._shown_update.get(uid) == key:
            return
        self._shown_update[uid] = key
        self.line(f"~ {dev:<6} update {uid[:6]}: {progress(u)}")


def progress(u: Update) -> str:
    """One update's state as a short line: state, bytes/total, reason."""
    text = f"{u.state:<11}"
    if u.total:
        filled = min(20, int(20 * u.bytes / u.total))
        text += f" [{'#' * filled}{'-' * (20 - filled)}] {_kb(u.bytes)}/{_kb(u.total)} KB"
    elif u.state in ("staged", "verified", "activating", "trial", "committed"):
        text += f" ({_kb(u.served)} KB received)"
    if u.reason:
        text += f": {u.reason}"
    return text


def final(u: Update) -> str:
    took = (u.finished or time.time()) - u.started
    sent = f"{_kb(u.served)} KB in {u.requests} chunks"
    if u.state == "committed":
        return f"committed {u.model} {u.version} in {took:.1f} s; {sent}"
    return f"{u.state}: {u.reason or 'no reason given'} ({u.model} {u.version}; {sent})"


def runs(store: Store, dev: str) -> str:
    """The features dev says it runs, with their versions."""
    rec = store.device(dev)
    return ", ".join(f"{n} {f.get('version')}" for n, f in sorted((rec.features if rec else {}).items()))


def describe(msg: dict[str, Any]) -> str:
    s, f = msg["sensors"], msg["features"]
    clock = time.strftime("%H:%M", time.gmtime(msg["ts"])) if isinstance(msg.get("ts"), int | float) else ""
    if "thermostat" in f:
        t = f["thermostat"]
        text = (
            f"{clock}  room {s.get('temperature', float('nan')):5.2f} C  setpoint {t.get('setpoint')} C  "
            f"heater {'ON ' if t.get('heating') else 'off'}"
        )
        eco = f.get("eco")
        if eco is not None:
            price = eco.get("price")
            if price is None:
                text += "  eco: no prices yet"
            else:
                text += (
                    f"  boost +{eco.get('boost', 0):.1f} C "
                    f"({'cheap' if eco.get('cheap') else 'dear'}, {price:g} ct/kWh)"
                )
        weather = f.get("weather")
        if weather is not None and "outdoor_temperature" in s:
            text += f"  outdoors {s['outdoor_temperature']:.1f} C: on {weather.get('lead', 0):.2f} C early"
        return text
    if "vent" in f:
        v = f["vent"]
        humidity = s.get("humidity", float("nan"))
        return f"{clock}  skin humidity {humidity:5.1f} %  vent {v.get('opening', 0):3d} % open"
    return f"{clock}  sensors {s}"


# ---- the maker's releases --------------------------------------------------------


def vent_overlay(into: Path) -> Path:
    """The maker's change to the vent, as a feature folder: the shipped vent
    with a steeper curve.py and version 1.1.0."""
    vent = into / "vent"
    shutil.copytree(firmware_dir() / "features" / "vent", vent, ignore=shutil.ignore_patterns("__pycache__"))
    (vent / "curve.py").write_text(STEEPER_CURVE)
    manifest = json.loads((vent / "manifest.json").read_text())
    manifest["version"] = "1.1.0"
    (vent / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return vent


def make_releases(gw: Gateway, keys: Keys, work: Path) -> dict[str, StoredRelease]:
    """Build, sign and publish the update of each model; by model."""
    features = firmware_dir() / "features"
    sources = {
        "thermostat": [features / "thermostat", features / "eco"],
        "shirt": [vent_overlay(work / "maker")],
    }
    out = {}
    for model, dirs in sources.items():
        rel = build(model, dirs, "2.0.0", work / "releases" / model, keys=keys)
        out[model], _ = gw.ota.releases.add(rel.path, time.time())
    return out


def app_accounts(gw: Gateway, devices: Sequence[str], printer: LivePrinter) -> None:
    """An owner who claimed every other device (with its claim code, as from
    its box) and a maker, with passwords of this run: the app to look at."""
    from gateway.accounts import Accounts, new_claim_code

    accounts = Accounts(gw.store)
    now = time.time()
    words = {name: secrets.token_urlsafe(9) for name in ("ann", "mia")}
    ann = accounts.create("ann", "owner", words["ann"], now)
    accounts.create("mia", "maker", words["mia"], now)
    for dev in devices[::2]:
        code = new_claim_code()
        accounts.register_claim(dev, code, now)
        accounts.claim(ann, code, now)
    printer.line(
        f"the app: {gw.api_url}/app/  owner ann (password {words['ann']}, owns {', '.join(devices[::2])}); "
        f"maker mia (password {words['mia']})"
    )


async def share_eco(gw: Gateway, devices: Sequence[str], printer: LivePrinter) -> None:
    """What eco publishes came with the update, so it stays on the devices
    until their owners share it (docs/protocol.md 12): here they do."""
    for dev in devices:
        try:
            reply = await gw.send_command(dev, "streams.get", timeout=5)
            kept = [
                p
                for p, c in reply["result"]["streams"].items()
                if p.startswith("features.eco.") and c == "local"
            ]
            if kept:
                reply = await gw.send_command(
                    dev, "streams.set", {"streams": dict.fromkeys(kept, "share")}, timeout=5
                )
        except GatewayError as exc:
            printer.line(f"= {dev:<6} eco's streams stay on the device: {exc}")
            continue
        if kept and reply.get("ok"):
            names = ", ".join(p.rsplit(".", 1)[1] for p in kept)
            printer.line(
                f"= {dev:<6} eco's new streams started on the device; its owner shares them: {names}"
            )


# ---- the story ---------------------------------------------------------------------


class PriceFeed:
    """Sends the day's prices to every thermostat each time it boots: the
    device keeps data only in RAM, so a reboot (an update's) loses them."""

    def __init__(self, gw: Gateway, printer: LivePrinter) -> None:
        self.gw = gw
        self.printer = printer
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._boots: dict[str, int] = {}

    def __call__(self, kind: str, dev: str, msg: dict[str, Any]) -> None:
        if kind == "hello" and msg["model"] == "thermostat" and self._boots.get(dev) != msg["boot_count"]:
            self._boots[dev] = msg["boot_count"]
            self.queue.put_nowait(dev)

    async def run(self) -> None:
        cheap = sorted(range(24), key=lambda h: PRICES[h])[:6]
        while True:
            dev = await self.queue.get()
            try:
                # force: the device has just said hello, its state may still be on the way
                await self.gw.send_command(dev, "data.set", {"key": "prices", "value": PRICES}, 5, True)
            except GatewayError as exc:
                self.printer.line(f"! {dev:<6} could not send the price table: {exc}")
                continue
            hours = ", ".join(f"{h:02d}" for h in sorted(cheap))
            self.printer.line(f"  {dev:<6} got today's prices (cheapest hours: {hours})")


async def _wait_online(gw: Gateway, devices: Sequence[str], timeout: float, online: bool = True) -> None:
    """Until the gateway sees every one of devices online (or offline)."""
    deadline = time.monotonic() + timeout
    while any(gw.is_online(d) != online for d in devices) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def roll_out_weather(
    gw: Gateway, fleet: Fleet, keys: Keys, work: Path, asked: str, printer: LivePrinter
) -> Update | None:
    """The maker rolls out a release with `weather` (it needs an outdoor
    probe, an add-on: docs/protocol.md 13) to every thermostat; the owner
    of `asked` takes updates when asked. Where no probe is plugged in it
    installs and weather waits; then the owner of `asked` plugs one in, the
    gateway says what it could now gain, and the owner asks for it: the
    rollout offers it. Weather's new stream `lead` is shared as the owner
    says (an update's streams start on the device). Returns asked's update."""
    from dataclasses import replace

    from gateway.api_gains import ask
    from gateway.cli_gains import gains_lines
    from gateway.gains import gains, rolled_out
    from gateway.settings import SettingsTable

    features = firmware_dir() / "features"
    dirs = [features / n for n in ("thermostat", "eco", "weather")]
    rel = build("thermostat", dirs, "2.1.0", work / "releases" / "thermostat-weather", keys=keys)
    stored, _ = gw.ota.releases.add(rel.path, time.time())
    table = SettingsTable(gw.store)
    table.save(replace(table.get(asked), policy="ask"), time.time())
    roll = gw.rollouts.create(stored.ref, "model=thermostat", stages=(1.0,), soak_s=5, no_revert=True, seed=1)
    printer.line(f"rollout {roll.id} of {stored.ref} (2.1.0: eco, thermostat, weather) to every thermostat")
    others = [d.id for d in fleet.devices if d.model == "thermostat" and d.id != asked]
    deadline = time.monotonic() + UPDATE_PATIENCE_S
    while time.monotonic() < deadline and not all(
        ((gw.store.device(o) or _NONE).ota or {}).get("counter") == stored.counter for o in others
    ):
        await asyncio.sleep(0.2)
    for o in others:
        printer.line(f"= {o:<6} runs {runs(gw.store, o)}")
    fleet.device(asked).plug("outdoor_temperature")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        d = gw.store.device(asked)
        if d is not None and "outdoor_temperature" in (d.hello.get("addons") or []):
            break
        await asyncio.sleep(0.2)
    else:
        printer.line(f"! {asked:<6} did not find the probe")
        return None
    printer.line(f"+ {asked:<6} found an outdoor temperature probe plugged in (its hello says so)")
    for line in gains_lines(gains(gw.ota.releases, d, rolled_out(gw.rollouts.table))):
        printer.line(f"+ {asked:<6}{line[1:]}")
    try:
        await ask(gw, d, "weather")
    except GatewayError as exc:
        printer.line(f"! {asked:<6} weather not installed: {exc}")
        return None
    printer.line(
        f"+ {asked:<6} its owner asks for weather: the rollout offers {stored.ref}, with the owner's yes"
    )
    deadline = time.monotonic() + UPDATE_PATIENCE_S
    member = None
    while time.monotonic() < deadline and (member is None or not member.update_id):
        member = gw.rollouts.table.member(roll.id, asked)
        await asyncio.sleep(0.2)
    if member is None or not member.update_id:
        printer.line(f"! {asked:<6} was not offered {stored.ref}")
        return None
    u = gw.ota.get(member.update_id)
    printer.started(u)
    while time.monotonic() < deadline and not gw.ota.get(u.id).ended:
        await asyncio.sleep(0.2)
    for dev in [asked, *others]:
        with contextlib.suppress(GatewayError, KeyError, TypeError):
            await gw.send_command(
                dev, "streams.set", {"streams": {"features.weather.lead": "share"}}, timeout=5
            )
    return gw.ota.get(u.id)


class _NONE:
    ota: dict[str, Any] = {}


async def update_fleet(
    gw: Gateway, fleet: Fleet, releases: dict[str, StoredRelease], printer: LivePrinter
) -> list[Update]:
    """Offer every device its model's release and follow them to the end."""
    started: list[Update] = []
    for d in fleet.devices:
        try:
            u = await gw.ota.start(d.id, releases[d.model].id)
        except GatewayError as exc:
            printer.line(f"! {d.id:<6} update not started: {exc}")
            continue
        printer.started(u)
        started.append(u)
        await asyncio.sleep(STAGGER_S)
    deadline = time.monotonic() + UPDATE_PATIENCE_S
    while time.monotonic() < deadline and not all(gw.ota.get(u.id).ended for u in started):
        await asyncio.sleep(0.2)
    return [gw.ota.get(u.id) for u in started]


async def run_demo(
    broker_url: str | None = None,
    *,
    thermostats: int = 2,
    shirts: int = 2,
    db: str | None = None,
    factory_s: float = FACTORY_S,
    out: TextIO | None = None,
) -> None:
    """Run the demo until cancelled (Ctrl-C). factory_s: real seconds on the
    factory features before the update; out: where the lines go (stdout)."""
    printer = LivePrinter(out)
    with tempfile.TemporaryDirectory(prefix="permabeta-demo-") as tmp:
        work = Path(tmp)
        db_path = Path(db) if db else work / "gateway.db"
        async with contextlib.AsyncExitStack() as stack:
            if broker_url:
                broker = BrokerUrl.parse(broker_url)
                printer.line(f"using broker {broker}")
            else:
                broker = await stack.enter_async_context(EmbeddedBroker())
                printer.line(f"embedded broker on {broker}")
            keys = keygen(work / "keys")
            store = stack.enter_context(Store(db_path))
            gw = Gateway(broker, store, api=("127.0.0.1", 0), keys=keys)
            gw.ota.freshness_ttl_s = FRESHNESS_TTL_S
            printer.gateway = gw
            prices = PriceFeed(gw, printer)
            gw.listeners += [printer, prices]
            releases = make_releases(gw, keys, work)
            fleet = Fleet(
                broker,
                work / "devices",
                models={"thermostat": thermostats, "shirt": shirts},
                speed=SPEED,
                start=sim_start(time.time()),
                telemetry_s=2,
                sample_s=0.25,
                root=keys.root_bytes,
                trial_s=TRIAL_S,
                config={"scan_ms": 1000},  # (a probe plugged in is found within a second)
            )
            async with asyncio.TaskGroup() as tg:
                gw_task = tg.create_task(gw.run(), name="gateway")
                await asyncio.wait_for(gw.connected.wait(), 15)
                while gw.api_url is None:
                    await asyncio.sleep(0.05)
                printer.line(f"gateway up: API {gw.api_url}, database {db_path}, update keys {keys.path}")
                printer.line(
                    f"in another terminal: .venv/bin/permabeta devices list --db {db_path}   "
                    f"(or: devices send th-1 config set thermostat.setpoint=23 --db {db_path})"
                )
                for r in releases.values():
                    feats = ", ".join(f"{n} {v}" for n, v in r.summary()["features"].items())
                    printer.line(
                        f"release {r.ref} ({r.version}) published: {feats}; "
                        f"{r.files} files, {_kb(r.zsize)} KB compressed"
                    )
                printer.line(
                    f"starting {len(fleet.devices)} simulated devices on their factory features "
                    f"(time runs {SPEED:g}x); Ctrl-C stops"
                )
                fleet_task = tg.create_task(fleet.run(), name="fleet")
                feed_task = tg.create_task(prices.run(), name="prices")
                try:
                    await _wait_online(gw, [d.id for d in fleet.devices], 15)
                    app_accounts(gw, [d.id for d in fleet.devices], printer)
                    await asyncio.sleep(factory_s)
                    printer.line(
                        "=== the maker ships an update: thermostats gain eco (pre-heats while "
                        "energy is cheap), shirts get a steeper vent curve ==="
                    )
                    ended = await update_fleet(gw, fleet, releases, printer)
                    printer.line("=== update done ===")
                    for u in ended:
                        printer.line(f"= {u.device:<6} {final(u)}; runs {runs(store, u.device)}")
                    await share_eco(gw, [u.device for u in ended], printer)
                    printer.line(
                        "=== the maker rolls out weather (it needs an outdoor probe); th-1's owner, "
                        "asked first, plugs one in ==="
                    )
                    probed = await roll_out_weather(gw, fleet, keys, work, "th-1", printer)
                    if probed is not None:
                        printer.line(f"= th-1   {final(probed)}; runs {runs(store, 'th-1')}")
                    await asyncio.Event().wait()
                finally:
                    # stop cleanly: devices say goodbye, then the gateway stops
                    fleet.stop()
                    feed_task.cancel()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(fleet_task), 5)
                    # the goodbyes are on the broker: the gateway takes them in before it stops
                    await _wait_online(gw, [d.id for d in fleet.devices], 5, online=False)
                    gw_task.cancel()
