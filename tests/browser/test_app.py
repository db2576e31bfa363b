"""Owners and makers using the web app in a real headless Chromium against a
real gateway, Mosquitto and simulated devices running the firmware (docs/app.md)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import secrets
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from gateway.accounts import Accounts, new_claim_code
from gateway.judge import Direction, Group, HardCounts, MetricSpec, Observation, Policy, judge
from gateway.paths import firmware_dir
from gateway.retention import Periods
from gateway.settings import SettingsTable
from gateway.tls import ApiTls
from ota.keys import Keys
from ota.release import build
from simulator.fleet import Fleet
from simulator.physics import Room
from simulator.recorded import thermostat_record

from ..gateway.conftest import Running, StartGateway
from ..support.messages import hello
from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for
from .conftest import Shots, unexpected, watch_console

pytestmark = pytest.mark.browser
PASSWORD = "correct horse battery"
RECORD_S = 2 * 86400.0
SEED = 11  # the first thermostat's room


@dataclass
class Home:
    """A gateway, three thermostats running the firmware, two owners (ann has
    the first two, bob the third) and a maker."""

    r: Running
    fleet: Fleet
    devices: list[str]


@pytest.fixture
async def gw(start_gateway: StartGateway) -> AsyncIterator[Running]:
    yield await start_gateway()


@pytest.fixture
async def home(
    start_gateway: StartGateway, mosquitto: Mosquitto, keys: Keys, tmp_path: Path
) -> AsyncIterator[Home]:
    r = await start_gateway(keys)
    passwords: dict[str, str] = {}
    prefix = f"th{secrets.token_hex(2)}"
    # the first one's room: still weather and nobody home, so that the twin
    # fits its two days whatever the date (the weather is a function of it)
    first_room = replace(Room.random(random.Random(SEED)), outside_spread=0.0, people=0, door_loss=0.0)
    fleet = Fleet(
        mosquitto.url,
        tmp_path / "devices",
        models={"thermostat": 3},
        prefix={"thermostat": prefix},
        passwords=lambda dev: passwords.setdefault(dev, secrets.token_urlsafe(9)),
        telemetry_s=1,
        sample_s=0.5,
        root=keys.root_bytes,
        trial_s=2.0,
        plants={f"{prefix}-1": first_room},
    )
    mosquitto.add_users(passwords)
    devices = [d.id for d in fleet.devices]
    # two days of the first one's past in its own room, as the gateway would
    # have recorded them: what its twin is fitted to (simulator/recorded.py);
    # the room is left at now, where the device lives on in it
    now = time.time()
    thermostat_record(
        r.store,
        devices[0],
        SEED,
        now - RECORD_S,
        RECORD_S,
        tmp_path / "past",
        room_temp=20.5,
        room=first_room,
    )
    accounts = Accounts(r.store)
    ann = accounts.create("ann", "owner", PASSWORD, 1.0)
    bob = accounts.create("bob", "owner", PASSWORD, 1.0)
    accounts.create("mia", "maker", PASSWORD, 1.0)
    for dev, who in zip(devices, (ann, ann, bob), strict=True):
        code = new_claim_code()
        accounts.register_claim(dev, code, 1.0)
        accounts.claim(who, code, 1.0)
    fleet.start()
    try:
        await async_wait_for(lambda: all(r.gw.is_online(d) for d in devices), 30, what="the fleet online")
        yield Home(r, fleet, devices)
    finally:
        await fleet.aclose(15)


async def log_in(browser: Browser, url: str, name: str) -> tuple[Page, list[str]]:
    page = await browser.new_page()
    errors = watch_console(page)
    await page.goto(url + "/app/")
    await page.get_by_label("Account").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator(f"[data-account='{name}']")).to_be_visible()
    return page, errors


async def test_the_app_loads_from_the_gateway_alone_and_asks_to_log_in(
    gw: Running, browser: Browser, shots: Shots
) -> None:
    page = await browser.new_page()
    errors = watch_console(page)
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(gw.url) else elsewhere.append(r.url))
    await page.goto(gw.url + "/")
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert await page.evaluate("typeof window.Chart") == "function"
    await shots.take(page, "login")
    await page.get_by_label("Account").fill("ann")
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_contain_text("unauthorized")
    await shots.take(page, "wrong-password")
    assert elsewhere == []
    assert [e for e in unexpected(errors) if "/api/v1/session" not in e] == []  # (the wrong password's 401)


async def test_over_https_the_session_cookie_is_secure_and_the_app_works(
    start_gateway: StartGateway, browser: Browser, shots: Shots
) -> None:
    r = await start_gateway(api_tls=ApiTls(on=True))
    assert r.url.startswith("https://")
    Accounts(r.store).create("ann", "owner", PASSWORD, 1.0)
    # (the gateway's own certificate: the browser is told to take it, as its owner would)
    context = await browser.new_context(ignore_https_errors=True)
    page = await context.new_page()
    errors = watch_console(page)
    await page.goto(r.url + "/app/")
    await page.get_by_label("Account").fill("ann")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("[data-account='ann']")).to_be_visible()
    await expect(page.get_by_text("No devices yet")).to_be_visible()
    cookies = await context.cookies()
    assert [(c["name"], c["secure"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        ("__Host-pb_session", True, True, "Strict")
    ]
    await shots.take(page, "no-devices-yet")
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert await context.cookies() == []
    assert unexpected(errors) == []


async def test_an_owner_sees_its_own_devices_live_and_another_owner_cannot(
    home: Home, browser: Browser, shots: Shots
) -> None:
    url = home.r.url
    mine, theirs = home.devices[:2], home.devices[2]
    page, errors = await log_in(browser, url, "ann")
    cards = page.locator("[data-device]")
    await expect(cards).to_have_count(2)
    assert sorted(await cards.evaluate_all("els => els.map(e => e.dataset.device)")) == sorted(mine)
    # the room's temperature arrives on the card without a reload
    room = page.locator(f"[data-device='{mine[0]}'] [data-value='sensors.temperature']")
    await expect(room).to_contain_text("°C")
    await shots.take(page, "my-devices")

    # one device: its charts grow as telemetry comes in
    await page.get_by_role("link", name=mine[0]).click()
    chart = page.locator("[data-chart='temperature']")
    await expect(chart).to_be_visible()
    await expect(page.locator("body[data-live='yes']")).to_have_count(1)
    before = float(await chart.get_attribute("data-last") or "0")
    await async_wait_for_later(chart, before + 3)
    await expect(page.locator("[data-features]")).to_contain_text("thermostat")
    await expect(page.locator("[data-features] input").first).to_be_visible()
    await shots.take(page, "device")

    # a setting typed while the charts move on (the page renders again at each message) is the one set
    hysteresis = page.locator("[data-features] form").filter(has_text="hysteresis").locator("input")
    await hysteresis.fill("0.7")
    await async_wait_for_later(chart, float(await chart.get_attribute("data-last") or "0") + 2)
    await expect(hysteresis).to_have_value("0.7")
    await hysteresis.press("Enter")
    await expect(page.locator("[data-features] ~ .ok")).to_contain_text("thermostat.hysteresis = 0.7")
    got = await home.r.gw.send_command(mine[0], "config.get", {}, 5)
    assert got["ok"] and got["result"]["thermostat"]["hysteresis"] == 0.7, got

    # the owner's policy, set from the page, is the gateway's
    await page.locator("#policy").select_option("window")
    await page.get_by_label("window").fill("01:00-05:00")
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("[data-policy] .ok")).to_be_visible()
    s = SettingsTable(home.r.store).get(mine[0])
    assert (s.policy, str(s.window)) == ("window", "01:00-05:00")

    # bob sees his device only; ann's is answered as one that does not exist
    bob, bob_errors = await log_in(browser, url, "bob")
    await expect(bob.locator("[data-device]")).to_have_count(1)
    assert await bob.locator("[data-device]").get_attribute("data-device") == theirs
    await bob.goto(f"{url}/app/#/device/{mine[0]}")
    await expect(bob.get_by_role("alert")).to_contain_text("unknown_device")
    await shots.take(bob, "another-owner-s-device")
    status = await bob.evaluate(
        """async ([dev]) => {
            const s = await (await fetch('/api/v1/session')).json();
            const r = await fetch('/api/v1/devices/' + dev + '/commands', {method: 'POST',
              headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf},
              body: JSON.stringify({op: 'reboot'})});
            return r.status;
        }""",
        [mine[0]],
    )
    assert status == 404
    assert unexpected(errors) == []
    # (ann's device, every address of it answered 404 to bob)
    refused = f"404 (Not Found) {url}/api/v1/devices/{mine[0]}"
    assert [e for e in unexpected(bob_errors) if refused not in e] == []


async def test_an_owner_keeps_a_stream_on_the_device_from_the_page(
    home: Home, browser: Browser, shots: Shots
) -> None:
    dev = home.devices[1]
    page, errors = await log_in(browser, home.r.url, "ann")
    await page.goto(f"{home.r.url}/app/#/device/{dev}")
    row = page.locator("[data-streams] [data-stream='sensors.temperature']")
    await expect(row).to_have_attribute("data-choice", "share")
    await expect(page.locator("[data-streams] [data-stream='hello']")).to_contain_text("needed to operate")
    await page.get_by_label("choice for sensors.temperature").select_option("local")
    await expect(row).to_contain_text("no twin preview")  # what it costs, before saying yes
    await page.get_by_role("button", name="Apply").click()
    await expect(page.locator("[data-streams] .ok")).to_be_visible()
    await expect(row).to_have_attribute("data-choice", "local")
    await shots.take(page, "your-data")
    d = home.r.store.device(dev)
    assert d is not None and d.hello["streams"] == {"sensors.temperature": "local"}
    since = time.time()
    await async_wait_for(
        lambda: any(r.received > since for r in home.r.store.telemetry(dev, 5)), 10, what="new telemetry"
    )
    fresh = [r for r in home.r.store.telemetry(dev, 20) if r.received > since]
    assert fresh and all("temperature" not in r.data["sensors"] for r in fresh)
    assert unexpected(errors) == []


async def test_an_owner_gives_a_stream_its_own_period_and_downloads_the_device_s_data_from_the_page(
    home: Home, browser: Browser, shots: Shots
) -> None:
    dev, store = home.devices[1], home.r.store
    await async_wait_for(lambda: store.telemetry_count(dev) >= 2, 10, what="telemetry stored")
    page, errors = await log_in(browser, home.r.url, "ann")
    await page.goto(f"{home.r.url}/app/#/device/{dev}")
    humidity = page.locator("[data-streams] [data-stream='sensors.humidity']")
    await expect(humidity.locator("[data-stored]")).not_to_have_attribute("data-stored", "0")
    # a month for the device, two days for the room's humidity, no limit for the heater
    await page.locator("#days").fill("30")
    await page.get_by_label("days kept of sensors.humidity").fill("2")
    await page.get_by_label("days kept of actuators.relay").fill("forever")
    await page.get_by_role("button", name="Keep").click()
    await expect(page.locator("[data-streams] .ok")).to_contain_text(
        "kept for 30 days; sensors.humidity: 2 days"
    )
    await expect(humidity.locator("[data-kept]")).to_have_attribute("data-kept", "2 days")
    temperature = page.locator("[data-streams] [data-stream='sensors.temperature'] [data-kept]")
    await expect(temperature).to_have_attribute("data-kept", "30 days (the device's)")
    relay = page.locator("[data-streams] [data-stream='actuators.relay'] [data-kept]")
    await expect(relay).to_have_attribute("data-kept", "kept with no limit")
    assert store.periods(dev) == Periods(30.0, {"sensors.humidity": 2.0, "actuators.relay": None})
    await shots.take(page, "periods")
    # what is not a period is refused, and changes nothing
    await page.get_by_label("days kept of sensors.humidity").fill("soon")
    # the page renders again at every live message: what the owner typed stays under their fingers
    # (the first of two new messages has reached the page when the second is stored, a second on)
    n = store.telemetry_count(dev)
    await async_wait_for(lambda: store.telemetry_count(dev) >= n + 2, 10, what="two more messages")
    await expect(page.get_by_label("days kept of sensors.humidity")).to_have_value("soon")
    await page.get_by_role("button", name="Keep").click()
    await expect(page.get_by_role("alert")).to_contain_text("bad_retention")
    assert store.periods(dev) == Periods(30.0, {"sensors.humidity": 2.0, "actuators.relay": None})

    # the export, through the page's session: everything of the device, and its periods
    async with page.expect_download() as got:
        await page.locator("[data-export='json']").click()
    download = await got.value
    assert download.suggested_filename == f"{dev}.json"
    doc = json.loads(Path(await download.path()).read_text())
    assert doc["device"] == dev and doc["since"] is not None  # (an owner's: since its claim)
    assert doc["retention"] == {
        "days": 30.0,
        "streams": {"actuators.relay": "forever", "sensors.humidity": 2.0},
    }
    rows = doc["tables"]["telemetry"]
    assert len(rows) >= 2 and {r["device"] for r in rows} == {dev}
    assert "temperature" in json.loads(rows[-1]["data"])["sensors"]
    async with page.expect_download() as got:
        await page.locator("[data-export='csv']").click()
    download = await got.value
    assert download.suggested_filename == f"{dev}.zip"
    with zipfile.ZipFile(Path(await download.path())) as zf:
        telemetry = list(csv.DictReader(io.TextIOWrapper(zf.open("telemetry.csv"), "utf-8", newline="")))
        assert len(telemetry) >= len(rows) and {r["device"] for r in telemetry} == {dev}
    assert unexpected([e for e in errors if "422 (Unprocessable Entity)" not in e]) == []


async def test_an_owner_forgets_a_device_s_data_from_the_page_once_it_types_the_device_s_id(
    home: Home, browser: Browser, shots: Shots
) -> None:
    dev, store = home.devices[1], home.r.store
    await async_wait_for(lambda: store.telemetry_count(dev) >= 2, 10, what="telemetry stored")
    page, errors = await log_in(browser, home.r.url, "ann")
    await page.goto(f"{home.r.url}/app/#/device/{dev}")
    await page.get_by_role("button", name="Forget this device's data").click()
    forget = page.get_by_role("button", name="Forget", exact=True)
    await expect(forget).to_be_disabled()
    await page.get_by_label("to confirm").fill(home.devices[0])  # (another of hers: not this one)
    await expect(forget).to_be_disabled()
    await shots.take(page, "forget-asks-for-the-id")
    assert store.telemetry_count(dev) >= 2 and not store.forgotten(dev)
    await page.get_by_label("to confirm").fill(dev)
    await forget.click()
    said = page.locator(f"[data-forgotten='{dev}']")
    await expect(said).to_contain_text(f"deleted everything it stored about {dev}")
    await expect(said).to_contain_text("telemetry")
    await expect(page.locator("main")).to_contain_text("messages kept at the broker were cleared")
    await shots.take(page, "forgotten")
    assert store.forgotten(dev) and store.telemetry_count(dev) == 0
    assert store.telemetry_count(home.devices[0]) > 0  # (hers, not forgotten, as it was)
    # it is hers no more: her devices are the other one
    await page.get_by_role("link", name="My devices").first.click()
    await expect(page.locator("[data-device]")).to_have_count(1)
    assert await page.locator("[data-device]").get_attribute("data-device") == home.devices[0]
    await shots.take(page, "my-devices-after")
    assert unexpected(errors) == []


NOTES = "Eco pre-heats while energy is cheap.\nIt publishes the hour's price and its boost."


async def test_an_owner_reads_a_waiting_update_says_yes_and_sees_it_commit_and_the_maker_follows(
    home: Home, browser: Browser, shots: Shots, keys: Keys, tmp_path: Path
) -> None:
    gw, url = home.r.gw, home.r.url
    mine = home.devices[0]
    features = firmware_dir() / "features"
    eco = build("thermostat", [features / "thermostat", features / "eco"], "2.0.0", tmp_path / "r2", 2,
                keys=keys, notes=NOTES)  # fmt: skip
    gw.ota.releases.add(eco.path, time.time())
    SettingsTable(home.r.store).save(
        replace(SettingsTable(home.r.store).get(mine), policy="ask"), time.time()
    )
    # (its heater off: an offer waits while a thermostat heats, docs/ota.md 4.3)
    done = await gw.send_command(mine, "config.set", {"feature": "thermostat", "values": {"mode": "off"}}, 5)
    assert done.get("ok"), done
    roll = gw.rollouts.create("thermostat@2", f"id={mine}", stages=(1.0,), soak_s=5, no_revert=True, seed=1)

    page, errors = await log_in(browser, url, "ann")
    await page.goto(f"{url}/app/#/device/{mine}")
    banner = page.locator("[data-offer='thermostat@2']")
    await expect(banner).to_contain_text("waits for your yes")
    await shots.take(page, "device-with-a-waiting-update")
    await banner.get_by_role("link", name="Look at it").click()
    await expect(page.locator("[data-notes]")).to_have_text(NOTES)
    await expect(page.locator("[data-changes] [data-feature='eco']")).to_contain_text("added")
    await expect(page.locator("[data-changes] [data-feature='eco']")).to_contain_text("Pre-heats")
    await expect(page.locator("[data-permissions]")).to_contain_text("publishes boost, cheap, price")
    # the preview on the device's own twin, fitted to its two days
    await expect(page.locator("[data-preview='ready']")).to_be_visible(timeout=240_000)
    await expect(page.locator("[data-heater]")).to_contain_text("rated power")
    # the heater's rated power, from its label: energy and cost too
    await page.get_by_label("rated power").fill(str(int(Room.random(random.Random(SEED)).heater_w)))
    await page.get_by_role("button", name="Preview again").click()
    await expect(page.locator("[data-preview='ready']")).to_be_visible(timeout=240_000)
    cost = page.locator("[data-preview-metrics] [data-metric='heater_cost']")
    no_figure = "\u2013"  # (a dash)
    await expect(cost.locator("td.num").first).not_to_have_text(no_figure, timeout=240_000)
    await shots.take(page, "preview")
    await expect(cost.locator("td.num")).to_have_count(3)  # today, with the update, the change
    assert "%" in await cost.locator("td.num").last.inner_text()
    await expect(page.locator("[data-fit]")).to_contain_text("fitted to its own record")
    await expect(page.locator("[data-chart='preview-temperature']")).to_be_visible()
    await shots.take(page, "waiting-update")
    assert gw.ota.active(mine) is None  # nothing goes before the owner says so

    await page.locator("[data-action='now']").click()
    await expect(page.get_by_text("It installs now.")).to_be_visible()
    await page.goto(f"{url}/app/#/device/{mine}")
    await expect(page.locator("[data-history] [data-state='committed']")).to_have_count(1, timeout=60_000)
    await expect(page.locator("[data-features]")).to_contain_text("eco")
    await shots.take(page, "device-after-the-update")

    # the maker's view of the rollout: its funnel and decisions
    maker, maker_errors = await log_in(browser, url, "mia")
    await maker.get_by_role("link", name="Rollouts").click()
    await maker.get_by_role("link", name=roll.id).click()
    await expect(maker.locator("[data-chart='funnel']")).to_be_visible()
    await expect(maker.locator("main")).to_contain_text("completed", timeout=30_000)
    await shots.take(maker, "rollout")
    await maker.get_by_role("link", name="Releases").click()
    await expect(maker.locator("[data-releases]")).to_contain_text("thermostat@2")
    await shots.take(maker, "releases")
    assert unexpected(errors) == [] and unexpected(maker_errors) == []


async def test_an_owner_plugs_in_an_outdoor_probe_and_installs_the_weather_feature_from_the_page(
    home: Home, browser: Browser, shots: Shots, keys: Keys, tmp_path: Path
) -> None:
    gw, url, mine = home.r.gw, home.r.url, home.devices[1]
    features = firmware_dir() / "features"
    weather = build(
        "thermostat", [features / "thermostat", features / "weather"], "2.1.0", tmp_path / "rw", 5, keys=keys
    )
    gw.ota.releases.add(weather.path, time.time())
    # the maker rolls it out; this device's owner is asked first (and its heater is off: an
    # offer waits while a thermostat heats, docs/ota.md 4.3)
    SettingsTable(home.r.store).save(
        replace(SettingsTable(home.r.store).get(mine), policy="ask"), time.time()
    )
    done = await gw.send_command(mine, "config.set", {"feature": "thermostat", "values": {"mode": "off"}}, 5)
    assert done.get("ok"), done
    gw.rollouts.create("thermostat@5", f"id={mine}", stages=(1.0,), soak_s=5, no_revert=True, seed=1)
    page, errors = await log_in(browser, url, "ann")
    await page.goto(f"{url}/app/#/device/{mine}")
    probe = "outdoor temperature probe (outdoor_temperature)"
    await expect(page.locator("[data-could='weather']")).to_contain_text(f"Plug in {probe} and the weather")
    home.fleet.device(mine).plug("outdoor_temperature")
    await async_wait_for(
        lambda: (
            (d := home.r.store.device(mine)) is not None and d.hello.get("addons") == ["outdoor_temperature"]
        ),
        30,
        what="the probe found",
    )
    await page.reload()
    gain = page.locator("[data-gain='weather']")
    await expect(gain).to_contain_text(
        "Outdoor temperature probe (outdoor_temperature) was plugged in: the weather"
    )
    await shots.take(page, "a-feature-to-gain")
    assert gw.ota.active(mine) is None  # nothing goes before the owner asks
    await gain.get_by_role("button", name="Install weather (thermostat@5)").click()
    await expect(page.locator("[data-gains] .ok")).to_contain_text("weather comes with thermostat@5, through")
    await expect(page.locator("[data-history] [data-state='committed']")).to_have_count(1, timeout=60_000)
    await page.reload()
    await expect(page.locator("[data-features]")).to_contain_text("weather")
    await expect(page.locator("[data-gains]")).to_contain_text("Nothing more for its hardware")
    assert unexpected(errors) == []


async def test_an_owner_who_keeps_back_what_the_twin_needs_is_told_which_stream_and_where_to_share_it(
    home: Home, browser: Browser, shots: Shots, keys: Keys, tmp_path: Path
) -> None:
    gw, url = home.r.gw, home.r.url
    mine = home.devices[0]  # (two days of a past: what the twin would be fitted to)
    features = firmware_dir() / "features"
    eco = build(
        "thermostat", [features / "thermostat", features / "eco"], "2.0.0", tmp_path / "r2", 2, keys=keys
    )
    gw.ota.releases.add(eco.path, time.time())
    table = SettingsTable(home.r.store)
    table.save(replace(table.get(mine), policy="ask"), time.time())
    gw.rollouts.create("thermostat@2", f"id={mine}", stages=(1.0,), soak_s=5, no_revert=True, seed=1)
    page, errors = await log_in(browser, url, "ann")
    await page.goto(f"{url}/app/#/device/{mine}")
    # what keeping the heater's relay back costs, said before the owner chooses it
    relay = page.locator("[data-streams] [data-stream='actuators.relay']")
    await page.get_by_label("choice for actuators.relay").select_option("local")
    await expect(relay).to_contain_text("no twin preview of updates")
    await page.get_by_role("button", name="Apply").click()
    await expect(relay).to_have_attribute("data-choice", "local")
    await page.locator("[data-offer='thermostat@2']").get_by_role("link", name="Look at it").click()
    said = page.locator("[data-preview='insufficient']")
    await expect(said).to_contain_text("No preview while its twin lacks what you keep back", timeout=120_000)
    await expect(said).to_contain_text("actuators.relay is kept on the device by the owner's choice")
    await expect(said).to_contain_text("how fast it warms the room")
    await expect(said.locator("[data-withheld]")).to_contain_text("Share actuators.relay again under")
    await shots.take(page, "preview-lacks-the-relay")
    await said.get_by_role("link", name="Your data").click()
    await expect(page.locator("[data-streams] [data-stream='actuators.relay']")).to_be_visible()
    assert unexpected(errors) == []


async def test_a_maker_sees_the_judge_s_looks_charted(
    start_gateway: StartGateway, keys: Keys, browser: Browser, shots: Shots, tmp_path: Path
) -> None:
    r = await start_gateway(keys)
    features = firmware_dir() / "features"
    rel = build(
        "thermostat", [features / "thermostat", features / "eco"], "2.0.0", tmp_path / "r2", 2, keys=keys
    )
    r.gw.ota.releases.add(rel.path, time.time())
    for i in range(3):
        r.store.upsert_hello(f"th-{i}", hello(f"th-{i}"), time.time())
    Accounts(r.store).create("mia", "maker", PASSWORD, 1.0)
    roll = r.gw.rollouts.create("thermostat@2", stages=(0.34, 1.0), no_revert=True, seed=3)
    # three looks of the judge at a stage whose devices do worse and worse
    # (gateway/judge.py, as the rollout's steps record them)
    rng = np.random.default_rng(7)
    spec = MetricSpec("comfort_deviation", Direction.LOWER, unit="K", critical=True)
    policy = Policy(looks=3)
    start = roll.stage_started
    for look, worse in ((1, 1.05), (2, 1.15), (3, 1.3)):
        treated = [worse * float(x) for x in 0.4 * rng.lognormal(0.0, 0.2, 40)]
        control = [float(x) for x in 0.4 * rng.lognormal(0.0, 0.2, 200)]
        obs = [
            Observation(f"t{i}", Group.TREATMENT, start, {spec.name: v}, start) for i, v in enumerate(treated)
        ]
        obs += [Observation(f"c{i}", Group.CONTROL, start, {spec.name: v}) for i, v in enumerate(control)]
        at = start + look * 2 * 3600
        j = judge([spec], policy, obs, HardCounts(40), look=look, now=at)
        r.gw.rollouts.table.decide(roll, at, "look", j.result.value, "; ".join(j.reasons), j.to_dict())
    page, errors = await log_in(browser, r.url, "mia")
    await page.goto(f"{r.url}/app/#/rollout/{roll.id}")
    chart = page.locator("[data-chart='judge']")
    await expect(chart).to_be_visible()
    assert int(await chart.get_attribute("data-points") or "0") == 6  # an effect and a limit per look
    await expect(page.get_by_role("heading", name="Last look: fail")).to_be_visible()
    await expect(page.locator("[data-judgement]")).to_contain_text("comfort_deviation")
    await shots.take(page, "rollout-judged")
    assert unexpected(errors) == []


async def async_wait_for_later(chart: Locator, at_least: float, timeout: float = 20) -> None:
    """Until the chart's newest point is at least at_least (a Unix time)."""

    async def last() -> float:
        return float(await chart.get_attribute("data-last") or "0")

    deadline = asyncio.get_running_loop().time() + timeout
    while (t := await last()) < at_least:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the chart's newest point is at {t}, not {at_least} or later")
        await asyncio.sleep(0.2)
