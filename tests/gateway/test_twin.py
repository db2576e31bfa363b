"""The twin preview (gateway/twin/, docs/twin.md) on a simulated thermostat's
record in a real store, with real signed releases: a release that
obviously changes behaviour (eco pre-heats in the cheap hours) is
predicted to cost less for the same comfort, as the device then actually
does; a record too short is answered insufficient with the reason; the
API computes previews in the background and caches them; the command
line prints both runs side by side."""

from __future__ import annotations

import asyncio
import calendar
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.accounts import Accounts, new_claim_code
from gateway.paths import firmware_dir
from gateway.releases import ReleaseStore, StoredRelease
from gateway.store import Store
from gateway.streams import TWIN_GIVES
from gateway.twin import preview
from ota.keys import Keys
from ota.release import Release, build
from simulator.recorded import Recorded, add_command, hello, thermostat_after, thermostat_record

from ..conftest import DbAt
from ..support.cli import permabeta
from ..support.wait import async_wait_for
from .conftest import Running, StartGateway

pytestmark = pytest.mark.slow

G0 = float(calendar.timegm((2024, 1, 15, 0, 0, 0)))  # a Monday
DAY = 86400.0
# Cheap nights and a dear morning and evening, sent every day: eco pre-heats
# in the six cheap hours, and the room coasts into the dear ones.
PRICES = [6.0] * 6 + [38.0, 42.0, 40.0, 30.0] + [18.0] * 7 + [36.0, 40.0, 34.0] + [14.0] * 4
CONFIG = {"setpoint": 21.0, "hysteresis": 0.3}
HEATER_SEED = 4


def features_release(
    tmp: Path, keys: Keys, names: list[str], counter: int, extra: dict[str, str] | None = None
) -> Release:
    """A release of the factory features `names` (plus `extra`: feature
    name -> its __init__.py, a feature of its own), signed by keys."""
    src = tmp / f"src-{counter}"
    dirs = []
    for name in names:
        shutil.copytree(
            firmware_dir() / "features" / name, src / name, ignore=shutil.ignore_patterns("__pycache__")
        )
        dirs.append(src / name)
    for name, code in (extra or {}).items():
        (src / name).mkdir(parents=True)
        (src / name / "__init__.py").write_text(code)
        (src / name / "manifest.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "version": "1.0.0",
                    "api": 1,
                    "requires": ["temperature"],
                    "permissions": {"reads": ["temperature"], "drives": [], "publishes": []},
                }
            )
        )
        dirs.append(src / name)
    return build(
        "thermostat", dirs, f"2026.12.{counter}", tmp / f"release-{counter}", counter=counter, keys=keys
    )


def record(store: Store, tmp: Path, dev: str = "th-1", days: float = 2.0, **kw: Any) -> Recorded:
    data = [(G0 + d * DAY - 60, "prices", PRICES) for d in range(int(days) + 2)]
    return thermostat_record(
        store, dev, HEATER_SEED, G0, days * DAY, tmp / f"flash-{dev}", config=CONFIG, data=data, **kw
    )


def truth_metrics(rec: Recorded, rows: list[tuple[float, dict[str, Any]]], heater_w: float) -> dict[str, Any]:
    """What the device did, measured as the twin measures its runs."""
    from gateway.twin import history, room

    h = history.History(rec.device, "thermostat", None, 0, 10.0, {}, None, [], rows)
    for t, key, value in rec.data:
        h.commands.append(history.Command(t, "data.set", {"key": key, "value": value}, {"key": key}))
    s = room.series(h)
    band = {"setpoint": CONFIG["setpoint"], "schedule": [], "below": room.BELOW_K, "above": room.ABOVE_K}
    return preview._thermostat_metrics(preview._recorded_hours(s, band, 0), preview._prices(h), heater_w, 0)


@pytest.fixture
def eco_world(
    tmp_path: Path, db_at_slow: DbAt, keys: Keys
) -> tuple[Store, ReleaseStore, Recorded, StoredRelease]:
    store = Store(db_at_slow())
    releases = ReleaseStore(store, root=keys.root_bytes)
    eco, _ = releases.add(features_release(tmp_path, keys, ["thermostat", "eco"], 5).path, G0)
    rec = record(store, tmp_path)
    return store, releases, rec, eco


def test_eco_shifting_heat_to_cheap_hours_is_predicted_to_cost_less_for_the_same_comfort(
    eco_world: tuple[Store, ReleaseStore, Recorded, StoredRelease], tmp_path: Path
) -> None:
    store, releases, rec, eco = eco_world
    heater_w = rec.room.heater_w  # (the heater's nameplate: the one figure the owner gives)
    answer = preview.compute(preview.gather(store, releases, "th-1", eco, heater_w))
    assert answer["state"] == "ready", answer.get("reasons")
    assert answer["current"]["ref"] == "factory" and answer["candidate"]["ref"] == "thermostat@5"
    assert answer["fit"]["quality"]["ok"]
    m = answer["metrics"]
    # the preview points the right way: cheaper, as comfortable
    assert m["heater_cost"]["candidate"] < m["heater_cost"]["current"] * 0.99
    assert abs(m["minutes_outside_band"]["change"]) <= max(30.0, 0.1 * m["minutes_outside_band"]["current"])
    # eco heats a little more (a warmer room loses more), but in cheap hours
    assert m["heater_energy_kwh"]["change"] > 0
    # ... as the device then does, running eco in the same room and days
    rows, _ = thermostat_after(rec, tmp_path / "after", _features(tmp_path, ["thermostat", "eco"]))
    actual = truth_metrics(rec, rows, heater_w)
    assert actual["heater_cost"] < m["heater_cost"]["current"]
    for name in ("heater_cost", "heater_energy_kwh", "heater_hours"):
        assert m[name]["candidate"] == pytest.approx(actual[name], rel=0.05), name
    # the conditions nobody measured were estimated, and shown
    assert answer["conditions"]["outdoor"]["source"] == "estimated"
    assert answer["conditions"]["settings"]["source"] == "estimated"
    assert answer["conditions"]["settings"]["thermostat"]["hysteresis"] == pytest.approx(0.3, abs=0.05)
    series = answer["series"]
    assert (
        len(series["t"]) == len(series["current"]["temperature"]) == len(series["candidate"]["heater_duty"])
    )
    assert 40 <= len(series["t"]) <= 50


def _features(tmp: Path, names: list[str]) -> Path:
    out = tmp / ("features-" + "-".join(names))
    for name in names:
        shutil.copytree(
            firmware_dir() / "features" / name, out / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return out


def test_a_record_too_short_is_answered_insufficient_with_the_reason(
    tmp_path: Path, db_at_slow: DbAt, keys: Keys
) -> None:
    store = Store(db_at_slow())
    releases = ReleaseStore(store, root=keys.root_bytes)
    eco, _ = releases.add(features_release(tmp_path, keys, ["thermostat", "eco"], 5).path, G0)
    record(store, tmp_path, days=0.25)
    answer = preview.compute(preview.gather(store, releases, "th-1", eco, 3000.0))
    assert answer["state"] == "insufficient"
    assert "6.0 h of temperature telemetry; the twin needs at least 24 h" in answer["reason"]
    assert "metrics" not in answer


def test_a_release_the_gateway_root_did_not_sign_is_not_run(
    tmp_path: Path, db_at_slow: DbAt, keys: Keys
) -> None:
    from ota.keys import keygen

    store = Store(db_at_slow())
    releases = ReleaseStore(store, root=keys.root_bytes)
    eco, _ = releases.add(features_release(tmp_path, keys, ["thermostat", "eco"], 5).path, G0)
    record(store, tmp_path, days=0.25)
    other = ReleaseStore(store, root=keygen(tmp_path / "other-keys").root_bytes)
    with pytest.raises(preview.Failed, match="does not verify as a device would"):
        preview.gather(store, other, "th-1", eco, None)


# ---- through the gateway: the background worker, the cache, the API, the CLI -------


async def _wait_done(r: Running, s: aiohttp.ClientSession, ref: str, timeout: float = 240) -> dict[str, Any]:
    answer: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal answer
        async with s.get(f"{r.url}/api/v1/devices/th-1/preview/{ref}", headers=r.headers()) as resp:
            answer = await resp.json()
        return answer["state"] != "computing"

    deadline = asyncio.get_running_loop().time() + timeout
    while not await done():
        assert asyncio.get_running_loop().time() < deadline, answer
        await asyncio.sleep(0.5)
    return answer


async def test_the_api_computes_a_preview_in_the_background_and_caches_it(
    start_gateway: StartGateway, keys: Keys, tmp_path: Path
) -> None:
    r = await start_gateway(keys)
    r.gw.ota.releases.add(features_release(tmp_path, keys, ["thermostat", "eco"], 5).path, G0)
    rec = record(r.store, tmp_path)
    async with aiohttp.ClientSession() as s:
        url = f"{r.url}/api/v1/devices/th-1/preview"
        async with s.post(
            url, json={"release": "thermostat@5", "heater_w": 2500}, headers=r.headers()
        ) as resp:
            assert resp.status == 202
            first = await resp.json()
        assert first["state"] == "computing" and first["release"]["ref"] == "thermostat@5"
        assert first["heater_w"] == 2500
        answer = await _wait_done(r, s, "thermostat@5")
        assert answer["state"] == "ready", answer.get("reason")
        assert set(answer) >= {"device", "release", "state", "requested", "finished", "current", "candidate",
                               "record", "fit", "conditions", "metrics", "series"}  # fmt: skip
        assert answer["metrics"]["heater_energy_kwh"]["current"] > 0
        # asked again: the cached one, at once
        async with s.post(url, json={"release": "thermostat@5"}, headers=r.headers()) as resp:
            assert resp.status == 200
            assert (await resp.json())["finished"] == answer["finished"]
        async with s.get(f"{url}s", headers=r.headers()) as resp:
            listed = await resp.json()
        assert [(p["release"]["ref"], p["state"]) for p in listed] == [("thermostat@5", "ready")]
        # the command line prints both runs side by side
        out = await asyncio.to_thread(permabeta, r.store.where, "devices", "preview", "th-1", "thermostat@5")
        assert out.returncode == 0, out.stderr
        assert "now (factory)" in out.stdout and "with thermostat@5" in out.stdout
        assert "heater cost (price x kWh)" in out.stdout
        # odd requests
        for body, status, code in (
            ({"release": "thermostat@9"}, 404, "unknown_release"),
            ({"release": "thermostat@5", "heater_w": -1}, 422, "bad_setting"),
            ({"release": "thermostat@5", "heater_w": 10**400}, 422, "bad_setting"),
            ({"release": "thermostat@5", "colour": "red"}, 400, "bad_request"),
            ({}, 400, "bad_request"),
        ):
            async with s.post(url, json=body, headers=r.headers()) as resp:
                assert (resp.status, (await resp.json())["error"]["code"]) == (status, code), body
        async with s.get(f"{url}/thermostat@9", headers=r.headers()) as resp:
            assert resp.status == 404
    assert rec.device == "th-1"


@pytest.mark.long
async def test_a_release_whose_feature_spins_fails_its_preview_and_the_gateway_goes_on(
    start_gateway: StartGateway, keys: Keys, tmp_path: Path
) -> None:
    from gateway.twin.sandbox import Limits

    r = await start_gateway(keys)
    r.gw.twin.limits = Limits(cpu_s=3, wall_s=20.0)
    spin = "def start(ctx):\n    while True:\n        pass\n"
    r.gw.ota.releases.add(features_release(tmp_path, keys, ["thermostat"], 6, {"spin": spin}).path, G0)
    r.gw.ota.releases.add(features_release(tmp_path, keys, ["thermostat", "eco"], 7).path, G0)
    record(r.store, tmp_path)
    async with aiohttp.ClientSession() as s:
        url = f"{r.url}/api/v1/devices/th-1/preview"
        async with s.post(url, json={"release": "thermostat@6"}, headers=r.headers()) as resp:
            assert resp.status == 202
        answer = await _wait_done(r, s, "thermostat@6")
        assert answer["state"] == "failed"
        assert "used more than 3 s of CPU and was stopped" in answer["reason"]
        async with s.get(f"{r.url}/api/v1/health") as resp:
            assert resp.status == 200
        async with s.post(url, json={"release": "thermostat@7"}, headers=r.headers()) as resp:
            assert resp.status == 202
        assert (await _wait_done(r, s, "thermostat@7"))["state"] == "ready"
    await async_wait_for(lambda: r.gw.twin.computed == 2, 5, what="both previews computed")


# ---- shirts ---------------------------------------------------------------------------


def test_a_vent_that_opens_wider_early_is_predicted_to_keep_the_skin_drier(
    tmp_path: Path, db_at_slow: DbAt, keys: Keys
) -> None:
    from simulator.recorded import shirt_after, shirt_record

    src = tmp_path / "eager"
    shutil.copytree(
        firmware_dir() / "features" / "vent", src / "vent", ignore=shutil.ignore_patterns("__pycache__")
    )
    (src / "vent" / "curve.py").write_text("POINTS = ((0.0, 0.0), (0.4, 0.8), (1.0, 1.0))\n")
    manifest = json.loads((src / "vent" / "manifest.json").read_text())
    (src / "vent" / "manifest.json").write_text(json.dumps(manifest | {"version": "1.1.0"}))
    store = Store(db_at_slow())
    releases = ReleaseStore(store, root=keys.root_bytes)
    rel = build("shirt", [src / "vent"], "2026.12.2", tmp_path / "release", counter=2, keys=keys)
    eager, _ = releases.add(rel.path, G0)
    rec = shirt_record(store, "sh-1", 3, G0, 6 * 3600.0, tmp_path / "flash")
    answer = preview.compute(preview.gather(store, releases, "sh-1", eager, None))
    assert answer["state"] == "ready", answer.get("reasons")
    m = answer["metrics"]
    assert m["minutes_above_threshold"]["candidate"] < m["minutes_above_threshold"]["current"]
    assert m["vent_open_hours"]["candidate"] > m["vent_open_hours"]["current"]
    assert answer["conditions"]["exertion"]["period_min"] == pytest.approx(
        rec.skin.exertion.period_s / 60, rel=0.01
    )
    # ... as the shirt then does
    from gateway.twin import history, skin

    rows, _ = shirt_after(rec, tmp_path / "after", src)
    h = history.History("sh-1", "shirt", None, 0, 10.0, {}, None, [], rows)
    actual = preview._shirt_metrics(preview._shirt_recorded_hours(skin.series(h)))
    assert m["vent_open_hours"]["candidate"] == pytest.approx(actual["vent_open_hours"], rel=0.05)
    assert m["minutes_above_threshold"]["candidate"] == pytest.approx(
        actual["minutes_above_threshold"], rel=0.15
    )


# ---- settings ---------------------------------------------------------------------------


def test_only_the_settings_the_owner_changed_carry_over_so_a_release_s_new_default_applies() -> None:
    manifest = {
        "config": {"setpoint": {"default": 21.0}, "hysteresis": {"default": 0.3}, "mode": {"default": "heat"}}
    }
    current = preview.FeatureSet(
        "factory", None, {}, {"features/thermostat/manifest.json": json.dumps(manifest).encode()}
    )
    estimated = {"thermostat": {"setpoint": 22.0, "hysteresis": 0.31, "mode": "heat"}}
    assert preview._owner_settings(estimated, current, preview.TOLERANCE) == {
        "thermostat": {"setpoint": 22.0}
    }
    replied = {"thermostat": {"setpoint": 21.0, "hysteresis": 0.5, "mode": "heat"}}
    assert preview._owner_settings(replied, current, {}) == {"thermostat": {"hysteresis": 0.5}}


def test_settings_the_device_replied_are_used_rather_than_estimated(
    tmp_path: Path, db_at_slow: DbAt, keys: Keys
) -> None:
    from simulator.recorded import add_command

    store = Store(db_at_slow())
    releases = ReleaseStore(store, root=keys.root_bytes)
    eco, _ = releases.add(features_release(tmp_path, keys, ["thermostat", "eco"], 5).path, G0)
    record(store, tmp_path)
    replied = {"setpoint": 21.0, "hysteresis": 0.3, "mode": "heat", "schedule": []}
    add_command(store, "th-1", G0 - 3600, "config.get", {"feature": "thermostat"}, {"thermostat": replied})
    answer = preview.compute(preview.gather(store, releases, "th-1", eco, 2000.0))
    assert answer["state"] == "ready"
    assert answer["conditions"]["settings"] == {"source": "device", "thermostat": replied}


async def test_a_preview_left_computing_by_a_stopped_gateway_is_computed_when_it_starts(
    start_gateway: StartGateway, keys: Keys, tmp_path: Path, db_at_slow: DbAt
) -> None:
    store = Store(db_at_slow())
    rel, _ = ReleaseStore(store, root=keys.root_bytes).add(
        features_release(tmp_path, keys, ["thermostat", "eco"], 5).path, G0
    )
    record(store, tmp_path)
    store.db.execute(
        "INSERT INTO twin_previews (device, release, state, requested) VALUES ('th-1', ?, 'computing', 1.0)",
        (rel.id,),
    )
    store.close()
    r = await start_gateway(keys, db=db_at_slow())
    await async_wait_for(lambda: r.gw.twin.computed == 1, 120, what="the preview computed")
    row = r.gw.twin.row("th-1", rel.id)
    assert row is not None and row.state == "ready"


def test_settings_an_owner_changed_during_the_record_are_taken_as_they_were_at_its_start(
    eco_world: tuple[Store, ReleaseStore, Recorded, StoredRelease],
) -> None:
    store, releases, rec, eco = eco_world
    # the owner turned the heating off at the record's end, and the device said so
    values = {"feature": "thermostat", "values": {"mode": "off"}}
    reply = {"thermostat": {"setpoint": 21.0, "hysteresis": 0.3, "mode": "off", "schedule": []}}
    add_command(store, "th-1", rec.start + rec.seconds - 5.0, "config.set", values, reply)
    answer = preview.compute(preview.gather(store, releases, "th-1", eco, rec.room.heater_w))
    assert answer["state"] == "ready", answer.get("reasons")
    settings = answer["conditions"]["settings"]
    assert settings["source"] == "device"
    # heating while the record ran: the twin redoes it (a twin run with `off` would not heat)
    assert settings["thermostat"]["mode"] == "heat" and settings["thermostat"]["hysteresis"] == 0.3
    assert answer["fit"]["check"]["error"] is not None and abs(answer["fit"]["check"]["error"]) < 0.25


async def test_an_owner_previews_only_a_release_that_waits_for_its_device(
    start_gateway: StartGateway, keys: Keys, tmp_path: Path
) -> None:
    r = await start_gateway(keys)
    r.gw.ota.releases.add(features_release(tmp_path, keys, ["thermostat", "eco"], 5).path, G0)
    r.store.upsert_hello("th-1", hello("th-1"), G0)
    accounts = Accounts(r.store)
    ann = accounts.create("ann", "owner", None, 1.0)
    code = new_claim_code()
    accounts.register_claim("th-1", code, 1.0)
    accounts.claim(ann, code, 1.0)
    headers = {"Authorization": f"Bearer {accounts.issue_token(ann, 'test', 1.0)}"}
    url = f"{r.url}/api/v1/devices/th-1/preview"
    async with aiohttp.ClientSession() as s:
        # stored, but offered to nobody: not to be seen, nor its code run, at an owner's asking
        async with s.post(url, json={"release": "thermostat@5"}, headers=headers) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (404, "unknown_release")
        assert r.store.db.execute("SELECT count(*) FROM twin_previews").fetchone()[0] == 0
        # once a rollout offers it to the device, the owner may look first
        r.gw.rollouts.create("thermostat@5", "id=th-1", stages=(1.0,), no_revert=True, seed=1)
        async with s.post(url, json={"release": "thermostat@5"}, headers=headers) as resp:
            assert resp.status == 202, await resp.json()


def test_a_stream_the_twin_needs_kept_back_is_named_with_what_sharing_it_would_give(
    eco_world: tuple[Store, ReleaseStore, Recorded, StoredRelease],
) -> None:
    store, releases, rec, eco = eco_world
    # (the humidity is not what the twin is fitted from: keeping it back costs the preview nothing)
    store.set_withheld("th-1", {"actuators.relay": "local", "sensors.humidity": "off"})
    answer = preview.compute(preview.gather(store, releases, "th-1", eco, rec.room.heater_w))
    assert answer["state"] == "insufficient" and "metrics" not in answer
    assert answer["withheld"] == [
        {"stream": "actuators.relay", "choice": "local", "gives": TWIN_GIVES["actuators.relay"]}
    ]
    assert answer["reasons"] == [
        "actuators.relay is kept on the device by the owner's choice: shared, it would give the twin when "
        "the heater ran, from which the twin learns how fast it warms the room, and this preview its numbers"
    ]
    assert answer["record"]["rows"] > 0  # (a record there is: the owner's choice is what the twin follows)
    store.set_withheld("th-1", {"sensors.temperature": "off", "actuators.relay": "local"})
    answer = preview.compute(preview.gather(store, releases, "th-1", eco, rec.room.heater_w))
    assert [w["stream"] for w in answer["withheld"]] == ["sensors.temperature", "actuators.relay"]
    assert answer["reason"].startswith(
        "sensors.temperature is off by the owner's choice: shared, it would give"
    )


async def test_the_api_and_the_command_line_name_the_stream_kept_back_and_sharing_it_asks_anew(
    start_gateway: StartGateway, keys: Keys, tmp_path: Path
) -> None:
    r = await start_gateway(keys)
    r.gw.ota.releases.add(features_release(tmp_path, keys, ["thermostat", "eco"], 5).path, G0)
    record(r.store, tmp_path)
    r.store.set_withheld("th-1", {"sensors.temperature": "local"})
    url = f"{r.url}/api/v1/devices/th-1/preview"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json={"release": "thermostat@5"}, headers=r.headers()) as resp:
            assert resp.status == 202
        answer = await _wait_done(r, s, "thermostat@5")
        assert answer["state"] == "insufficient"
        assert answer["reason"].startswith("sensors.temperature is kept on the device by the owner's choice")
        assert [w["stream"] for w in answer["withheld"]] == ["sensors.temperature"]
        out = await asyncio.to_thread(permabeta, r.store.where, "devices", "preview", "th-1", "thermostat@5")
        assert out.returncode == 1
        assert "no numbers: the twin lacks what the device keeps back:" in out.stdout
        assert "the room's temperature, the twin of the room is fitted to it" in out.stdout
        assert "share it again: permabeta devices streams th-1 sensors.temperature=share" in out.stdout
        # asked again while kept back: the same answer; once shared again, computed anew
        async with s.post(url, json={"release": "thermostat@5"}, headers=r.headers()) as resp:
            assert resp.status == 200 and (await resp.json())["finished"] == answer["finished"]
        r.store.set_withheld("th-1", {})
        async with s.post(url, json={"release": "thermostat@5"}, headers=r.headers()) as resp:
            assert resp.status == 202 and (await resp.json())["state"] == "computing"


def test_an_outdoor_probe_gives_the_twin_the_measured_weather_and_it_previews_the_weather_feature(
    tmp_path: Path, db_at_slow: DbAt, keys: Keys
) -> None:
    """A thermostat with an outdoor probe plugged in (docs/protocol.md 13):
    the twin is fitted to the outdoor temperature it measured, not an
    estimate, and runs the weather feature with the probe, as the device
    then does."""
    store = Store(db_at_slow())
    releases = ReleaseStore(store, root=keys.root_bytes)
    weather, _ = releases.add(features_release(tmp_path, keys, ["thermostat", "weather"], 6).path, G0)
    rec = record(store, tmp_path, addons=["outdoor_temperature"])
    heater_w = rec.room.heater_w
    inp = preview.gather(store, releases, "th-1", weather, heater_w)
    assert preview.plugged(inp) == ["outdoor_temperature"]
    answer = preview.compute(inp)
    assert answer["state"] == "ready", answer.get("reasons")
    assert answer["conditions"]["outdoor"]["source"] == "sensor"
    m = answer["metrics"]
    rows, _ = thermostat_after(rec, tmp_path / "after", _features(tmp_path, ["thermostat", "weather"]))
    assert all("weather" in r["features"] for _, r in rows[-10:])  # (it ran, with the probe)
    actual = truth_metrics(rec, rows, heater_w)
    for name in ("heater_energy_kwh", "heater_hours"):
        assert m[name]["candidate"] == pytest.approx(actual[name], rel=0.05), name
    assert abs(m["minutes_outside_band"]["candidate"] - actual["minutes_outside_band"]) <= max(
        30.0, 0.1 * actual["minutes_outside_band"]
    )
