"""The API's OpenAPI document (gateway/openapi.py): valid OpenAPI 3.1, the
same routes as the app, the same least roles as ACCESS, and the answers of
real calls to every route, on a real gateway and SQLite, as it describes."""

# ruff: noqa: F811  (the tests take the fixture `world` of test_api_access by its name)

from __future__ import annotations

import re
from typing import Any

import aiohttp
import jsonschema
from openapi_spec_validator import validate

from gateway import api as gw_api
from gateway.api_accounts import ACCESS
from gateway.archive import TAR_TYPE, pack_release
from gateway.openapi import OPERATIONS, document

from .conftest import MakeRelease
from .test_api_access import _BODIES, PASSWORD, World, world  # noqa: F401

_METHODS = ("get", "put", "post", "delete", "patch")
# what the sweep calls last: it ends a session, or takes a device from the others
_LAST = {
    ("DELETE", "/api/v1/session"),
    ("DELETE", "/api/v1/devices/{id}/owner"),
    ("POST", "/api/v1/devices/{id}/forget"),
}


def _documented() -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in document()["paths"].items() for m in item if m in _METHODS}


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_route_of_the_app_is_documented_and_every_operation_is_a_route() -> None:
    app = gw_api.make_app(None, "token")  # type: ignore[arg-type]
    served = {
        (r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource
    }
    assert _documented() == served == set(OPERATIONS)


def test_each_operation_says_its_least_role_and_how_to_authenticate_as_access_does() -> None:
    for (method, route), rule in ACCESS.items():
        op = document()["paths"][route][method.lower()]
        assert op["x-permabeta-role"] == (rule.role or "anyone"), (method, route)
        assert op["x-permabeta-device"] == rule.device
        if rule.role is None:
            assert op["security"] == []
        else:
            assert {"bearer": []} in op["security"], (method, route)
            cookie = {"session": [], "csrf": []} if method != "GET" else {"session": []}
            assert cookie in op["security"], (method, route)
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert params == set(re.findall(r"\{(\w+)\}", route)), route


def _check(method: str, route: str, status: int, answer: Any) -> None:
    """The answer fits what the document says of this status (any other: the error object)."""
    doc = document()
    responses = doc["paths"][route][method.lower()]["responses"]
    documented = responses.get(str(status))
    if documented is None:
        assert status >= 400, (method, route, status, answer)
        documented = responses["default"]
    schema = {"components": doc["components"], "allOf": [documented["content"]["application/json"]["schema"]]}
    try:
        jsonschema.Draft202012Validator(schema).validate(answer)
    except jsonschema.ValidationError as exc:
        raise AssertionError(
            f"{method} {route} {status}: {exc.message} at {list(exc.absolute_path)}"
        ) from None


async def test_real_answers_of_every_route_fit_the_document(world: World, make_release: MakeRelease) -> None:
    ok: set[tuple[str, str]] = set()

    async def call(
        who: str | None, method: str, route: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = (headers or {}) | ({"Authorization": f"Bearer {world.tokens[who]}"} if who else {})
        answer_type = OPERATIONS[(method, route)].answer_type
        async with world.session.request(
            method, world.r.url + path, headers=headers, allow_redirects=False, **kw
        ) as resp:
            if answer_type != "application/json" and resp.status < 400:
                # the app's files and the event stream (left open: only its start is read)
                assert answer_type in ("*/*", resp.content_type), (route, resp.content_type)
                ok.add((method, route))
                return resp.status, None
            answer = await resp.json() if resp.status != 302 else None
        if resp.status == 302:
            assert "302" in document()["paths"][route][method.lower()]["responses"]
            ok.add((method, route))
            return resp.status, None
        _check(method, route, resp.status, answer)
        if resp.status < 400:
            ok.add((method, route))
        return resp.status, answer

    # a rollout and an update first, so that the routes about them name real ones
    _, rollout = await call("mia", "POST", "/api/v1/rollouts", "/api/v1/rollouts", json={
        "release": "thermostat@2", "no_revert": True, "cohort": "model=thermostat"})  # fmt: skip
    _, update = await call(
        "mia", "POST", "/api/v1/devices/{id}/update", "/api/v1/devices/th-ann/update",
        json={"release": "thermostat@2", "force": True},
    )  # fmt: skip
    fill = {
        "id": "th-ann",
        "uid": update.get("id", "0123456789ab"),
        "ref": "thermostat@2",
        "name": "ann",
        "command": "pause",
        "tid": "0" * 12,
    }
    fill_app = {"/app/{name}": "app.js", "/app/vendor/{name}": "chart.umd.min.js"}
    rollout_id = rollout.get("rollout", {}).get("id", "r-0")
    who_for = {None: None, "owner": "ann", "maker": "mia", "admin": "root"}
    for (method, route), rule in ACCESS.items():
        if (method, route) in _LAST:
            continue  # (below, at the end)
        values = fill | ({"id": rollout_id} if route.startswith("/api/v1/rollouts/") else {})
        if route.endswith(("/registration", "/revoke", "/restore")):
            values = fill | {"id": "th-new"}  # (a device provisioned, not yet heard of)
        path = re.sub(r"\{(\w+)\}", lambda m, v=values: v[m.group(1)], route)
        if route in fill_app:
            path = route.replace("{name}", fill_app[route])
        kw: dict[str, Any] = {"json": _BODIES.get((method, route))}
        if (method, route) == ("POST", "/api/v1/releases"):
            kw = {"data": pack_release(make_release(3)), "headers": {"Content-Type": TAR_TYPE}}
        if (method, route) == ("POST", "/api/v1/claims"):
            kw["json"] = {"code": world.codes["th-ann"]}
        if (method, route) == ("PUT", "/api/v1/devices/{id}/claim-code"):
            kw["json"] = {"code": world.codes["th-ann"]}
        who = who_for[rule.role]
        if "/preview" in route:
            who = "mia"  # (an owner previews only what waits for its device: th-ann left its rollout above)
        await call(who, method, route, path, **kw)
    _, tokens = await call("ann", "GET", "/api/v1/accounts/{name}/tokens", "/api/v1/accounts/ann/tokens")
    route = "/api/v1/accounts/{name}/tokens/{tid}"
    await call("ann", "DELETE", route, f"/api/v1/accounts/ann/tokens/{tokens[-1]['id']}")
    route = "/api/v1/devices/{id}/owner"
    await call("root", "DELETE", route, "/api/v1/devices/th-bob/owner")
    route = "/api/v1/devices/{id}/forget"
    await call("ann", "POST", route, "/api/v1/devices/th-ann/forget", json={"confirm": "th-ann"})
    # a browser's session, with its cookie
    csrf = ""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        for method, body in (
            ("POST", {"name": "ann", "password": PASSWORD}),
            ("GET", None),
            ("DELETE", None),
        ):
            headers = {"X-CSRF-Token": csrf} if method == "DELETE" else {}
            async with browser.request(
                method, world.r.url + "/api/v1/session", json=body, headers=headers
            ) as resp:
                answer = await resp.json()
                _check(method, "/api/v1/session", resp.status, answer)
                csrf = answer["csrf"] if method == "POST" else csrf
                assert resp.status < 300, answer
                ok.add((method, "/api/v1/session"))
    # what cannot succeed here: a command or data choices to a device that is
    # not online, a rollback of a device no revert release was signed for, a
    # feature asked of a device with nothing to gain (tests/simulator/test_owners_say.py,
    # tests/simulator/test_streams.py, tests/simulator/test_addons.py)
    cannot = {
        ("POST", "/api/v1/devices/{id}/commands"),
        ("POST", "/api/v1/devices/{id}/gains"),
        ("POST", "/api/v1/devices/{id}/rollback"),
        ("PUT", "/api/v1/devices/{id}/streams"),
    }
    assert set(ACCESS) - ok == cannot, set(ACCESS) - ok
