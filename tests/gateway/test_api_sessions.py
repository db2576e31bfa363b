"""Browsers' sessions (gateway/api_sessions.py, docs/protocol.md 10.1,
docs/security.md 5.3) against a real gateway and SQLite: a cookie made at
login, CSRF and Origin checks on what may change something, logout, idle
and maximum age, the same rules of access as a token, and the headers every
answer carries."""

# ruff: noqa: F811  (the tests take the fixture `world` of test_api_access by its name)

from __future__ import annotations

from typing import Any

from gateway.accounts import Accounts
from gateway.api_accounts import ACCESS, LOGIN_TRIES
from gateway.sessions import IDLE_S, MAX_AGE_S, Sessions
from gateway.store import SCHEMA_VERSION, Store

from ..conftest import DbAt
from ..support.schema import as_of
from .test_api_access import _BODIES, PASSWORD, World, _path, world  # noqa: F401

SESSION = "/api/v1/session"


async def _login(world: World, name: str, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """(the session's cookie, its CSRF token)."""
    async with world.session.post(
        world.r.url + SESSION, json={"name": name, "password": PASSWORD}, headers=headers
    ) as resp:
        assert resp.status == 201, await resp.text()
        answer = await resp.json()
        return resp.cookies["pb_session"].value, answer["csrf"]


async def _call(
    world: World,
    method: str,
    path: str,
    cookie: str,
    csrf: str | None = None,
    body: Any = None,
    **headers: str,
) -> tuple[int, Any]:
    h = {"Cookie": f"pb_session={cookie}", **headers}
    if csrf is not None:
        h["X-CSRF-Token"] = csrf
    async with world.session.request(method, world.r.url + path, json=body, headers=h) as resp:
        return resp.status, await resp.json()


async def test_a_login_sets_a_strict_http_only_cookie_and_gives_the_csrf_token(world: World) -> None:
    async with world.session.post(world.r.url + SESSION, json={"name": "ann", "password": PASSWORD}) as resp:
        assert resp.status == 201
        answer = await resp.json()
        (set_cookie,) = resp.headers.getall("Set-Cookie")
    assert answer["account"] == "ann" and answer["role"] == "owner" and len(answer["csrf"]) >= 40
    attributes = {a.strip().split("=")[0].lower() for a in set_cookie.split(";")[1:]}
    assert set_cookie.startswith("pb_session=pbs_")
    assert {
        "httponly",
        "samesite",
        "path",
        "max-age",
    } <= attributes and "secure" not in attributes  # plain HTTP
    assert "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
    cookie = set_cookie.split(";")[0].split("=", 1)[1]
    status, shown = await _call(world, "GET", SESSION, cookie)
    assert status == 200 and shown["csrf"] == answer["csrf"] and shown["account"] == "ann"
    status, me = await _call(world, "GET", "/api/v1/me", cookie)
    assert (status, me["name"], me["devices"]) == (200, "ann", ["th-ann"])
    # the database holds the cookie's hash only
    stored = [r[0] for r in world.r.store.db.execute("SELECT hash FROM account_sessions")]
    assert len(stored) == 1 and cookie not in stored[0]


async def test_a_session_s_change_needs_its_csrf_token(world: World) -> None:
    cookie, csrf = await _login(world, "ann")
    path, body = "/api/v1/devices/th-ann/settings", {"policy": "ask"}
    before = world.state()
    for given in (None, "", "x" * 43, csrf[:-1], csrf + "x"):
        status, answer = await _call(world, "PATCH", path, cookie, given, body)
        assert (status, answer["error"]["code"]) == (403, "csrf"), given
    assert world.state() == before
    status, answer = await _call(world, "PATCH", path, cookie, csrf, body)
    assert status == 200 and answer["policy"] == "ask"


async def test_another_origin_is_refused_even_with_the_csrf_token(world: World) -> None:
    cookie, csrf = await _login(world, "ann")
    before = world.state()
    status, answer = await _call(
        world,
        "PATCH",
        "/api/v1/devices/th-ann/settings",
        cookie,
        csrf,
        {"policy": "ask"},
        Origin="https://evil.example",
    )
    assert (status, answer["error"]["code"]) == (403, "csrf")
    async with world.session.post(
        world.r.url + SESSION,
        json={"name": "ann", "password": PASSWORD},
        headers={"Origin": "http://evil.example"},
    ) as resp:
        assert resp.status == 403 and "Set-Cookie" not in resp.headers
    assert world.state() == before
    status, _ = await _call(
        world, "PATCH", "/api/v1/devices/th-ann/settings", cookie, csrf, {"policy": "ask"}, Origin=world.r.url
    )
    assert status == 200


async def test_a_cookie_of_a_logged_out_session_is_unauthorized(world: World) -> None:
    cookie, csrf = await _login(world, "ann")
    status, answer = await _call(world, "DELETE", SESSION, cookie)
    assert (status, answer["error"]["code"]) == (403, "csrf")  # a logout is a change: CSRF too
    async with world.session.delete(
        world.r.url + SESSION, headers={"Cookie": f"pb_session={cookie}", "X-CSRF-Token": csrf}
    ) as resp:
        assert (resp.status, await resp.json()) == (200, {"account": "ann", "ended": True})
        assert "pb_session=" in resp.headers["Set-Cookie"] and "Max-Age=0" in resp.headers["Set-Cookie"]
    for method, path in (("GET", "/api/v1/me"), ("GET", SESSION), ("GET", "/api/v1/devices/th-ann")):
        status, answer = await _call(world, method, path, cookie, csrf)
        assert (status, answer["error"]["code"]) == (401, "unauthorized"), path
    assert world.r.store.db.execute("SELECT count(*) FROM account_sessions").fetchone()[0] == 0


async def test_an_idle_session_and_one_past_its_maximum_age_have_ended(world: World) -> None:
    db = world.r.store.db
    idle, _ = await _login(world, "ann")
    old, _ = await _login(world, "bob")
    db.execute("UPDATE account_sessions SET last_seen = last_seen - ? WHERE account = "
               "(SELECT id FROM accounts WHERE name = 'ann')", (IDLE_S + 1,))  # fmt: skip
    # bob's is used all along, but was made longer ago than the maximum age
    db.execute("UPDATE account_sessions SET created = created - ? WHERE account = "
               "(SELECT id FROM accounts WHERE name = 'bob')", (MAX_AGE_S + 1,))  # fmt: skip
    for cookie in (idle, old):
        status, answer = await _call(world, "GET", "/api/v1/me", cookie)
        assert (status, answer["error"]["code"]) == (401, "unauthorized")
    assert db.execute("SELECT count(*) FROM account_sessions").fetchone()[0] == 0
    fresh, _ = await _login(world, "ann")
    status, _ = await _call(world, "GET", "/api/v1/me", fresh)
    assert status == 200


async def test_a_session_of_an_owner_reaches_only_its_own_devices(world: World) -> None:
    cookie, csrf = await _login(world, "ann")
    before = world.state()
    for (method, route), rule in ACCESS.items():
        if not rule.device:
            continue
        status, answer = await _call(world, method, _path(route), cookie, csrf, _BODIES.get((method, route)))
        expected = (404, "unknown_device") if rule.role == "owner" else (403, "forbidden")
        assert (status, answer["error"]["code"]) == expected, (method, route, answer)
    assert world.state() == before
    status, devices = await _call(world, "GET", "/api/v1/devices", cookie)
    assert [d["id"] for d in devices] == ["th-ann"]
    status, answer = await _call(world, "GET", "/api/v1/accounts", cookie)
    assert (status, answer["error"]["code"]) == (403, "forbidden")


async def test_the_gateway_s_own_token_is_never_taken_from_a_cookie(world: World) -> None:
    for name in ("pb_session", "__Host-pb_session"):
        async with world.session.get(
            world.r.url + "/api/v1/accounts", headers={"Cookie": f"{name}={world.tokens['gateway']}"}
        ) as resp:
            assert resp.status == 401
    # nor an account's API token
    status, _ = await _call(world, "GET", "/api/v1/me", world.tokens["root"])
    assert status == 401


async def test_a_bearer_token_needs_no_csrf_token_and_is_not_a_session(world: World) -> None:
    status, answer = await world.call("ann", "PATCH", "/api/v1/devices/th-ann/settings", {"policy": "ask"})
    assert status == 200, answer
    status, answer = await world.call("ann", "GET", SESSION)
    assert (status, answer["error"]["code"]) == (401, "unauthorized")


async def test_sessions_and_token_logins_share_the_limit_on_wrong_passwords(world: World) -> None:
    for i in range(LOGIN_TRIES):
        path = SESSION if i % 2 else "/api/v1/login"
        status, _ = await world.call(None, "POST", path, {"name": "bob", "password": "guess-guess"})
        assert status == 401
    for path in (SESSION, "/api/v1/login"):
        status, answer = await world.call(None, "POST", path, {"name": "bob", "password": PASSWORD})
        assert (status, answer["error"]["code"]) == (429, "rate_limited")


async def test_odd_session_logins_are_refused_clearly(world: World) -> None:
    for body in (None, [], {"name": "ann"}, {"name": "ann", "password": PASSWORD, "label": "x"}, {"name": 1}):
        status, answer = await world.call(None, "POST", SESSION, body)
        assert (status, answer["error"]["code"]) == (400, "bad_request"), body
    assert world.r.store.db.execute("SELECT count(*) FROM account_sessions").fetchone()[0] == 0


async def test_every_answer_carries_the_browser_security_headers(world: World) -> None:
    for path in ("/api/v1/health", "/api/v1/me", "/api/v1/nowhere", "/api/v1/openapi.json"):
        async with world.session.get(world.r.url + path) as resp:
            h = resp.headers
            assert h["X-Content-Type-Options"] == "nosniff", path
            assert h["Referrer-Policy"] == "no-referrer" and h["X-Frame-Options"] == "DENY"
            csp = h["Content-Security-Policy"]
            assert (
                "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            )
            assert "unsafe-inline" not in csp
            assert "Strict-Transport-Security" not in h  # plain HTTP on loopback


def test_a_database_of_the_schema_before_gains_the_sessions_and_keeps_its_accounts(db_at: DbAt) -> None:
    db = db_at()
    with Store(db) as s:
        ann = Accounts(s).create("ann", "owner", PASSWORD, 1.0)
        as_of(s, 7)
    with Store(db) as s:
        assert s.schema == SCHEMA_VERSION and Accounts(s).get("ann") == ann
        cookie, session = Sessions(s).create(ann, 10.0)
        assert Sessions(s).get(cookie, 11.0) == session
        assert Sessions(s).get("pbt_" + cookie[4:], 11.0) is None  # a token is not a session


async def test_odd_cookies_and_csrf_tokens_are_refused_clearly(world: World) -> None:
    cookie, csrf = await _login(world, "ann")
    for odd in ("pbs_" + "x" * 5000, '"pbs_x"', "pbs_\u00e9", "", "pbt_" + cookie[4:]):
        async with world.session.get(
            world.r.url + "/api/v1/me", headers={"Cookie": f"pb_session={odd}".encode().decode("latin-1")}
        ) as resp:
            assert resp.status == 401, odd
    for odd in ("\u00e9" * 43, csrf + "\u00ff", csrf.upper()):
        status, answer = await _call(
            world,
            "PATCH",
            "/api/v1/devices/th-ann/settings",
            cookie,
            odd.encode().decode("latin-1"),
            {"policy": "ask"},
        )
        assert (status, answer["error"]["code"]) == (403, "csrf"), odd
