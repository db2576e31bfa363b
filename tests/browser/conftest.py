"""The web app in a real headless Chromium: Debian's `chromium`, driven by
Playwright (which cannot download a browser of its own here). Every page a
test looks at is kept as a screenshot in test-output/screenshots/TEST/."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

# the gateway's fixtures (a gateway in the test's loop, keys, releases)
from ..gateway.conftest import keys, make_release, start_gateway  # noqa: F401

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    # the machine's network is closed: no connection but the gateway's
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "the browser tests need Debian's chromium: apt-get install -y chromium (make browser does)"
        )
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


class Shots:
    """Screenshots of a test's pages, numbered in the order taken."""

    def __init__(self, test: str) -> None:
        self.dir = SHOTS / re.sub(r"[^A-Za-z0-9_.-]", "_", test)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.n = 0

    async def take(self, page: Page, name: str) -> Path:
        self.n += 1
        path = self.dir / f"{self.n:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    return Shots(request.node.name)


def watch_console(page: Page) -> list[str]:
    """The page's errors as they come: a test ends by asserting there were none."""
    errors: list[str] = []
    page.on(
        "console",
        lambda m: errors.append(f"{m.text} {m.location.get('url', '')}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def unexpected(errors: list[str]) -> list[str]:
    """The page's errors but the one every first visit has: the app asks
    for its session before anyone has logged in (401)."""
    return [e for e in errors if not ("status of 401" in e and e.endswith("/api/v1/session"))]
