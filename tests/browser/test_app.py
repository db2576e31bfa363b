"""Owners and makers using the web app in a real headless Chromium against a
real gateway, Mosquitto and simulated devices running the firmware (docs/app.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, expect

from ..gateway.conftest import Running, StartGateway
from .conftest import Shots, watch_console

pytestmark = pytest.mark.browser


@pytest.fixture
async def gw(start_gateway: StartGateway) -> AsyncIterator[Running]:
    yield await start_gateway()


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
    assert elsewhere == []
    assert [e for e in errors if "401" not in e] == []
