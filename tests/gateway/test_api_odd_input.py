"""Odd input to the gateway's HTTP API gets a 4xx with a JSON error (docs/protocol.md
10), never a 500, and never stops the gateway: one test per input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway import api
from ota.keys import Keys

from .conftest import Running, StartGateway


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call(
    s: aiohttp.ClientSession, r: Running, method: str, path: str, **kw: Any
) -> tuple[int, str, dict[str, Any]]:
    headers = r.headers() | kw.pop("headers", {})
    async with s.request(method, r.url + path, headers=headers, **kw) as resp:
        return resp.status, resp.content_type, await resp.json(content_type=None)


async def raw(r: Running, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes as they are (a client library would refuse some) and read the answer."""
    import asyncio

    u = urlsplit(r.url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def code(answer: tuple[int, str, dict[str, Any]]) -> tuple[int, str]:
    status, content_type, body = answer
    assert content_type == "application/json"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return status, body["error"]["code"]


async def test_a_bearer_token_that_is_not_ascii_is_unauthorized(start_gateway: StartGateway) -> None:
    r = await start_gateway()
    for token in ("Bearer é", "Bearer \u2028", "Bearer " + "😀" * 100):
        request = (
            f"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
        )
        status, body = await raw(r, request.encode())
        assert (status, body["error"]["code"]) == (401, "unauthorized")
    # invalid UTF-8 in the header
    request = b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
    status, body = await raw(r, request + b"Connection: close\r\n\r\n")
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert not r.task.done()


async def test_deeply_nested_json_gets_400(
    start_gateway: StartGateway, session: aiohttp.ClientSession, keys: Keys
) -> None:
    r = await start_gateway(keys)
    deep = "[" * 30000 + "]" * 30000
    for path in ("/api/v1/devices/th-1/commands", "/api/v1/devices/th-1/update"):
        assert code(await call(session, r, "POST", path, data=deep)) == (400, "bad_request")
    body = '{"op": "ping", "args": {"a": ' + "[" * 20000 + "]" * 20000 + "}}"
    assert code(await call(session, r, "POST", "/api/v1/devices/th-1/commands", data=body)) == (
        400,
        "bad_request",
    )


async def test_a_5000_digit_number_gets_400(
    start_gateway: StartGateway, session: aiohttp.ClientSession
) -> None:
    r = await start_gateway()
    n = "9" * 5000
    for body in (f'{{"op": "ping", "timeout": {n}}}', f'{{"op": "ping", "args": {{"x": {n}}}}}', n):
        answer = await call(session, r, "POST", "/api/v1/devices/th-1/commands", data=body)
        assert code(answer) == (400, "bad_request")
    answer = await call(
        session, r, "POST", "/api/v1/devices/th-1/commands", data='{"op": "ping", "timeout": NaN}'
    )
    assert code(answer) == (400, "bad_request")
    answer = await call(session, r, "GET", "/api/v1/devices/th-1/telemetry?limit=" + n)
    assert code(answer) in ((400, "bad_request"), (404, "unknown_device"))


async def test_a_release_ref_of_5000_digits_gets_404(
    start_gateway: StartGateway, session: aiohttp.ClientSession, keys: Keys
) -> None:
    r = await start_gateway(keys)
    for ref in (
        "thermostat@" + "9" * 5000,
        "thermostat@" + "9" * 19,
        "thermostat@²",
        "thermostat@-1",
        "\ud800@1",
    ):
        assert code(await call(session, r, "GET", f"/api/v1/releases/{ref}"))[0] == 404
        answer = await call(session, r, "POST", "/api/v1/devices/th-1/update", json={"release": ref})
        assert code(answer)[0] == 404
    assert not r.task.done()


async def test_a_body_over_64_kib_gets_413_as_json(
    start_gateway: StartGateway, session: aiohttp.ClientSession
) -> None:
    r = await start_gateway()
    big = json.dumps({"op": "ping", "args": {"x": "y" * api.MAX_BODY}})
    assert code(await call(session, r, "POST", "/api/v1/devices/th-1/commands", data=big)) == (
        413,
        "too_large",
    )


async def test_unknown_paths_and_methods_get_json_errors(
    start_gateway: StartGateway, session: aiohttp.ClientSession
) -> None:
    r = await start_gateway()
    assert code(await call(session, r, "GET", "/api/v1/nothing")) == (404, "not_found")
    assert code(await call(session, r, "DELETE", "/api/v1/devices")) == (405, "method_not_allowed")


async def test_a_path_that_is_not_utf8_gets_400(start_gateway: StartGateway, keys: Keys) -> None:
    r = await start_gateway(keys)
    for path in (
        b"/api/v1/devices/%ED%A0%80",
        b"/api/v1/updates/%ED%A0%80",
        b"/api/v1/devices/%ff%fe/telemetry",
    ):
        request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + r.token.encode()
        status, body = await raw(r, request + b"\r\nConnection: close\r\n\r\n")
        assert 400 <= status < 500, (path, status, body)
        assert body["error"]["code"] in ("bad_request", "unknown_device", "unknown_update"), body
    assert not r.task.done()
