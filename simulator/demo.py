"""`make demo`: a broker, the gateway and a small simulated fleet, live.

Needs nothing configured: with no broker given it starts an embedded one;
the gateway's database goes to a fresh temporary folder unless --db is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.broker import BrokerUrl, EmbeddedBroker
from gateway.service import Gateway
from gateway.store import Store

from .fleet import Fleet

SPEED = 300.0  # five simulated minutes per second: rooms warm up, runs end, in a minute


class LivePrinter:
    """Prints devices appearing and their telemetry, one line each."""

    def __init__(self, out: Any = sys.stdout) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)

    def __call__(self, kind: str, dev: str, msg: dict[str, Any]) -> None:
        if kind == "hello":
            feats = ", ".join(f"{n} {f.get('version')}" for n, f in sorted(msg["features"].items()))
            self.line(
                f"+ {dev:<6} {msg['model']} on {msg['board']} ({msg['platform']}) appeared; "
                f"features: {feats}; boot {msg['boot_count']}"
            )
        elif kind in ("online", "offline"):
            reason = msg.get("reason")
            self.line(f"  {dev:<6} is {kind}{f' ({reason})' if reason else ''}")
        elif kind == "telemetry":
            self.line(f"  {dev:<6} {describe(msg)}")
        elif kind == "event":
            self.line(f"! {dev:<6} {msg['kind']} {msg.get('feature') or ''}: {msg.get('message')}")


def describe(msg: dict[str, Any]) -> str:
    s, f = msg["sensors"], msg["features"]
    if "thermostat" in f:
        t = f["thermostat"]
        return (
            f"room {s.get('temperature', float('nan')):5.2f} C  setpoint {t.get('setpoint')} C  "
            f"heater {'ON ' if t.get('heating') else 'off'}"
        )
    if "vent" in f:
        v = f["vent"]
        return f"skin humidity {s.get('humidity', float('nan')):5.1f} %  vent {v.get('opening', 0):3d} % open"
    return f"sensors {s}"


async def run_demo(
    broker_url: str | None = None, *, thermostats: int = 2, shirts: int = 2, db: str | None = None
) -> None:
    printer = LivePrinter()
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
            store = stack.enter_context(Store(db_path))
            gw = Gateway(broker, store, api=("127.0.0.1", 0))
            gw.listeners.append(printer)
            fleet = Fleet(
                broker,
                work / "devices",
                models={"thermostat": thermostats, "shirt": shirts},
                speed=SPEED,
                telemetry_s=2,
                sample_s=0.25,
            )
            async with asyncio.TaskGroup() as tg:
                gw_task = tg.create_task(gw.run(), name="gateway")
                await asyncio.wait_for(gw.connected.wait(), 15)
                while gw.api_url is None:
                    await asyncio.sleep(0.05)
                printer.line(f"gateway up: API {gw.api_url}, database {db_path}")
                printer.line(
                    f"in another terminal: .venv/bin/permabeta devices list --db {db_path}   "
                    f"(or: devices send th-1 config set thermostat.setpoint=23 --db {db_path})"
                )
                printer.line(
                    f"starting {len(fleet.devices)} simulated devices (time runs {SPEED:g}x); Ctrl-C stops"
                )
                fleet_task = tg.create_task(fleet.run(), name="fleet")
                try:
                    await asyncio.Event().wait()
                finally:
                    # stop cleanly: devices say goodbye, then the gateway stops
                    fleet.stop()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(fleet_task), 5)
                    gw_task.cancel()
