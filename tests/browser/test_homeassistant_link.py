"""An owner shows a device in Home Assistant from its page, and takes it out
again (docs/app.md, docs/protocol.md 14), in a real headless Chromium
against a real gateway, Mosquitto and simulated thermostats: the entities'
discovery configs are retained at the broker while it is linked, and
cleared when it is not; another owner's page of it shows nothing of it."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from gateway import homeassistant as ha

from ..support.mosquitto import Mosquitto
from ..support.mqtt import TestClient
from ..support.wait import async_wait_for
from .conftest import Shots, unexpected
from .test_app import Home, home, log_in  # noqa: F401 (the fixture)

pytestmark = pytest.mark.browser


def _configs(mosquitto: Mosquitto, dev: str) -> set[str]:
    """The discovery topics of dev the broker retains, with a config on them."""
    c = TestClient(mosquitto, *mosquitto.operator())
    try:
        c.subscribe(f"homeassistant/+/pb_{dev}/+/config")
        got: set[str] = set()
        while batch := c.messages(0.5):
            got |= {t for t, payload, retain in batch if retain and payload}
        return got
    finally:
        c.close()


async def test_an_owner_shows_a_device_in_home_assistant_and_takes_it_out(
    home: Home,  # noqa: F811
    browser: Browser,
    shots: Shots,
    mosquitto: Mosquitto,
) -> None:
    dev = home.devices[0]
    page, errors = await log_in(browser, home.r.url, "ann")
    await page.goto(f"{home.r.url}/app/#/device/{dev}")
    box = page.locator("[data-homeassistant]")
    await expect(box).to_have_attribute("data-linked", "false")
    await expect(box).to_contain_text("Room temperature")  # what showing it there would share
    await page.get_by_role("button", name="Show in Home Assistant").click()
    await expect(box).to_have_attribute("data-linked", "true")
    await expect(box.locator(".ok")).to_have_text("shown in Home Assistant")
    await shots.take(page, "home-assistant-linked")
    assert home.r.gw.homeassistant.links.valid(dev) is not None
    want = {e.config_topic(dev) for e in ha.ENTITIES["thermostat"]}
    await async_wait_for(lambda: _configs(mosquitto, dev) == want, 10, what="its configs retained")

    # another owner opening its address is told there is no such device
    other, _ = await log_in(browser, home.r.url, "bob")
    await other.goto(f"{home.r.url}/app/#/device/{dev}")
    await expect(other.get_by_text(f"no device '{dev}'")).to_be_visible()
    await expect(other.locator("[data-homeassistant]")).to_have_count(0)
    await other.close()

    await page.get_by_role("button", name="Remove from Home Assistant").click()
    await expect(box).to_have_attribute("data-linked", "false")
    await expect(box.locator(".ok")).to_have_text("taken out of Home Assistant")
    await shots.take(page, "home-assistant-unlinked")
    assert home.r.gw.homeassistant.links.get(dev) is None
    assert _configs(mosquitto, dev) == set()
    assert unexpected(errors) == []
