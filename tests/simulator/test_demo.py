"""`make demo`, shortened: the embedded broker, the gateway and the fleet;
every device takes its update, and the thermostats then run eco."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re

import aiohttp
import pytest

from simulator.demo import run_demo

from ..support.wait import async_wait_for

pytestmark = pytest.mark.slow


@pytest.mark.long
async def test_demo_updates_the_fleet_and_shows_eco_at_work() -> None:
    out = io.StringIO()
    task = asyncio.create_task(run_demo(None, factory_s=1, out=out))
    try:
        await async_wait_for(lambda: "=== update done ===" in out.getvalue() or task.done(), 60)
        assert not task.done(), out.getvalue()
        text = out.getvalue()
        done = text.split("=== update done ===")[1]
        for dev in ("th-1", "th-2", "sh-1", "sh-2"):
            assert re.search(rf"= {dev}\s+committed", done), text
        assert "runs eco 1.0.0, thermostat 1.1.0" in done and "runs vent 1.1.0" in done
        # the app, with an owner of every other device to log in as
        app = re.search(r"the app: (http://\S+)/app/  owner ann \(password (\S+), owns th-1, sh-1\)", text)
        assert app, text
        async with aiohttp.ClientSession() as s:
            login = {"name": "ann", "password": app.group(2)}
            async with s.post(app.group(1) + "/api/v1/login", json=login) as resp:
                token = (await resp.json())["token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with s.get(app.group(1) + "/api/v1/devices", headers=headers) as resp:
                assert sorted(d["id"] for d in await resp.json()) == ["sh-1", "th-1"]
        # progress lines per device, one per event
        assert re.search(r"~ th-1\s+update \w+: downloading \[#+\] [\d.]+/[\d.]+ KB", text), text
        await async_wait_for(
            lambda: re.search(r"th-\d .*boost \+\d\.\d C \((cheap|dear)", out.getvalue()), 10
        )
        # weather rolled out: th-2 has no probe, weather waits there; th-1's owner plugs one in,
        # sees what th-1 could gain, asks for it, and th-1 runs it
        await async_wait_for(lambda: re.search(r"= th-1   committed thermostat 2\.1\.0", out.getvalue()), 40)
        text = out.getvalue()
        assert "= th-2   runs eco 1.0.0, thermostat 1.1.0, weather 1.0.0" in text, text
        assert "th-1   addon: plugged in: outdoor temperature probe (outdoor_temperature)" in text
        assert re.search(
            r"th-1   could gain weather 1\.0\.0 \(thermostat@\d+\): outdoor temperature probe", text
        )
        assert "runs eco 1.0.0, thermostat 1.1.0, weather 1.0.0" in text.rsplit("= th-1   committed", 1)[1]
        await async_wait_for(
            lambda: re.search(r"th-1 .*outdoors -?\d+\.\d C: on \d\.\d\d C early", out.getvalue()), 15
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
    tail = out.getvalue().rsplit("=== update done ===", 1)[1]
    for dev in ("th-1", "th-2", "sh-1", "sh-2"):
        assert f"{dev}   is offline (stop)" in tail
