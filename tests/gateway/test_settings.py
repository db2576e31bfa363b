"""What the maker and the owner set of a device (docs/rollouts.md 2): the
rules of each setting, and `devices set` / `devices approve` through a
running gateway's API into its store."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.decisions import DecisionTable
from gateway.errors import SettingsError
from gateway.settings import DeviceSettings, SettingsTable, Window, changed
from ota.keys import Keys
from ota.release import Release

from ..support import messages
from ..support.cli import permabeta
from .conftest import Running, StartGateway

DAY = 86400


def test_a_window_within_the_day_and_one_across_midnight() -> None:
    night = Window.parse("22:30-05:00")
    assert (night.start, night.end, str(night)) == (22 * 60 + 30, 300, "22:30-05:00")
    midnight = 20000 * DAY  # a UTC midnight
    assert night.contains(midnight, 0) and night.contains(midnight + 4 * 3600, 0)
    assert not night.contains(midnight + 5 * 3600, 0) and not night.contains(midnight + 12 * 3600, 0)
    assert night.contains(midnight + 23 * 3600, 0)
    # local time: at 21:00 UTC it is 22:30 at UTC+01:30
    assert not night.contains(midnight + 21 * 3600, 0) and night.contains(midnight + 21 * 3600, 90)
    assert night.opens_in(midnight + 12 * 3600, 0) == 10.5 * 3600
    day = Window.parse("09:00-17:00")
    assert day.contains(midnight + 9 * 3600, 0) and not day.contains(midnight + 17 * 3600, 0)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("22:00", "a window is HH:MM-HH:MM"),
        ("24:00-01:00", "a window is HH:MM-HH:MM"),
        ("9:00-10:00", "a window is HH:MM-HH:MM"),
        ("10:00-10:00", "is empty"),
        ("10:00-11:00-12:00", "a window is HH:MM-HH:MM"),
    ],
)
def test_a_window_that_is_not_one_is_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(SettingsError, match=why):
        Window.parse(text)


@given(
    st.integers(0, 1439),
    st.integers(0, 1439),
    st.floats(0, 4e9, allow_nan=False),
    st.integers(-720, 840),
)
def test_a_window_opens_in_nothing_exactly_when_it_contains_now(
    start: int, end: int, now: float, offset: int
) -> None:
    if start == end:
        return
    w = Window(start, end)
    wait = w.opens_in(now, offset)
    assert 0 <= wait < DAY
    assert (wait == 0) == w.contains(now, offset)
    if wait > 60:  # (whole minutes: the window holds the minute it opens)
        assert w.contains(now + wait + 1, offset)


def test_settings_change_one_thing_at_a_time_and_say_what_is_wrong() -> None:
    s = DeviceSettings("th-1")
    s = changed(s, channel="beta", tag=["lab", "home"])
    assert (s.channel, s.tags) == ("beta", frozenset({"lab", "home"}))
    s = changed(s, untag=["lab"], policy="window", window="02:00-04:00")
    assert (s.tags, s.policy, str(s.window)) == (frozenset({"home"}), "window", "02:00-04:00")
    for bad, why in [
        ({"channel": "nightly"}, "channel must be one of stable, beta, canary"),
        ({"policy": "never"}, "policy must be one of auto, ask, window"),
        ({"tag": ["Lab"]}, "a tag is"),
        ({"tag": ["x" * 33]}, "a tag is"),
        ({"tag": [f"t{i}" for i in range(33)]}, "at most 32 tags"),
    ]:
        with pytest.raises(SettingsError, match=why):
            changed(s, **bad)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="the policy window needs a window"):
        changed(DeviceSettings("th-2"), policy="window")


def _register(r: Running, *devs: str) -> None:
    for dev in devs:
        r.store.upsert_hello(dev, messages.hello(dev), 1.0)


def _cli(db: Path, *words: str) -> subprocess.CompletedProcess[str]:
    return permabeta(db, "devices", *words)


async def test_devices_set_and_show_through_the_running_gateway(
    start_gateway: StartGateway, gw_db: Path | str
) -> None:
    r = await start_gateway()
    _register(r, "th-1", "th-2")
    db = gw_db
    out = await asyncio.to_thread(
        _cli, db, "set", "th-1", "--channel", "beta", "--tag", "lab", "--tag", "kitchen", "--policy", "ask"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "th-1: channel beta, tags kitchen lab, policy ask"
    out = await asyncio.to_thread(
        _cli, db, "set", "th-1", "--untag", "lab", "--policy", "window", "--window", "01:00-04:30"
    )
    assert out.returncode == 0, out.stderr
    assert "tags kitchen, policy window (01:00-04:30, the device's local time)" in out.stdout
    assert SettingsTable(r.store).get("th-2") == DeviceSettings("th-2")  # untouched
    shown = await asyncio.to_thread(_cli, db, "show", "th-1")
    assert "channel beta, tags kitchen, policy window (01:00-04:30" in shown.stdout
    shown_json = json.loads((await asyncio.to_thread(_cli, db, "show", "th-1", "--json")).stdout)
    assert shown_json["settings"]["tags"] == ["kitchen"] and shown_json["settings"]["policy"] == "window"
    # what cannot be is refused, saying why, and changes nothing
    out = await asyncio.to_thread(_cli, db, "set", "th-2", "--policy", "window")
    assert out.returncode == 1 and "the policy window needs a window" in out.stderr
    out = await asyncio.to_thread(_cli, db, "set", "th-2")
    assert out.returncode == 1 and "nothing to set" in out.stderr
    out = await asyncio.to_thread(_cli, db, "set", "nobody", "--channel", "beta")
    assert out.returncode == 1 and "no device 'nobody'" in out.stderr
    assert SettingsTable(r.store).get("th-2") == DeviceSettings("th-2")


async def test_the_settings_api_refuses_what_is_not_a_setting(start_gateway: StartGateway) -> None:
    r = await start_gateway()
    _register(r, "th-1")
    url = r.url + "/api/v1/devices/th-1/settings"
    async with aiohttp.ClientSession(headers=r.headers()) as s:
        for body, status, code, words in [
            ([], 400, "bad_request", "body must be a JSON object"),
            ({}, 400, "bad_request", "body must be a JSON object"),
            ({"owner": "x"}, 400, "bad_request", "unknown setting 'owner'"),
            ({"channel": 3}, 400, "bad_request", "'channel' must be a str"),
            ({"tag": "lab"}, 400, "bad_request", "'tag' must be a list"),
            ({"tag": [1]}, 422, "bad_setting", "a tag is"),
            ({"window": "noon"}, 422, "bad_setting", "a window is HH:MM-HH:MM"),
        ]:
            async with s.patch(url, json=body) as resp:
                err = (await resp.json())["error"]
                assert (resp.status, err["code"]) == (status, code), (body, err)
                assert words in err["message"], (body, err)
        async with s.get(url) as resp:
            assert (await resp.json())["channel"] == "stable"
        async with s.get(r.url + "/api/v1/devices/nobody/settings") as resp:
            assert resp.status == 404


async def test_an_owner_approves_a_release_of_the_device_s_model(
    start_gateway: StartGateway, gw_db: Path | str, release: Release, keys: Keys
) -> None:
    r = await start_gateway(keys)
    _register(r, "th-1")
    stored, _ = r.gw.ota.releases.add(release.path, 1.0)
    db = gw_db
    out = await asyncio.to_thread(_cli, db, "approve", "th-1", stored.ref)
    assert out.returncode == 0, out.stderr
    d = DecisionTable(r.store).get("th-1", stored.id)  # an approval is the owner's decision now
    assert d is not None and d.decision == "now"
    r.store.upsert_hello("sh-1", messages.hello("sh-1", model="shirt"), 1.0)
    out = await asyncio.to_thread(_cli, db, "approve", "sh-1", stored.ref)
    assert out.returncode == 1 and "is for thermostat, sh-1 is a shirt" in out.stderr
    out = await asyncio.to_thread(_cli, db, "approve", "th-1", "thermostat@99")
    assert out.returncode == 1
