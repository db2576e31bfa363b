"""Record and replay: a virtual shirt's telemetry, stored by a real gateway,
recorded as a trace (`permabeta sim record`), and replayed into a virtual
device running the same feature (`permabeta sim replay`): what the replay
drives matches what was recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from simulator.clock import SimClock
from simulator.trace import Comparison, Trace, TracePlant, record, replay

from ..support.wait import async_wait_for
from .conftest import MakeDevice, Rig

SPEED = 60.0


def shirt_trace(minutes: int = 60, step_s: float = 30.0) -> Trace:
    """A run: humidity climbs from 50 to 90 %RH and falls back."""
    t = Trace("sh-rec", "shirt")
    n = int(minutes * 60 / step_s)
    for i in range(n + 1):
        x = i / n
        humidity = 50 + 40 * (1 - abs(2 * x - 1))
        t.add(1_800_000_000 + i * step_s, {"sensors": {"humidity": humidity, "skin_temperature": 33.0}})
    return t


@pytest.mark.long
async def test_a_recorded_shirt_replays_to_the_same_vent_decisions(
    rig: Rig, make_device: MakeDevice, tmp_path: Path
) -> None:
    from simulator.physics import Exertion, Skin

    # a sweaty wearer on a short, hard run: humidity goes well past where
    # the vent opens, so the recording (a row every 6 s) shows it plainly
    skin = Skin(sweat_rate=0.15, exertion=Exertion(period_s=1800.0, peak=1.0))
    dev = await make_device("shirt", telemetry_s=0.1, sample_s=0.05, plant=skin)
    dev.clock.set_speed(SPEED)  # a simulated minute a second
    # (on a loaded machine the run may take longer to reach the humid part:
    # recorded until the vent has been open for a while, so that where a
    # row falls between two readings of the replay weighs little)
    await async_wait_for(
        lambda: (
            rig.gw.store.telemetry_count(dev.id) >= 150
            and sum(r["actuators"].get("vent", 0) >= 20 for r in record(rig.gw.store, dev.id).rows) >= 40
        ),
        90,
        what="telemetry of a run that opened the vent",
    )
    trace = record(rig.gw.store, dev.id)
    assert trace.model == "shirt" and len(trace.rows) >= 150
    assert all("humidity" in r["sensors"] and "vent" in r["actuators"] for r in trace.rows)
    # saved and loaded, it is the same
    trace.save(tmp_path / "run.trace")
    again = Trace.load(tmp_path / "run.trace")
    assert again.rows == trace.rows and again.device == dev.id
    # replayed into a fresh virtual shirt running the same vent feature
    result = await replay(again, tmp_path / "twin", speed=SPEED, sample_s=0.05)
    report = result.report()["vent"]
    # the same feature on the same humidity: the same decisions, but for
    # where a recorded row falls between two of the replay's readings
    assert result.samples > 80 and max(r["actuators"]["vent"] for r in trace.rows) >= 20, report
    why = (report, disagreements(trace), rig.gw.store.events(dev.id))
    assert abs(report["recorded_mean"] - report["replayed_mean"]) < 12, why
    assert report["mean_abs_diff"] < 20, why


def disagreements(trace: Trace) -> list[str]:
    """Rows where the recording's vent is not what the vent feature's own
    code makes of the recorded humidities in turn (a recording disturbed,
    say by a restart that forgot the feature's state): for a failure's
    message."""
    from firmware.features.vent import opening

    cfg = {"open_at": 65, "close_at": 55, "full_at": 80, "min_opening": 20}
    venting, out = False, []
    for r in trace.rows:
        venting, pct = opening(r["sensors"]["humidity"], venting, cfg)
        if abs(pct - r["actuators"].get("vent", 0)) >= 5:
            t, h, rec = r["t"] - trace.start, r["sensors"]["humidity"], r["actuators"].get("vent", 0)
            out.append(f"t+{t:.0f} h={h:.1f} recorded {rec}, feature {pct}")
    return out[:20]


async def test_replay_drives_the_vent_from_the_recorded_humidity(tmp_path: Path) -> None:
    result = await replay(shirt_trace(), tmp_path, speed=1800.0, sample_s=0.02)
    r = result.report()["vent"]
    # humid for a third of the run: the vent opened, not all the time
    assert result.samples > 50 and 15 < r["replayed_mean"] < 90, r
    # with the vent feature off, nothing opens
    off = await replay(shirt_trace(), tmp_path / "off", features=[], speed=1800.0, sample_s=0.02)
    assert off.report().get("vent", {}).get("replayed_mean", 0) == 0


def test_a_trace_plant_reads_the_trace_at_the_clock_s_pace() -> None:
    plant = TracePlant(shirt_trace(minutes=10, step_s=60))
    clock = SimClock(1.0, 5000.0)
    t0 = clock.now()
    assert plant.sensors(t0)["humidity"] == 50  # the first row, at the first look
    assert plant.sensors(t0 + 300)["humidity"] == 90  # five minutes in: the peak
    assert plant.sensors(t0 + 330)["humidity"] == 90  # held until the next row
    assert plant.sensors(t0 + 10_000)["humidity"] == 50  # after the end: the last row
    assert plant.done(t0 + 601) and not plant.done(t0 + 599)


def test_a_comparison_counts_agreement_and_difference() -> None:
    c = Comparison()
    c.add({"relay": True, "vent": 40}, {"relay": True, "vent": 50})
    c.add({"relay": False, "vent": 0}, {"relay": True, "vent": 0})
    r = c.report()
    assert r["relay"]["agreement"] == 0.5 and r["relay"]["replayed_mean"] == 1.0
    assert r["vent"]["mean_abs_diff"] == 5.0 and r["vent"]["recorded_mean"] == 20.0


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty"),
        ("not json\n", ":1: not a trace header"),
        ('{"trace": 7}\n', ":1: not a version 1 trace header"),
        ('{"trace": 1, "device": "a", "model": "shirt"}\n{"t": 1}\n', ":2: not a trace row"),
        ('{"trace": 1, "device": "a", "model": "shirt"}\n{"t": 1, "sensors": {"h": "x"}}\n', ":2:"),
        ('{"trace": 1, "device": "a", "model": "shirt"}\n', "holds no rows"),
    ],
)
def test_a_file_that_is_not_a_trace_is_refused_with_where(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "bad.trace"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        Trace.load(path)


def test_sim_record_and_replay_from_the_command_line(tmp_path: Path) -> None:
    from gateway.store import Store, TelemetryRow

    db = tmp_path / "gw.db"
    with Store(db) as store:
        store.upsert_hello(
            "sh-9",
            {
                "model": "shirt",
                "board": "shirt-v1",
                "runtime": "0.1.0",
                "platform": "sim",
                "features": {},
                "caps": [],
                "heap_free": 1,
                "reset_cause": "power_on",
                "boot_count": 1,
                "keepalive": 30,
                "telemetry_s": 30,
                "ota": {"counter": 0, "manifest": None, "state": "factory"},
            },
            1.0,
        )
        rows = [
            TelemetryRow(
                "sh-9", 2.0 + i, 1_800_000_000 + 30 * i, i, {"sensors": r["sensors"], "actuators": {}}
            )
            for i, r in enumerate(shirt_trace().rows)
        ]
        store.add_telemetry(rows)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "sim", *args], capture_output=True, text=True, timeout=120
        )

    out = tmp_path / "sh-9.trace"
    rec = cli("record", "sh-9", "--db", str(db), "--out", str(out))
    assert rec.returncode == 0, rec.stderr
    assert "121 rows of sh-9 (shirt), 1.0 h" in rec.stdout
    rp = cli("replay", str(out), "--speed", "1800", "--json")
    assert rp.returncode == 0, rp.stderr
    report = json.loads(rp.stdout)
    assert report["samples"] > 20 and report["actuators"]["vent"]["replayed_mean"] > 0
    missing = cli("record", "nobody", "--db", str(db), "--out", str(out))
    assert missing.returncode == 1 and "no device 'nobody'" in missing.stderr
