"""A fleet of virtual devices of both models through the real Mosquitto (its
ACLs, a password per device) to a gateway in this loop: it connects,
reports, and follows commands; `permabeta sim run` shows it live; a run is
the same for the same seed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.broker import password_line
from simulator.fleet import Fleet, split

from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import fleet_rig

N = 200


async def test_a_fleet_of_200_connects_reports_and_follows_commands(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with fleet_rig(
        mosquitto, tmp_path, split(N, ["thermostat", "shirt"]), seed=11, telemetry_s=2, sample_s=0.5
    ) as r:
        fleet, gw, store, ids, prefix = r.fleet, r.gw, r.store, r.ids, r.prefix
        await fleet.wait_connected(60)
        assert fleet.summary().connected == N
        await async_wait_for(
            lambda: sum(gw.is_online(i) for i in ids) == N, 30, what="all online at the gateway"
        )
        # every device reports telemetry, stored by the gateway
        await async_wait_for(
            lambda: all(store.telemetry_count(i) > 0 for i in ids), 30, what="telemetry from every device"
        )
        shirts = [i for i in ids if i.startswith(prefix["shirt"])]
        rows = store.telemetry(shirts[0], 1)
        assert "humidity" in rows[0].data["sensors"] and "vent" in rows[0].data["features"]
        # commands: a setting to every thermostat, answered and applied
        thermostats = [i for i in ids if i.startswith(prefix["thermostat"])]
        replies = await asyncio.gather(
            *(
                gw.send_command(
                    i, "config.set", {"feature": "thermostat", "values": {"setpoint": 19.5}}, timeout=30
                )
                for i in thermostats
            )
        )
        assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]][:3]
        for i in thermostats:
            dev = fleet.device(i).device
            assert dev is not None and dev.features.config("thermostat")["setpoint"] == 19.5
        # and a feature disabled on every shirt
        replies = await asyncio.gather(
            *(gw.send_command(i, "feature.disable", {"feature": "vent"}, timeout=30) for i in shirts)
        )
        assert all(r["ok"] for r in replies)
        assert all(fleet.device(i).running() == [] for i in shirts)
        # the fleet's view agrees with the gateway's
        s = fleet.summary()
        assert (s.devices, s.connected, s.failed) == (N, N, 0)
        assert gw.stats()["online"] >= N


def test_the_same_seed_makes_the_same_fleet(tmp_path: Path) -> None:
    from gateway.broker import BrokerUrl

    url = BrokerUrl("127.0.0.1", 1)
    a = Fleet(url, tmp_path / "a", models={"thermostat": 3, "shirt": 3}, seed=42)
    b = Fleet(url, tmp_path / "b", models={"thermostat": 3, "shirt": 3}, seed=42)
    c = Fleet(url, tmp_path / "c", models={"thermostat": 3, "shirt": 3}, seed=43)
    assert [d.id for d in a.devices] == [d.id for d in b.devices]
    assert [d.plant for d in a.devices] == [d.plant for d in b.devices]
    assert [d.plant for d in a.devices] != [d.plant for d in c.devices]
    # not N copies of one device
    rooms = [d.plant for d in a.devices if d.model == "thermostat"]
    assert len({(r.capacity, r.loss) for r in rooms}) == 3


def test_password_lines_are_mosquitto_s_own_format() -> None:
    line = password_line("th-1", "secret")
    user, rest = line.split(":", 1)
    assert user == "th-1" and rest.startswith("$7$101$") and len(rest.split("$")) == 5


@pytest.mark.long
def test_sim_run_shows_a_live_summary_and_stops_cleanly(mosquitto: Mosquitto, tmp_path: Path) -> None:
    # its own broker (a Mosquitto open to any client), a few seconds, with faults
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "sim",
            "run",
            "--devices",
            "12",
            "--seed",
            "5",
            "--telemetry",
            "0.5",
            "--duration",
            "6",
            "--power-cuts",
            "300",
            "--stuck-sensor",
            "1",
            "--json",
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("sim: 12 devices (6 thermostat, 6 shirt), seed 5")
    assert any("connected" in line and "msg/s" in line for line in lines[1:-1]), lines
    final = json.loads(lines[-1])
    assert final["devices"] == 12 and final["connected"] >= 6 and final["messages_per_s"] > 0
    assert final["power_cuts"] > 0


def test_sim_run_refuses_what_it_cannot_do() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "sim", "run", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    bad = run("--models", "toaster")
    assert bad.returncode == 1 and "unknown toaster" in bad.stderr
    bad = run("--broker", "mqtt://127.0.0.1:1", "--broker-restart-every", "5")
    assert bad.returncode == 1 and "own broker" in bad.stderr
    bad = run("--devices", "-3")
    assert bad.returncode == 2 and "must be 0 or more" in bad.stderr


async def test_a_fleet_runs_some_devices_on_the_micropython_unix_port(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    options = {"seed": 2, "telemetry_s": 0.5, "sample_s": 0.2, "micropython": 1}
    async with fleet_rig(mosquitto, tmp_path, {"thermostat": 2, "shirt": 1}, **options) as r:
        fleet, gw, store, ids = r.fleet, r.gw, r.store, r.ids
        assert [p.id for p in fleet.processes] == [f"{r.prefix['thermostat']}-2"] and len(fleet.devices) == 2
        proc = fleet.processes[0]
        await async_wait_for(lambda: all(gw.is_online(i) for i in ids), 30, what="all three online")
        record = store.device(proc.id)
        assert record is not None and record.platform == "micropython"
        # the physics drives it: the temperature it reports is its room's
        await async_wait_for(lambda: store.telemetry_count(proc.id) > 2, 15, what="its telemetry")
        reported = store.telemetry(proc.id, 1)[0].data["sensors"]["temperature"]
        assert abs(reported - proc.plant.truth()["temp"]) < 0.5
        # and what it drives reaches the plant
        assert proc.plant.relay == (store.telemetry(proc.id, 1)[0].data["actuators"]["relay"] is True)
        assert fleet.summary().processes_running == 1
    assert not proc.running


def test_a_fleet_takes_its_broker_as_a_url_too(tmp_path: Path) -> None:
    """As docs/simulator.md's example gives it: a URL string is parsed."""
    from gateway.broker import BrokerUrl

    fleet = Fleet("mqtt://127.0.0.1:18830", tmp_path, models={"thermostat": 1}, in_memory=True)
    assert fleet.broker == BrokerUrl("127.0.0.1", 18830)
