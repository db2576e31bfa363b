"""The command line's HTTP client (gateway/client.py) against real servers:
its token goes to the gateway's address alone."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.client import ApiClient, ApiError


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_a_redirect_is_not_followed_and_the_token_goes_nowhere_else() -> None:
    seen: list[str | None] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"ok": True})

    other = web.Application()
    other.router.add_get("/{tail:.*}", elsewhere)
    other_runner, other_url = await _serve(other)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(other_url + "/api/v1/devices")

    gw = web.Application()
    gw.router.add_get("/{tail:.*}", redirect)
    gw_runner, gw_url = await _serve(gw)
    try:
        client = ApiClient(gw_url, "pbt_secret")
        with pytest.raises(ApiError, match="HTTP 302"):
            await asyncio.to_thread(client.request, "GET", "/api/v1/devices")
        assert seen == []
    finally:
        await gw_runner.cleanup()
        await other_runner.cleanup()
