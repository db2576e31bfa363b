"""`permabeta sim run` as an operator runs it: in the background beside a
gateway process, its devices trusting the update keys given (`--keys`),
taking an update; stopped by SIGTERM, or by SIGINT though the shell that
started it in the background left SIGINT ignored, always with its summary;
`--micropython` boards flashed before kept as they are. And the summary
counting the power cuts that landed during an update."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ota.keys import Keys
from simulator.fleet import Fleet

from ..support.mosquitto import Mosquitto
from ..support.processes import PERMABETA
from ..support.wait import wait_for
from .conftest import TRIAL_S, Rig


def _ignore_sigint() -> None:
    # what a non-interactive shell does for a command started with `&`
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SimRun:
    """`permabeta sim run ARGS --json` in the background, its output in a file."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.out = tmp / f"sim-{secrets.token_hex(3)}.out"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(PERMABETA), "sim", "run", *args, "--json"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_ignore_sigint,
            )

    def lines(self) -> list[str]:
        return self.out.read_text(errors="replace").splitlines()

    def broker(self) -> str:
        wait_for(lambda: any(" broker mqtt://" in line for line in self.lines()), 20, what="sim's first line")
        first = next(line for line in self.lines() if " broker mqtt://" in line)
        found = re.search(r"broker (mqtt://\S+)", first)
        assert found is not None, first
        return found.group(1)

    def stop(self, sig: int) -> dict[str, Any]:
        """Send sig; the summary it printed as it stopped."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert code == 0, self.lines()[-20:]
        summary: dict[str, Any] = json.loads(self.lines()[-1])
        return summary


def permabeta(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PERMABETA), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.long
def test_a_background_sim_run_with_keys_takes_an_update_and_sigterm_stops_it_with_its_summary(
    tmp_path: Path, keys: Keys, eco_release: Path
) -> None:
    sim = SimRun(
        tmp_path,
        *("--devices", "4", "--models", "thermostat", "--seed", "3", "--telemetry", "1"),
        *("--keys", str(keys.path), "--trial", "1", "--workdir", str(tmp_path / "w")),
    )
    db = tmp_path / "gw.db"
    gateway = subprocess.Popen(
        [
            *(str(PERMABETA), "gateway", "run", "--broker", sim.broker(), "--keys", str(keys.path)),
            *("--db", str(db), "--api", "127.0.0.1:0"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "gateway.log").open("wb"),
    )
    try:
        wait_for(lambda: sim.proc.poll() is None and db.exists(), 20, what="the gateway's database")

        def listed() -> list[dict[str, Any]]:
            done = permabeta("devices", "list", "--json", "--db", str(db))
            return json.loads(done.stdout) if done.returncode == 0 else []

        wait_for(lambda: sum(d["online"] for d in listed()) == 4, 30, what="4 devices online")
        done = permabeta("ota", "publish", str(eco_release), "--db", str(db))
        assert done.returncode == 0, done.stderr
        # the device trusts the keys it was given: it takes the update, no bad_root
        done = permabeta("devices", "update", "th-1", "thermostat@2", "--timeout", "60", "--db", str(db))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "committed" in done.stdout.splitlines()[-1]
        th1 = next(d for d in listed() if d["id"] == "th-1")
        assert th1["release"]["counter"] == 2 and th1["update"]["state"] == "committed"
        summary = sim.stop(signal.SIGTERM)
    finally:
        if sim.proc.poll() is None:
            sim.proc.kill()
        gateway.send_signal(signal.SIGINT)
        gateway.wait(20)
    assert summary["stopped"] == "signal" and summary["devices"] == 4 and summary["connected"] == 4
    assert summary["power_cuts"] == 0 and summary["power_cuts_updating"] == 0
    # each device said goodbye: the gateway saw them go offline as stopped, not lost
    store_rows = permabeta("devices", "list", "--json", "--db", str(db))
    assert not any(d["online"] for d in json.loads(store_rows.stdout))


@pytest.mark.long
def test_micropython_boards_flashed_before_are_kept_and_sigint_stops_a_background_run(tmp_path: Path) -> None:
    work = tmp_path / "w"
    args = ("--devices", "2", "--models", "thermostat", "--micropython", "1", "--workdir", str(work))
    first = SimRun(tmp_path, *args, "--duration", "3")
    assert first.proc.wait(60) == 0, first.lines()[-20:]
    assert json.loads(first.lines()[-1])["stopped"] == "duration"
    board = work / "devices" / "th-2"
    config = json.loads((board / "config.json").read_bytes())
    (board / "data").mkdir(exist_ok=True)
    (board / "data" / "kept.txt").write_text("what it recorded")
    second = SimRun(tmp_path, *args)
    port = int(second.broker().rsplit(":", 1)[1])
    wait_for(lambda: any("flashed before, kept" in line for line in second.lines()), 20, what="kept")
    wait_for(lambda: _running(second), 30, what="the board running")
    time.sleep(1.0)
    summary = second.stop(signal.SIGINT)  # ignored by default in a background process: handled here
    assert summary["stopped"] == "signal" and summary["processes"] == 1
    assert (board / "data" / "kept.txt").read_text() == "what it recorded"
    again = json.loads((board / "config.json").read_bytes())
    assert again["broker"]["port"] == port != config["broker"]["port"]  # told where the new broker is
    assert again["device"] == "th-2"


def _running(sim: SimRun) -> bool:
    return sim.proc.poll() is None and os.path.getsize(sim.out) > 0


async def test_the_summary_counts_the_power_cuts_that_land_during_an_update(
    mosquitto: Mosquitto, tmp_path: Path, rig: Rig, keys: Keys, eco_release: Path
) -> None:
    tag = secrets.token_hex(2)
    passwords: dict[str, str] = {}
    fleet = Fleet(
        mosquitto.url,
        tmp_path / "devices",
        models={"thermostat": 2},
        prefix={"thermostat": f"c{tag}"},
        passwords=lambda dev: passwords.setdefault(dev, secrets.token_urlsafe(9)),
        root=keys.root_bytes,
        trial_s=TRIAL_S,
        telemetry_s=1,
        sample_s=0.2,
        seed=4,
    )
    mosquitto.add_users(passwords)
    fleet.start()
    try:
        await fleet.wait_connected(20)
        a, b = fleet.devices
        b.power_cut(0.5)  # idle: no update under way
        fleet.faults.power_cut_at(a.id, "chunk", 0.5)  # mid-download
        u = await rig.update(a, rig.publish(eco_release), timeout=40)
        assert u.state == "committed", u
        s = fleet.summary()
        assert (s.power_cuts, s.power_cuts_updating) == (2, 1)
        assert "2 power cuts (1 during an update)" in s.line()
    finally:
        await fleet.aclose(20)
        await asyncio.sleep(0)
